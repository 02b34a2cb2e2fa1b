"""The `fal` dialect end to end: the OpenAI SDK against the local stack, routed to the fal queue simulator, sync and
async, and a cancel reaching the queue."""

import base64
import io
import json
import time

import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import start_stack
from tests.simulators.fal_sim import Behaviour, FalSimulator


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sim = FalSimulator(behaviour=Behaviour(queue_start=1, progress_checks=1)).__enter__()
    providers = {"fal": {"dialect": "fal", "base_url": sim.base_url, "api_key": sim.api_key, "timeout_s": 20}}
    models = {"flux-dev": [{"provider": "fal", "model": "fal-ai/flux/dev"}]}
    path = tmp_path_factory.mktemp("cfg") / "providers.json"
    path.write_text(json.dumps({"providers": providers, "models": models}))
    stack = start_stack(PROVIDERS_FILE=str(path))
    yield stack, sim
    stack.stop()
    sim.__exit__(None, None, None)


AUTH = {"Authorization": "Bearer sk-local"}


def test_sync_through_the_queue(world):
    stack, sim = world
    prompt = "a lighthouse through fal"
    result = OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=2, timeout=60).images.generate(
        model="flux-dev", prompt=prompt, n=2, size="1024x768", response_format="b64_json")
    assert [Image.open(io.BytesIO(base64.b64decode(i.b64_json))).size for i in result.data] == [(1024, 768)] * 2
    [sent] = [r for r in sim.submits if r.body["prompt"] == prompt]
    assert (sent.path, sent.body) == ("/fal-ai/flux/dev", {"prompt": prompt, "image_size": "landscape_4_3",
                                                            "num_images": 2, "output_format": "png"})
    assert sent.headers["authorization"] == f"Key {sim.api_key}"
    [job] = [j for j in sim.queue.values() if j.body["prompt"] == prompt]
    assert any(r.path == f"/fal-ai/flux/requests/{job.id}/status" for r in sim.status_checks)
    assert [r.path for r in sim.results if job.id in r.path] == [f"/fal-ai/flux/requests/{job.id}"]


def test_async_through_prefer_respond_async(world):
    stack, sim = world
    raw = OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=30).images.with_raw_response \
        .generate(model="flux-dev", prompt="async through fal", size="1536x1024",
                  extra_headers={"Prefer": "respond-async"})
    assert raw.http_response.status_code == 202
    task = raw.http_response.json()
    progress = []
    for _ in range(60):
        time.sleep(0.5)
        task = requests.get(f"{stack.base_url}/images/tasks/{task['id']}", headers=AUTH, timeout=10).json()
        progress.append(task["progress"])
        if task["status"] == "succeeded":
            break
    assert task["status"] == "succeeded" and progress == sorted(progress) and len(task["data"]) == 1
    image = requests.get(f"{stack.base_url}/images/tasks/{task['id']}/images/0", headers=AUTH, timeout=10)
    assert Image.open(io.BytesIO(image.content)).size == (1536, 1024)
    [sent] = [r for r in sim.submits if r.body["prompt"] == "async through fal"]
    assert sent.body["image_size"] == {"width": 1536, "height": 1024}


def test_cancel_reaches_the_queue(world):
    stack, sim = world
    sim.behaviour.never_finish = True
    try:
        task = requests.post(f"{stack.base_url}/images/generations", headers={**AUTH, "Prefer": "respond-async"},
                             json={"model": "flux-dev", "prompt": "cancel me"}, timeout=10).json()
        job = None
        for _ in range(80):  # until the queue has it and it has been checked (the task holds its URLs)
            job = next((j for j in list(sim.queue.values()) if j.body["prompt"] == "cancel me"), None)
            if job and any(job.id in r.path for r in list(sim.status_checks)):
                break
            time.sleep(0.25)
        assert job is not None
        cancelled = requests.post(f"{stack.base_url}/images/tasks/{task['id']}/cancel", headers=AUTH, timeout=30)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert [(r.method, r.path) for r in sim.cancels] == [("PUT", f"/fal-ai/flux/requests/{job.id}/cancel")]
        assert job.cancelled
    finally:
        sim.behaviour.never_finish = False
