"""Pacing through the local stack, as a user meets it: a burst of async tasks against an upstream that takes
three requests at once and answers 429 (`Retry-After: 2`) above that. Configured with `max_concurrency: 3`, the
gateway never sends a fourth; configured without it, the 429s only make tasks wait. Either way none fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import start_stack
from tests.simulators.capacity_sim import CapacitySimulator

TASKS = 30
AUTH = {"Authorization": "Bearer sk-local"}
WAIT_S = 120


def _burst(tmp_path: Path, limited: bool) -> tuple[dict[str, int], CapacitySimulator]:
    with CapacitySimulator(limit=3, delay_s=0.3, retry_after="2") as sim:
        provider = {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key,
                    **({"max_concurrency": 3} if limited else {})}
        path = tmp_path / "providers.json"
        path.write_text(json.dumps({"providers": {"p": provider}, "models": {"dall-e-2": [{"provider": "p"}]}}))
        stack = start_stack(PROVIDERS_FILE=str(path))
        try:
            ids = []
            for i in range(TASKS):
                reply = requests.post(f"{stack.url}/v1/images/generations", params={"async": "true"}, headers=AUTH,
                                      json={"model": "dall-e-2", "prompt": f"a fox {i}", "size": "256x256"},
                                      timeout=30)
                assert reply.status_code == 202, reply.text
                ids.append(reply.json()["id"])
            deadline = time.monotonic() + WAIT_S
            while True:
                seen = [requests.get(f"{stack.url}/v1/images/tasks/{i}", headers=AUTH, timeout=30).json()
                        for i in ids]
                if all(t["status"] in ("succeeded", "failed", "cancelled") for t in seen):
                    break
                assert time.monotonic() < deadline, [t["status"] for t in seen]
                time.sleep(1)
        finally:
            stack.stop()
    endings: dict[str, int] = {}
    for task in seen:
        ending = task["status"] + (f"/{task['error']['code']}" if task.get("error") else "")
        endings[ending] = endings.get(ending, 0) + 1
    return endings, sim


@pytest.mark.parametrize("limited", [True, False], ids=["max_concurrency-3", "no-limit-429-waits"])
def test_a_burst_against_a_provider_that_takes_three_at_once_all_succeeds(tmp_path, limited):
    endings, sim = _burst(tmp_path, limited)
    assert endings == {"succeeded": TASKS}
    assert sim.peak <= 3 and sim.served == TASKS
    if limited:
        assert sim.refused == 0  # the gateway kept to the limit: the upstream never had to refuse
