"""The gateway through the official OpenAI Python SDK and raw HTTP, against the running local stack."""

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
from tests.simulators.openai_sim import Behaviour, OpenAISimulator


def client(stack, key="sk-local"):
    return OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=60)


def png_size(raw: bytes) -> tuple[int, int]:
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(raw)).size


def test_sdk_sync_urls_for_two_images(stack):
    result = client(stack).images.generate(model="gpt-image-1", prompt="two lighthouses", n=2, size="1024x1536")
    assert len(result.data) == 2
    for image in result.data:
        download = requests.get(image.url, timeout=10)  # presigned: no auth header
        assert download.status_code == 200 and png_size(download.content) == (1024, 1536)
    assert result.data[0].url != result.data[1].url


def test_sdk_sync_b64_json_for_two_images(stack):
    result = client(stack).images.generate(model="dall-e-3", prompt="a fox", n=2, size="1792x1024",
                                           response_format="b64_json")
    assert len(result.data) == 2
    assert all(png_size(base64.b64decode(image.b64_json)) == (1792, 1024) for image in result.data)


def test_sdk_typed_errors(stack):
    with pytest.raises(openai.BadRequestError) as bad:
        client(stack).images.generate(model="gpt-image-1", prompt="x", size="123x456")
    assert bad.value.param == "size" and bad.value.status_code == 400
    with pytest.raises(openai.AuthenticationError):
        client(stack, key="sk-wrong").images.generate(model="gpt-image-1", prompt="x")
    no_key = requests.post(stack.base_url + "/images/generations", json={"model": "gpt-image-1", "prompt": "x"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"


def test_sdk_lists_models(stack):
    assert "gpt-image-1" in [m.id for m in client(stack).models.list()]


def test_raw_async_poll_image_redirect_cancel_and_isolation(stack):
    auth = {"Authorization": "Bearer sk-local"}
    submitted = requests.post(stack.base_url + "/images/generations?async=true", headers=auth,
                              json={"model": "gpt-image-1", "prompt": "an async owl", "size": "1024x1024"})
    assert submitted.status_code == 202
    task = submitted.json()
    assert task["status"] in ("queued", "in_progress") and submitted.headers["Location"].endswith(task["id"])
    for _ in range(100):
        task = requests.get(stack.base_url + f"/images/tasks/{task['id']}", headers=auth).json()
        if task["status"] == "succeeded":
            break
        time.sleep(0.1)
    assert task["status"] == "succeeded" and task["progress"] == 100 and len(task["data"]) == 1
    image = requests.get(stack.base_url + f"/images/tasks/{task['id']}/images/0", headers=auth,
                         allow_redirects=False)
    assert image.status_code == 302
    assert png_size(requests.get(image.headers["Location"]).content) == (1024, 1024)
    cancel = requests.post(stack.base_url + f"/images/tasks/{task['id']}/cancel", headers=auth)
    assert cancel.status_code == 409

    other = {"Authorization": "Bearer sk-other"}
    assert requests.get(stack.base_url + f"/images/tasks/{task['id']}", headers=other).status_code == 404
    listed = requests.get(stack.base_url + "/images/tasks", headers=other).json()
    assert task["id"] not in [t["id"] for t in listed["data"]]
    mine = requests.get(stack.base_url + "/images/tasks?limit=1", headers=auth).json()
    assert mine["object"] == "list" and len(mine["data"]) == 1 and mine["has_more"] is True


def test_wait_bound_with_a_slow_upstream(tmp_path):
    with OpenAISimulator(behaviour=Behaviour(delay_s=5)) as sim:
        providers = tmp_path / "providers.json"
        providers.write_text(json.dumps({
            "providers": {"slow": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}},
            "models": {"dall-e-3": [{"provider": "slow"}]}}))
        stack = start_stack(PROVIDERS_FILE=str(providers))
        try:
            auth = {"Authorization": "Bearer sk-local", "Prefer": "wait=1"}
            started = time.monotonic()
            reply = requests.post(stack.base_url + "/images/generations", headers=auth,
                                  json={"model": "dall-e-3", "prompt": "patience"})
            assert reply.status_code == 202 and time.monotonic() - started < 4
            location = stack.url + reply.headers["Location"]
            for _ in range(150):
                task = requests.get(location, headers=auth).json()
                if task["status"] != "in_progress" and task["status"] != "queued":
                    break
                time.sleep(0.1)
            assert task["status"] == "succeeded", task
            stored = requests.get(task["data"][0]["url"])
            assert stored.status_code == 200 and f"127.0.0.1:{stack.aws_port}" in task["data"][0]["url"]
            assert png_size(stored.content) == (1024, 1024)
            assert len(sim.generations) == 1  # the upstream was called exactly once
        finally:
            stack.stop()


def test_sdk_sees_clear_errors_from_hostile_upstreams_and_no_key(tmp_path):
    """Through the local stack and the SDK: an upstream echoing our key in its 400, one answering a metadata
    URL, one dripping its answer, and a webhook to a private address. Typed errors, clear codes, no key."""
    from tests.simulators.fault_sim import FaultSimulator

    key = "sk-upstream-secret-0123456789abcdef"
    with FaultSimulator("echo_headers", status=400, api_key=key) as echo, \
            FaultSimulator("unsafe_url", api_key=key) as unsafe, \
            FaultSimulator("drip", drip_s=0.2, api_key=key) as drip:
        providers = tmp_path / "providers.json"
        providers.write_text(json.dumps({
            "providers": {name: {"dialect": "openai", "base_url": sim.base_url, "api_key": key, "timeout_s": 1}
                          for name, sim in (("echo", echo), ("unsafe", unsafe), ("drip", drip))},
            "models": {"echo-model": [{"provider": "echo"}], "unsafe-model": [{"provider": "unsafe"}],
                       "drip-model": [{"provider": "drip"}], "*": [{"provider": "echo"}]}}))
        stack = start_stack(PROVIDERS_FILE=str(providers))
        try:
            sdk = client(stack)
            with pytest.raises(openai.BadRequestError) as refused:
                sdk.images.generate(model="echo-model", prompt="a fox")
            assert key not in str(refused.value.body) and "[redacted]" in refused.value.body["message"]
            with pytest.raises(openai.APIStatusError) as unsafe_answer:
                sdk.images.generate(model="unsafe-model", prompt="a fox")
            assert unsafe_answer.value.status_code == 502 and unsafe_answer.value.body["code"] == "unsafe_result_url"
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as dripped:
                sdk.images.generate(model="drip-model", prompt="a fox")
            assert dripped.value.status_code == 504 and dripped.value.body["code"] == "upstream_timeout"
            assert time.monotonic() - started < 10  # timeout_s=1 bounds the call, retries included
            with pytest.raises(openai.BadRequestError) as webhook:
                sdk.images.generate(model="echo-model", prompt="a fox",
                                    extra_body={"webhook": "http://169.254.169.254/latest/meta-data/"})
            assert webhook.value.param == "webhook"
        finally:
            stack.stop()


def test_a_long_generation_reaches_the_sdk_with_its_defaults_and_is_generated_once(tmp_path):
    """An upstream taking twice the API's timeout: API Gateway answers 504 (retry), the SDK retries by itself,
    the retry re-attaches to the task the first invocation is still running, and the images arrive."""
    with OpenAISimulator(behaviour=Behaviour(delay_s=6)) as sim:
        providers = tmp_path / "providers.json"
        providers.write_text(json.dumps({
            "providers": {"slow": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}},
            "models": {"dall-e-3": [{"provider": "slow"}]}}))
        stack = start_stack(PROVIDERS_FILE=str(providers), API_TIMEOUT_MS="3000", SYNC_WAIT_S="2")
        try:
            sdk = OpenAI(base_url=stack.base_url, api_key="sk-local", timeout=60)  # default retries (2)
            result = sdk.images.generate(model="dall-e-3", prompt="a patient lighthouse", size="1024x1024")
            assert result.data[0].url and png_size(requests.get(result.data[0].url, timeout=10).content) == \
                (1024, 1024)
            assert len(sim.generations) == 1  # generated exactly once
        finally:
            stack.stop()
