"""The `replicate` dialect end to end: the OpenAI SDK against the local stack, routes to the Replicate simulator
(a fast model answered inside `Prefer: wait`, a slow one checked until it succeeds), sync and async."""

import base64
import io
import json
import time

import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import start_stack
from tests.simulators.replicate_sim import Behaviour, ReplicateSimulator, flux_size


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    fast = ReplicateSimulator(behaviour=Behaviour(fast=True)).__enter__()
    slow = ReplicateSimulator(behaviour=Behaviour(checks_to_finish=3)).__enter__()
    providers = {"rep-fast": {"dialect": "replicate", "base_url": fast.base_url + "/v1", "api_key": fast.api_key,
                              "timeout_s": 20},
                 "rep-slow": {"dialect": "replicate", "base_url": slow.base_url, "api_key": slow.api_key,
                              "timeout_s": 20}}
    models = {"flux-schnell": [{"provider": "rep-fast", "model": "black-forest-labs/flux-schnell"}],
              "flux-pro": [{"provider": "rep-slow", "model": "black-forest-labs/flux-1.1-pro"}]}
    path = tmp_path_factory.mktemp("cfg") / "providers.json"
    path.write_text(json.dumps({"providers": providers, "models": models}))
    stack = start_stack(PROVIDERS_FILE=str(path))
    yield stack, fast, slow
    stack.stop()
    fast.__exit__(None, None, None)
    slow.__exit__(None, None, None)


def client(stack):
    return OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=2, timeout=60)


def sizes(result):
    return [Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size for item in result.data]


def test_sync_fast_model_one_call(world):
    stack, fast, _ = world
    prompt = "a lighthouse, fast"
    result = client(stack).images.generate(model="flux-schnell", prompt=prompt, n=2, size="1792x1024",
                                           response_format="b64_json")
    assert sizes(result) == [flux_size("16:9")] * 2
    sent = [r for r in fast.creates if r.body["input"]["prompt"] == prompt]
    assert [(r.path, r.body) for r in sent] == [("/v1/models/black-forest-labs/flux-schnell/predictions",
                                                 {"input": {"prompt": prompt, "aspect_ratio": "16:9",
                                                            "num_outputs": 2, "output_format": "png"}})]
    assert sent[0].headers["prefer"] == "wait=15" and fast.checks == []


def test_sync_slow_model_is_checked_until_it_succeeds(world):
    stack, _, slow = world
    prompt = "a lighthouse, slow"
    result = client(stack).images.generate(model="flux-pro", prompt=prompt, size="1024x1536",
                                           response_format="b64_json", extra_body={"seed": 11})
    assert sizes(result) == [flux_size("2:3")]
    [sent] = [r for r in slow.creates if r.body["input"]["prompt"] == prompt]
    assert sent.body == {"input": {"prompt": prompt, "aspect_ratio": "2:3", "output_format": "png", "seed": 11}}
    pid = next(p.id for p in slow.predictions.values() if p.input["prompt"] == prompt)
    assert len([r for r in slow.checks if r.path == f"/v1/predictions/{pid}"]) >= 3


def test_async_task_through_prefer_respond_async(world):
    stack, _, slow = world
    auth = {"Authorization": "Bearer sk-local"}
    raw = client(stack).images.with_raw_response.generate(
        model="flux-pro", prompt="a lighthouse, async", n=2, extra_headers={"Prefer": "respond-async"})
    assert raw.http_response.status_code == 202
    task = raw.http_response.json()
    assert task["status"] in ("queued", "in_progress")
    seen = []
    for _ in range(60):
        time.sleep(0.5)
        task = requests.get(f"{stack.base_url}/images/tasks/{task['id']}", headers=auth, timeout=10).json()
        seen.append(task["progress"])
        if task["status"] == "succeeded":
            break
    assert task["status"] == "succeeded" and len(task["data"]) == 2 and seen == sorted(seen)
    for i in range(2):
        image = requests.get(f"{stack.base_url}/images/tasks/{task['id']}/images/{i}", headers=auth, timeout=10)
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == flux_size("1:1")
    assert len([r for r in slow.creates if r.body["input"]["prompt"] == "a lighthouse, async"]) == 2


def test_cancel_reaches_the_prediction(world):
    stack, _, slow = world
    slow.behaviour.never_finish = True
    try:
        auth = {"Authorization": "Bearer sk-local"}
        task = requests.post(f"{stack.base_url}/images/generations", headers={**auth, "Prefer": "respond-async"},
                             json={"model": "flux-pro", "prompt": "cancel me"}, timeout=10).json()
        pid = None
        for _ in range(80):  # until its prediction is upstream and has been checked (the task holds its id)
            pid = next((p.id for p in list(slow.predictions.values()) if p.input["prompt"] == "cancel me"), None)
            if pid and any(r.path == f"/v1/predictions/{pid}" for r in list(slow.checks)):
                break
            time.sleep(0.25)
        assert pid is not None
        cancelled = requests.post(f"{stack.base_url}/images/tasks/{task['id']}/cancel", headers=auth, timeout=30)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert [r.path for r in slow.cancels] == [f"/v1/predictions/{pid}/cancel"]
        assert slow.predictions[pid].status == "canceled"
    finally:
        slow.behaviour.never_finish = False
