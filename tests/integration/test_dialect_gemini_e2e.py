"""The `gemini` dialect end to end: the OpenAI SDK against the local stack, routes to the Gemini simulator (Gemini
image models and Imagen), sync and async, a refusal, and a fallback past a failing Google route."""

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
from tests.simulators.gemini_sim import Behaviour, GeminiSimulator


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sim = GeminiSimulator().__enter__()
    down = GeminiSimulator(api_key="AIzaSyDownUpstreamKey0123456789ab",
                           behaviour=Behaviour(failures=[(503, "UNAVAILABLE")] * 1000)).__enter__()
    providers = {"google": {"dialect": "gemini", "base_url": sim.base_url, "api_key": sim.api_key},
                 "google-down": {"dialect": "gemini", "base_url": down.base_url, "api_key": down.api_key}}
    models = {"nano-banana": [{"provider": "google", "model": "gemini-2.5-flash-image"}],
              "nano-banana-pro": [{"provider": "google", "model": "gemini-3-pro-image-preview"}],
              "imagen-4": [{"provider": "google", "model": "imagen-4.0-generate-001"}],
              "imagen-fallback": [{"provider": "google-down", "model": "imagen-4.0-fast-generate-001"},
                                  {"provider": "google", "model": "imagen-4.0-fast-generate-001"}]}
    path = tmp_path_factory.mktemp("cfg") / "providers.json"
    path.write_text(json.dumps({"providers": providers, "models": models}))
    stack = start_stack(PROVIDERS_FILE=str(path), UPSTREAM_BACKOFF_S="0.01")
    yield stack, sim, down
    stack.stop()
    sim.__exit__(None, None, None)
    down.__exit__(None, None, None)


def client(stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=90)


def sizes_of(result) -> list[tuple[int, int]]:
    sizes = []
    for item in result.data:
        raw = base64.b64decode(item.b64_json) if item.b64_json else requests.get(item.url, timeout=10).content
        sizes.append(Image.open(io.BytesIO(raw)).size)
    return sizes


def sent_to(sim, prompt):
    return [r for r in sim.generations if json.dumps(r.body).find(json.dumps(prompt)) >= 0]


@pytest.mark.parametrize("model, params, path, body, size", [
    ("nano-banana", {"n": 2, "size": "1024x1536"}, "/v1beta/models/gemini-2.5-flash-image:generateContent",
     {"contents": [{"role": "user", "parts": [{"text": "PROMPT"}]}],
      "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "2:3"}}}, (832, 1248)),
    ("nano-banana-pro", {"n": 1, "size": "1792x1024", "extra_body": {"resolution": "2k"},
                         "response_format": "b64_json"},
     "/v1beta/models/gemini-3-pro-image-preview:generateContent",
     {"contents": [{"role": "user", "parts": [{"text": "PROMPT"}]}],
      "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}},
     (1536, 878)),
    ("imagen-4", {"n": 3, "size": "1024x1792"}, "/v1beta/models/imagen-4.0-generate-001:predict",
     {"instances": [{"prompt": "PROMPT"}], "parameters": {"sampleCount": 3, "aspectRatio": "9:16",
                                                          "includeRaiReason": True}}, (768, 1408)),
])
def test_the_sdk_gets_stored_images_sync(world, model, params, path, body, size):
    stack, sim, _ = world
    prompt = f"a lighthouse through {model}"
    result = client(stack).images.generate(model=model, prompt=prompt, **params)
    assert len(result.data) == params["n"] and sizes_of(result) == [size] * params["n"]
    for item in result.data:
        assert item.b64_json or item.url.startswith(f"http://127.0.0.1:{stack.aws_port}/")  # our bucket
    sent = sent_to(sim, prompt)
    expected = json.loads(json.dumps(body).replace("PROMPT", prompt))
    calls = 1 if model.startswith("imagen") else params["n"]
    assert [(r.path, r.body) for r in sent] == [(path, expected)] * calls
    assert all(r.headers["x-goog-api-key"] == sim.api_key and "authorization" not in r.headers for r in sent)
    if not model.startswith("imagen"):  # Gemini's usageMetadata, summed over the n calls
        assert result.usage.output_tokens == 1290 * params["n"]


@pytest.mark.parametrize("model, n", [("nano-banana", 2), ("imagen-4", 2)])
def test_an_async_task_through_the_sdk(world, model, n):
    stack, sim, _ = world
    prompt = f"an async harbour through {model}"
    task = client(stack).images.with_raw_response.generate(
        model=model, prompt=prompt, n=n, size="1024x1024", extra_headers={"Prefer": "respond-async"})
    assert task.status_code == 202
    task_id = json.loads(task.http_response.text)["id"]
    auth = {"Authorization": "Bearer sk-local"}
    for _ in range(120):  # bounded: a minute at most
        seen = requests.get(f"{stack.base_url}/images/tasks/{task_id}", headers=auth, timeout=10).json()
        if seen["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert seen["status"] == "succeeded", seen
    assert len(seen["data"]) == n and seen["usage"]["images"] == n
    if model == "nano-banana":
        assert seen["usage"]["output_tokens"] == 1290 * n
    assert len(sent_to(sim, prompt)) == (1 if model.startswith("imagen") else n)
    raw = requests.get(seen["data"][0]["url"], timeout=10).content
    assert Image.open(io.BytesIO(raw)).size == (1024, 1024)


def test_a_blocked_prompt_is_the_sdks_bad_request_error(world):
    stack, sim, _ = world
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).images.generate(model="nano-banana", prompt="a picture against policy")
    assert refused.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as filtered:
        client(stack).images.generate(model="imagen-4", prompt="another one against policy", n=2)
    assert filtered.value.code == "content_policy_violation"


def test_bad_input_never_reaches_google(world):
    stack, sim, _ = world
    before = len(sim.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).images.generate(model="imagen-4", prompt="p", size="21:9")
    assert refused.value.param == "size" and len(sim.requests) == before


def test_an_unavailable_google_route_falls_back_to_the_next(world):
    stack, sim, down = world
    prompt = "a fallback lighthouse"
    result = client(stack).images.generate(model="imagen-fallback", prompt=prompt, n=2, response_format="b64_json")
    assert len(result.data) == 2 and all(item.b64_json for item in result.data)
    assert [r.path for r in sent_to(down, prompt)] == ["/v1beta/models/imagen-4.0-fast-generate-001:predict"] * 3
    assert len(sent_to(sim, prompt)) == 1
