"""The `bedrock` dialect end to end: the OpenAI SDK against the local stack (its own process, boto3 signing with the
stack's fake credentials), every route to the SigV4-checking Bedrock simulator on loopback. Sync and async."""

import base64
import io
import json
import time

import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import start_stack
from tests.simulators.bedrock_sim import RATIO_PIXELS, BedrockSimulator

SD35, NOVA = "stability.sd3-5-large-v1:0", "amazon.nova-canvas-v1:0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sim = BedrockSimulator().__enter__()
    config = {"providers": {"br": {"dialect": "bedrock", "region": "us-east-1", "base_url": sim.base_url,
                                   "timeout_s": 30, "max_concurrency": 4},
                            "dev": {"dialect": "local"}},
              "models": {"sd3.5-large": [{"provider": "br", "model": SD35}],
                         "nova-canvas": [{"provider": "br", "model": NOVA}],
                         "nova-or-local": [{"provider": "br", "model": NOVA}, {"provider": "dev"}]}}
    path = tmp_path_factory.mktemp("cfg") / "providers.json"
    path.write_text(json.dumps(config))
    stack = start_stack(PROVIDERS_FILE=str(path))
    yield stack, sim
    stack.stop()
    sim.__exit__(None, None, None)


def client(stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=60)


def sent_for(sim, prompt):
    return [r for r in sim.generations if json.dumps(r.body).find(json.dumps(prompt)) >= 0]


def pixels(item) -> tuple[int, int]:
    raw = base64.b64decode(item.b64_json) if item.b64_json else requests.get(item.url, timeout=10).content
    return Image.open(io.BytesIO(raw)).size


def test_sync_stability_through_the_sdk_fans_out_signed_calls(world):
    stack, sim = world
    prompt = "a lighthouse, sd3.5"
    result = client(stack).images.generate(model="sd3.5-large", prompt=prompt, n=2, size="1792x1024",
                                           response_format="b64_json", extra_body={"seed": 100})
    assert [pixels(item) for item in result.data] == [RATIO_PIXELS["16:9"]] * 2
    calls = sent_for(sim, prompt)
    assert sorted((c.body for c in calls), key=lambda b: b["seed"]) == [
        {"prompt": prompt, "mode": "text-to-image", "aspect_ratio": "16:9", "seed": s} for s in (100, 101)]
    for c in calls:
        assert c.path == "/model/stability.sd3-5-large-v1%3A0/invoke"
        assert c.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
        assert "/us-east-1/bedrock/aws4_request" in c.headers["authorization"] and c.headers["x-amz-date"]


def test_sync_nova_canvas_images_come_from_our_bucket(world):
    stack, sim = world
    prompt = "a harbour at dawn, nova"
    result = client(stack).images.generate(model="nova-canvas", prompt=prompt, n=2, size="1280x720",
                                           quality="hd")
    assert len(result.data) == 2 and all(item.url.startswith(f"http://127.0.0.1:{stack.aws_port}/")
                                         for item in result.data)
    assert [pixels(item) for item in result.data] == [(1280, 720)] * 2
    assert [c.body for c in sent_for(sim, prompt)] == [{
        "taskType": "TEXT_IMAGE", "textToImageParams": {"text": prompt},
        "imageGenerationConfig": {"width": 1280, "height": 720, "numberOfImages": 2, "quality": "premium"}}]


def test_async_task_through_the_sdk(world):
    stack, sim = world
    sdk = client(stack)
    prompt = "an async owl, nova"
    raw = sdk.images.with_raw_response.generate(model="nova-canvas", prompt=prompt, size="16:9",
                                                extra_headers={"Prefer": "respond-async"})
    assert raw.http_response.status_code == 202
    task = raw.http_response.json()
    assert task["status"] in ("queued", "in_progress", "succeeded")
    for _ in range(120):  # bounded: 30 s
        task = sdk.get(f"/images/tasks/{task['id']}", cast_to=object)
        if task["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.25)
    assert task["status"] == "succeeded", task
    assert len(task["data"]) == 1 and task["usage"] == {"images": 1}
    assert [c.body for c in sent_for(sim, prompt)] == [{
        "taskType": "TEXT_IMAGE", "textToImageParams": {"text": prompt},
        "imageGenerationConfig": {"width": 1024, "height": 576, "numberOfImages": 1}}]


@pytest.mark.parametrize("prompt", ["a blocked fox", "a filtered fox"], ids=["400 ValidationException", "200"])
def test_content_filters_are_a_400_content_policy_violation(world, prompt):
    stack, sim = world
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).images.generate(model="sd3.5-large", prompt=prompt)
    assert refused.value.code == "content_policy_violation"
    assert len(sent_for(sim, prompt)) == 1


def test_bad_input_is_refused_before_bedrock(world):
    stack, sim = world
    before = len(sim.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).images.generate(model="nova-canvas", prompt="p", size="1000x1000")
    assert refused.value.param == "size" and len(sim.requests) == before


def test_a_retriable_bedrock_failure_falls_back_to_the_next_route(world):
    stack, sim = world
    prompt = "a fallback heron"
    sim.behaviour.failures.append((503, "ServiceUnavailableException"))
    result = client(stack).images.generate(model="nova-or-local", prompt=prompt, size="1024x1024")
    assert len(result.data) == 1 and pixels(result.data[0]) == (1024, 1024)
    assert sim.behaviour.failures == [] and len(sent_for(sim, prompt)) == 1  # one attempt, then the local route
