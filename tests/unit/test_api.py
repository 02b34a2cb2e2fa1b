"""The HTTP API, driven through the real handlers with API Gateway proxy events."""

import base64
import io
import time

import pytest
import requests
from PIL import Image

import fetch_handler
import poll_handler
import submit_handler
from imagegw import bus
from tests.apiclient import call
from tests.conftest import API_KEY, NEWER_FIELDS, OTHER_KEY, s3_objects
from tests.fakes import DownBus, RecordingBus
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

GEN = "/v1/images/generations"



def generate(body, key=API_KEY, **kwargs):
    return call(submit_handler.lambda_handler, "POST", GEN, key=key, body=body, **kwargs)


def get_task(task_id, key=API_KEY):
    return call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=key)


def s3_image(key):
    import boto3, os

    return boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["Body"].read()


def test_sync_generation_answers_presigned_urls_of_stored_pngs(inline_bus):
    reply = generate({"model": "gpt-image-1", "prompt": "a lighthouse", "size": "1536x1024", "n": 2})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert len(body["data"]) == 2 and body["usage"] == {"images": 2}
    for entry in body["data"]:
        assert "X-Amz-Signature" in entry["url"] and "b64_json" not in entry
    keys = s3_objects()
    assert len(keys) == 2
    image = Image.open(io.BytesIO(s3_image(keys[0])))
    assert image.format == "PNG" and image.size == (1536, 1024)


def test_b64_json_is_answered_from_the_stored_copy(inline_bus):
    reply = generate({"model": "dall-e-3", "prompt": "a fox", "response_format": "b64_json", "size": "1024x1792"})
    assert reply.status == 200
    data = reply.json()["data"][0]
    raw = base64.b64decode(data["b64_json"])
    assert raw == s3_image(s3_objects()[0])
    assert Image.open(io.BytesIO(raw)).size == (1024, 1792)


@pytest.mark.parametrize("body, param", [
    ({"model": "gpt-image-1", "prompt": "x", "size": "999x999"}, "size"),
    ({"model": "dall-e-2", "prompt": "x", "size": "1792x1024"}, "size"),
    ({"model": "some-model", "prompt": "x", "size": "huge"}, "size"),
    ({"model": "gpt-image-1", "size": "1024x1024"}, "prompt"),
    ({"model": "gpt-image-1", "prompt": "x", "n": 11}, "n"),
    ({"model": "gpt-image-1", "prompt": "x", "n": "two"}, "n"),
    ({"model": "gpt-image-1", "prompt": "x", "quality": "ultra"}, "quality"),
    ({"model": "gpt-image-1", "prompt": "x", "response_format": "png"}, "response_format"),
    ({"model": "gpt-image-1", "prompt": "x", "colour": "red"}, "colour"),
    ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt"),
])
def test_bad_input_is_a_400_naming_the_param_and_creates_no_task(inline_bus, body, param):
    reply = generate(body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert inline_bus.published == []


def test_stream_true_is_a_400_pointing_at_the_task_api_and_a_truly_unknown_field_stays_refused(inline_bus):
    streamed = generate({"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 2})
    error = streamed.json()["error"]
    assert streamed.status == 400 and error["param"] == "stream" and error["type"] == "invalid_request_error"
    assert "not supported" in error["message"] and "GET /v1/images/tasks/{id}" in error["message"]
    unknown = generate({"model": "gpt-image-1", "prompt": "x", "partial_image": 2})
    assert unknown.status == 400 and unknown.json()["error"]["code"] == "unknown_parameter"
    assert inline_bus.published == []


def test_local_answers_a_request_with_every_newer_field(inline_bus):
    reply = generate({"model": "gpt-image-1", "prompt": "a lighthouse", "moderation": "low", **NEWER_FIELDS})
    assert reply.status == 200, reply.body
    assert len(reply.json()["data"]) == 1 and len(s3_objects()) == 1


@pytest.mark.parametrize("model, sent", [
    ("dall-e-3", {"model": "dall-e-3", "prompt": "newer fields", "n": 1}),
    ("gpt-image-1", {"model": "gpt-image-1", "prompt": "newer fields", "moderation": "low"}),
])
def test_openai_upstream_gets_no_streaming_or_edit_field(inline_bus, providers_file, loopback_fetch, model, sent):
    with OpenAISimulator() as sim:
        providers_file({"providers": {"oai": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}},
                        "models": {model: [{"provider": "oai"}]}})
        reply = generate({"model": model, "prompt": "newer fields", "moderation": "low", **NEWER_FIELDS})
        assert reply.status == 200, reply.body
        assert [r.body for r in sim.generations] == [sent] and len(s3_objects()) == 1


def test_unparseable_and_oversized_bodies(inline_bus):
    bad = generate("{not json")
    assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_json"
    big = generate({"model": "gpt-image-1", "prompt": "x" * 70_000})
    assert big.status == 413 and big.json()["error"]["code"] == "payload_too_large"


def test_keys_are_required_and_checked(inline_bus):
    missing = generate({"model": "gpt-image-1", "prompt": "x"}, key=None)
    assert missing.status == 401 and missing.json()["error"]["type"] == "authentication_error"
    wrong = generate({"model": "gpt-image-1", "prompt": "x"}, key="sk-nope")
    assert wrong.status == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_async_task_poll_redirect_cancel_and_isolation(inline_bus):
    reply = generate({"model": "gpt-image-1", "prompt": "a tree"}, query={"async": "true"})
    assert reply.status == 202
    task = reply.json()
    assert task["object"] == "image.task" and task["id"] == task["task_id"] and task["status"] == "queued"
    assert reply.headers["location"] == f"/v1/images/tasks/{task['id']}"
    inline_bus.drain()

    done = get_task(task["id"]).json()
    assert done["status"] == "succeeded" and done["progress"] == 100 and len(done["data"]) == 1
    image = call(fetch_handler.lambda_handler, "GET", f"/v1/images/tasks/{task['id']}/images/0", key=API_KEY)
    assert image.status == 302 and "X-Amz-Signature" in image.headers["location"]
    missing = call(fetch_handler.lambda_handler, "GET", f"/v1/images/tasks/{task['id']}/images/3", key=API_KEY)
    assert missing.status == 404

    cancel = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{task['id']}/cancel", key=API_KEY)
    assert cancel.status == 409 and cancel.json()["error"]["code"] == "task_not_cancellable"

    assert get_task(task["id"], key=OTHER_KEY).status == 404
    theirs = call(poll_handler.lambda_handler, "GET", "/v1/images/tasks", key=OTHER_KEY).json()
    assert theirs["data"] == [] and theirs["has_more"] is False
    mine = call(poll_handler.lambda_handler, "GET", "/v1/images/tasks", key=API_KEY).json()
    assert [t["id"] for t in mine["data"]] == [task["id"]]


def test_prefer_respond_async_and_cancel_of_a_live_task(inline_bus):
    with bus.use(RecordingBus()):  # nobody picks the task up
        reply = generate({"model": "gpt-image-1", "prompt": "x"}, headers={"Prefer": "respond-async"})
    assert reply.status == 202
    task_id = reply.json()["id"]
    cancelled = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{task_id}/cancel", key=API_KEY)
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
    assert call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{task_id}/cancel",
                key=API_KEY).status == 409


def test_a_slow_upstream_passes_the_wait_bound_and_the_work_goes_on(inline_bus, providers_file, loopback_fetch):
    with OpenAISimulator(behaviour=Behaviour(delay_s=3)) as sim:
        providers_file({"providers": {"slow": {"dialect": "openai", "base_url": sim.base_url,
                                               "api_key": sim.api_key}},
                        "models": {"dall-e-3": [{"provider": "slow"}]}})
        started = time.monotonic()
        reply = generate({"model": "dall-e-3", "prompt": "slowly"}, headers={"Prefer": "wait=1"})
        assert reply.status == 202 and time.monotonic() - started < 2.5
        location = reply.headers["location"]
        inline_bus.drain()
        task = call(poll_handler.lambda_handler, "GET", location, key=API_KEY).json()
        assert task["status"] == "succeeded"
        stored = requests.get(task["data"][0]["url"])  # presigned: moto answers it in process, no auth header
        assert stored.status_code == 200 and stored.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(sim.generations) == 1 and s3_objects() == [f"images/{task['id']}/0.png"]


def test_upstream_failure_is_a_clear_error_for_a_sync_request(inline_bus, providers_file):
    with OpenAISimulator(behaviour=Behaviour(failures=[503] * 10)) as sim:
        providers_file({"providers": {"down": {"dialect": "openai", "base_url": sim.base_url,
                                               "api_key": sim.api_key}},
                        "models": {"dall-e-3": [{"provider": "down"}]}})
        reply = generate({"model": "dall-e-3", "prompt": "x"})
        assert reply.status == 502 and reply.json()["error"]["type"] == "upstream_error"


def test_models_lists_the_configured_names(inline_bus):
    reply = call(submit_handler.lambda_handler, "GET", "/v1/models", key=API_KEY)
    ids = [m["id"] for m in reply.json()["data"]]
    assert reply.status == 200 and "gpt-image-1" in ids and "*" not in ids


def test_unknown_routes_and_models(inline_bus, providers_file):
    unknown = call(poll_handler.lambda_handler, "GET", "/v1/nothing", key=API_KEY)
    assert unknown.status == 404 and unknown.json()["error"]["type"] == "not_found_error"
    providers_file({"providers": {"dev": {"dialect": "local"}}, "models": {"gpt-image-1": [{"provider": "dev"}]}})
    reply = generate({"model": "no-such-model", "prompt": "x"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "model"
    assert inline_bus.published == []


def test_a_bus_outage_loses_nothing(inline_bus, fake_clock):
    with bus.use(DownBus()):
        reply = generate({"model": "gpt-image-1", "prompt": "x"}, query={"async": "true"})
    assert reply.status == 202
    task_id = reply.json()["id"]
    from imagegw import worker

    fake_clock.advance(120_000)  # the check comes due
    assert worker.sweep()["republished"] == 1
    inline_bus.drain()
    assert get_task(task_id).json()["status"] == "succeeded"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_openai_dialect_in_both_client_modes(inline_bus, providers_file, loopback_fetch, mode):
    with OpenAISimulator() as sim:
        providers_file({"providers": {"oai": {"dialect": "openai", "base_url": sim.base_url + "/v1",
                                              "api_key": sim.api_key}},
                        "models": {"dall-e-3": [{"provider": "oai"}]}})
        body = {"model": "dall-e-3", "prompt": "a heron", "n": 2, "size": "1024x1792", "style": "natural"}
        reply = generate(body, query={"async": "true"} if mode == "async" else None)
        if mode == "async":
            assert reply.status == 202
            inline_bus.drain()
            task = get_task(reply.json()["id"]).json()
            data = task["data"]
        else:
            assert reply.status == 200
            data = reply.json()["data"]
        assert len(data) == 2 and all(d["revised_prompt"].startswith("A detailed rendering") for d in data)
        assert [r.body for r in sim.generations] == [{"model": "dall-e-3", "prompt": "a heron", "n": 1,
                                                       "size": "1024x1792", "style": "natural"}] * 2
        assert len(s3_objects()) == 2
