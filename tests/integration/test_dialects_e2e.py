"""Every seed dialect end to end: the OpenAI SDK against the local stack, each route to its simulator."""

import base64
import io
import json
import time

import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import start_stack
from tests.simulators.async_relay_sim import AsyncRelaySimulator
from tests.simulators.envelope_sim import EnvelopeSimulator
from tests.simulators.grok_sim import GrokSimulator
from tests.simulators.jimeng_sim import JimengSimulator
from tests.simulators.openai_sim import OpenAISimulator


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sims = {"openai": OpenAISimulator(), "jimeng": JimengSimulator(), "envelope": EnvelopeSimulator(),
            "grok": GrokSimulator(), "async-relay": AsyncRelaySimulator()}
    for sim in sims.values():
        sim.__enter__()
    providers = {name: {"dialect": name, "base_url": sim.base_url, "api_key": sim.api_key}
                 for name, sim in sims.items()}
    models = {"dall-e-3": [{"provider": "openai"}], "jimeng-4.0": [{"provider": "jimeng"}],
              "gpt-image-1.5": [{"provider": "envelope"}], "grok-3-image": [{"provider": "grok"}],
              "dall-e-3-async": [{"provider": "async-relay", "model": "dall-e-3"}]}
    path = tmp_path_factory.mktemp("cfg") / "providers.json"
    path.write_text(json.dumps({"providers": providers, "models": models}))
    stack = start_stack(PROVIDERS_FILE=str(path))
    yield stack, sims
    stack.stop()
    for sim in sims.values():
        sim.__exit__(None, None, None)


def images_of(result) -> list[tuple[int, int]]:
    sizes = []
    for item in result.data:
        raw = base64.b64decode(item.b64_json) if item.b64_json else requests.get(item.url, timeout=10).content
        sizes.append(Image.open(io.BytesIO(raw)).size)
    return sizes


@pytest.mark.parametrize("model, params, dialect, expected_body", [
    ("dall-e-3", {"n": 2, "size": "1792x1024"}, "openai",
     {"model": "dall-e-3", "prompt": "PROMPT", "size": "1792x1024", "n": 1}),
    ("jimeng-4.0", {"n": 6, "size": "1024x1536"}, "jimeng",
     {"model": "jimeng-4.0", "prompt": "PROMPT", "size": "2:3"}),
    ("gpt-image-1.5", {"n": 2, "size": "1024x1536", "output_format": "jpeg", "quality": "medium"}, "envelope",
     {"model": "gpt-image-1.5", "prompt": "PROMPT", "n": 2, "size": "1024x1536", "stream": False,
      "quality": "medium", "output_format": "jpeg", "output_compression": 100}),
    ("grok-3-image", {"n": 2, "size": "1024x1024", "response_format": "b64_json"}, "grok",
     {"model": "grok-3-image", "prompt": "PROMPT", "size": "960x960", "aspect_ratio": [None, None], "n": 2,
      "quality": [None, None], "resolution": [None, None], "response_format": "b64_json"}),
    ("dall-e-3-async", {"n": 1, "size": "1792x1024"}, "async-relay",
     {"model": "dall-e-3", "size": "1792x1024", "n": 1, "prompt": "PROMPT"}),
])
def test_the_sdk_gets_stored_images_from_every_dialect(world, model, params, dialect, expected_body):
    stack, sims = world
    prompt = f"a lighthouse through {model}"
    result = OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=90).images.generate(
        model=model, prompt=prompt, **params)
    assert len(result.data) == params["n"] and len(images_of(result)) == params["n"]
    for item in result.data:
        assert item.b64_json or item.url.startswith(f"http://127.0.0.1:{stack.aws_port}/")  # our bucket
    sent = [r.body for r in sims[dialect].requests if r.method == "POST" and r.body.get("prompt") == prompt]
    assert sent and all(body == {**expected_body, "prompt": prompt} for body in sent)


def test_an_async_relay_task_nobody_polls_finishes_through_the_sweep(world):
    stack, sims = world
    auth = {"Authorization": "Bearer sk-local"}
    task = requests.post(stack.base_url + "/images/generations?async=true", headers=auth,
                         json={"model": "dall-e-3-async", "prompt": "nobody polls me"}).json()
    for _ in range(60):  # only the list is read: it never checks upstream itself
        time.sleep(0.5)
        listed = requests.get(stack.base_url + "/images/tasks?limit=20", headers=auth).json()["data"]
        seen = next(t for t in listed if t["id"] == task["id"])
        if seen["status"] == "succeeded":
            break
    assert seen["status"] == "succeeded" and seen["progress"] == 100 and len(seen["data"]) == 1
