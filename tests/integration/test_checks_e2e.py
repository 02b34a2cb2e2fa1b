"""Async checks scheduled per task, on the local stack: with the schedule's sweep an hour away, a task nobody polls
is still checked when each check is due, through the template's check queue and the poll function's SQS event."""

import json
import time

import requests

from tests.integration.conftest import start_stack
from tests.simulators.async_relay_sim import AsyncRelaySimulator, Behaviour


def test_a_task_nobody_polls_is_checked_through_the_check_queue_not_the_sweep(tmp_path):
    with AsyncRelaySimulator(behaviour=Behaviour(checks_to_finish=3)) as sim:
        path = tmp_path / "providers.json"
        path.write_text(json.dumps({
            "providers": {"relay": {"dialect": "async-relay", "base_url": sim.base_url, "api_key": sim.api_key}},
            "models": {"dall-e-3-async": [{"provider": "relay", "model": "dall-e-3"}]}}))
        stack = start_stack(PROVIDERS_FILE=str(path), SWEEP_INTERVAL_S="3600")
        try:
            auth = {"Authorization": "Bearer sk-local"}
            submitted = time.monotonic()
            task = requests.post(stack.base_url + "/images/generations?async=true", headers=auth, timeout=30,
                                 json={"model": "dall-e-3-async", "prompt": "nobody polls me"}).json()
            for _ in range(120):  # nobody reads the task meanwhile: only the queue's messages can check it
                if len(sim.checks) >= 3:
                    break
                time.sleep(0.25)
            checked_in_s = time.monotonic() - submitted
            assert len(sim.checks) >= 3, "".join(stack.output)
            assert checked_in_s < 30  # the check policy's backoff (2 s, then doubling), not the sweep's hour
            for _ in range(40):  # the images are stored by the fetch function once the last check found them
                listed = requests.get(stack.base_url + "/images/tasks", headers=auth, timeout=30).json()["data"]
                if listed and listed[0]["status"] == "succeeded":
                    break
                time.sleep(0.25)
            assert listed[0]["id"] == task["id"] and listed[0]["status"] == "succeeded"
        finally:
            stack.stop()
