"""The `envelope` dialect (the envelope-style API platform): pure translation, parsing of envelopes shaped as its
reference documents them (success only when code == 0), and the contract through the real handlers against the
loopback simulator, sync and async."""

import base64
import io
import json
import os

import boto3
import pytest
import requests
from PIL import Image

import poll_handler
import submit_handler
from imagegw import tasks
from imagegw.dialects import Done, Failed, HttpReply, get_dialect
from imagegw.errors import BadRequest, ContentPolicyViolation, RateLimited, UpstreamFailed
from imagegw.request import parse_request
from imagegw.provider_config import load_config_text
from imagegw.routing import routes_for
from tests.apiclient import call
from tests.conftest import API_KEY, NEWER_FIELDS, s3_objects
from tests.simulators.envelope_sim import Behaviour, EnvelopeSimulator
from tests.simulators.loopback import png_bytes

GEN = "/v1/images/generations"
PATH = "/api/v1/image/generation"
CONFIG = load_config_text(json.dumps({
    "providers": {"e": {"dialect": "envelope", "base_url": "https://api.aa.example/", "api_key": "sk-e"}},
    "models": {"gpt-image-1.5": [{"provider": "e"}], "image": [{"provider": "e", "model": "gpt-image-1.5"}],
               "dall-e-3": [{"provider": "e"}], "dall-e-2": [{"provider": "e"}], "flux-dev": [{"provider": "e"}]},
}))
DIALECT = get_dialect("envelope")
BASE = {"model": "gpt-image-1.5", "prompt": "p", "n": 1, "size": "auto", "stream": False}


def build(body, model="gpt-image-1.5"):
    return DIALECT.build_submit(parse_request({"model": model, **body}), routes_for(model, CONFIG)[0])


def envelope(code=0, message="success", urls=("https://cdn.example/a.png",), usage=None, task_status="success",
             task_id="task_1", request_id="req_1", data=True):
    payload = {"code": code, "message": message, "request_id": request_id,
               "data": {"urls": list(urls), "usage": usage or {"images": len(urls), "seconds": 7, "input_tokens": 10,
                                                               "total_tokens": 2010, "output_tokens": 2000},
                        "expired": "1767744000", "task_id": task_id, "task_status": task_status} if data else None}
    return HttpReply(200, {}, json.dumps(payload).encode())


def parse(reply, **body):
    return DIALECT.parse_submit(parse_request({"prompt": "p", **body}), [reply])


# -- pure translation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    # n, size and stream are marked required: always sent; size defaults to auto for gpt-image models
    ({}, BASE),
    ({"n": 3, "size": "1536x1024"}, {**BASE, "n": 3, "size": "1536x1024"}),
    # the gpt-image parameters pass when set; quality under its real name (the API page's partial_images row)
    ({"quality": "high", "background": "transparent", "moderation": "low", "output_format": "png", "user": "u"},
     {**BASE, "quality": "high", "background": "transparent", "moderation": "low", "output_format": "png",
      "user": "u"}),
    # output_compression only with jpeg/webp: the client's value, else the documented default 100
    ({"output_format": "jpeg"}, {**BASE, "output_format": "jpeg", "output_compression": 100}),
    ({"output_format": "webp", "output_compression": 40}, {**BASE, "output_format": "webp",
                                                           "output_compression": 40}),
    ({"output_format": "png", "output_compression": 40}, {**BASE, "output_format": "png"}),
    ({"output_compression": 40}, BASE),
    # dropped: response_format, style (dall-e-3 only), seed, resolution, webhook, partial_images, input_fidelity
    ({"response_format": "b64_json", "style": "vivid", "seed": 1, "resolution": "2k",
      "webhook": "https://hooks.example/x", **NEWER_FIELDS}, BASE),
    # aspect_ratio chooses the nearest listed size, and only when no size is given
    ({"aspect_ratio": "16:9"}, {**BASE, "size": "1536x1024"}),
    ({"aspect_ratio": "9:16"}, {**BASE, "size": "1024x1536"}),
    ({"aspect_ratio": "1:1"}, {**BASE, "size": "1024x1024"}),
    ({"aspect_ratio": "16:9", "size": "1024x1024"}, {**BASE, "size": "1024x1024"}),
])
def test_gpt_image_bodies(body, expected):
    calls = build({"prompt": "p", **body})
    assert [c.json for c in calls] == [expected]


def test_url_key_and_upstream_model():
    call_ = build({"prompt": "p"}, model="image")[0]
    assert (call_.method, call_.url) == ("POST", "https://api.aa.example/api/v1/image/generation")
    assert call_.headers["Authorization"] == "Bearer sk-e" and "sk-e" not in repr(call_)
    assert call_.json["model"] == "gpt-image-1.5"


def test_other_families():
    dalle3 = build({"prompt": "p", "n": 3, "quality": "hd", "style": "natural", "size": "1792x1024",
                    "response_format": "url"}, model="dall-e-3")
    assert [c.json for c in dalle3] == [{"model": "dall-e-3", "prompt": "p", "n": 1, "size": "1792x1024",
                                         "stream": False, "quality": "hd", "style": "natural"}] * 3
    dalle2 = build({"prompt": "p", "n": 2, "style": "vivid", "quality": "standard", "user": "u"}, model="dall-e-2")
    assert [c.json for c in dalle2] == [{"model": "dall-e-2", "prompt": "p", "n": 2, "size": "1024x1024",
                                         "stream": False, "user": "u"}]
    other = build({"prompt": "p", "size": "16:9", "background": "opaque"}, model="flux-dev")
    assert [c.json for c in other] == [{"model": "flux-dev", "prompt": "p", "n": 1, "size": "16:9",
                                        "stream": False}]


# -- parsing ------------------------------------------------------------------------------------------------

def test_a_seed_shaped_success():
    done = parse(envelope(urls=["https://cdn.example/a.png", "https://cdn.example/b.png"]), n=2)
    assert [i.url for i in done.images] == ["https://cdn.example/a.png", "https://cdn.example/b.png"]
    assert done.usage == {"images": 2, "input_tokens": 10, "output_tokens": 2000, "total_tokens": 2010}
    assert done.upstream_id == "task_1" and done.meta == {"request_id": "req_1", "task_status": "success"}


def test_extra_images_are_cut_to_n_and_a_string_code_zero_is_a_success():
    reply = HttpReply(200, {}, json.dumps({"code": "0", "message": "ok", "request_id": "r", "data": {
        "urls": ["https://x/1", "https://x/2", "https://x/3"], "task_id": "t"}}).encode())
    done = parse(reply, n=2)
    assert [i.url for i in done.images] == ["https://x/1", "https://x/2"]
    assert done.usage == {"images": 2} and done.meta == {"request_id": "r"} and done.upstream_id == "t"


def test_data_urls_are_decoded():
    png = png_bytes(8, 8)
    done = parse(envelope(urls=["data:image/png;base64," + base64.b64encode(png).decode()]))
    assert done.images[0].data == png and done.images[0].url is None


@pytest.mark.parametrize("reply, error, code", [
    (envelope(urls=[], task_status="processing"), UpstreamFailed, "no_image"),
    (envelope(data=False), UpstreamFailed, "no_image"),
    (HttpReply(200, {}, b'{"data": {"urls": ["https://x/1"]}}'), UpstreamFailed, "bad_upstream_response"),
    (HttpReply(200, {}, b'[]'), UpstreamFailed, "bad_upstream_response"),
])
def test_code_zero_without_images_or_no_envelope_fails(reply, error, code):
    with pytest.raises(error) as err:
        parse(reply)
    assert err.value.code == code


def test_an_unfinished_task_status_is_named_not_polled():
    with pytest.raises(UpstreamFailed) as err:
        parse(envelope(urls=[], task_status="processing", request_id="req_9"))
    assert "processing" in err.value.message and "req_9" in err.value.message


@pytest.mark.parametrize("code, message, error, error_code, retriable", [
    (400, "prompt violates content policy", ContentPolicyViolation, "content_policy_violation", False),
    (10031, "图片内容违规", ContentPolicyViolation, "content_policy_violation", False),
    (429, "rate limit exceeded", RateLimited, "rate_limit_exceeded", True),
    (1002, "请求过于频繁", RateLimited, "rate_limit_exceeded", True),
    (500, "internal error", UpstreamFailed, "upstream_error", True),
    (2001, "service busy, try again later", UpstreamFailed, "upstream_error", True),
    (3001, "余额不足", UpstreamFailed, "upstream_error", True),
    (401, "invalid token", UpstreamFailed, "provider_auth_failed", True),
    (400, "invalid size '999x999'", BadRequest, "upstream_rejected", False),
    (10086, "generation failed", UpstreamFailed, "upstream_error", False),
    ("error", "", UpstreamFailed, "upstream_error", False),
])
def test_a_nonzero_code_in_an_http_200_is_a_failure(code, message, error, error_code, retriable):
    with pytest.raises(error) as err:
        parse(envelope(code=code, message=message, data=False, request_id="req_7"))
    exc = err.value
    assert type(exc) is error and exc.code == error_code and exc.retriable is retriable
    assert "req_7" in exc.message
    if error_code != "provider_auth_failed":  # like the transport, an auth failure does not echo the provider
        assert (message or "code error") in exc.message


def test_submit_fans_out_dall_e_3_and_keeps_every_id():
    replies = iter([envelope(task_id="t1", request_id="r1"), envelope(task_id="t2", request_id="r2")])
    sent = []

    def send(c):
        sent.append(c)
        return next(replies)

    route = routes_for("dall-e-3", CONFIG)[0]
    done = DIALECT.submit(parse_request({"model": "dall-e-3", "prompt": "p", "n": 2}), route, send)
    assert isinstance(done, Done) and len(sent) == 2 and len(done.images) == 2
    assert done.upstream_id == "t1,t2" and done.meta == {"request_id": "r1,r2", "task_status": "success"}
    failed = DIALECT.submit(parse_request({"prompt": "p"}), routes_for("gpt-image-1.5", CONFIG)[0],
                            lambda c: envelope(code=400, message="prompt violates content policy", data=False))
    assert isinstance(failed, Failed) and failed.error.code == "content_policy_violation"


# -- the simulator checks what the relay's API page says ----------------------------------------------------

def test_simulator_checks_the_documented_fields():
    with EnvelopeSimulator() as sim:
        url = sim.base_url + PATH
        good = {"Authorization": f"Bearer {sim.api_key}"}

        def post(body, headers=good):
            return requests.post(url, json=body, headers=headers, timeout=5)

        assert post(BASE, headers={"Authorization": "sk-envelope"}).status_code == 401
        for bad in [{**BASE, "stream": True}, {k: v for k, v in BASE.items() if k != "stream"},
                    {k: v for k, v in BASE.items() if k != "n"}, {**BASE, "n": 11}, {**BASE, "size": "1792x1024"},
                    {**BASE, "response_format": "url"}, {**BASE, "partial_images": "hd"},
                    {**BASE, "quality": "hd"}, {**BASE, "output_compression": 101}, {**BASE, "style": "vivid"},
                    {**BASE, "model": "gpt-image-1"}]:
            answer = post(bad)
            assert answer.status_code == 200 and answer.json()["code"] == 400, bad
        refused = post({**BASE, "prompt": "a forbidden thing"}).json()
        assert refused["code"] != 0 and refused["message"] == "prompt violates content policy"
        ok = post({**BASE, "n": 2, "size": "1024x1536"})
        payload = ok.json()
        assert ok.status_code == 200 and payload["code"] == 0 and len(payload["data"]["urls"]) == 2
        assert set(payload["data"]) == {"urls", "usage", "expired", "task_id", "task_status"}
        image = Image.open(io.BytesIO(requests.get(payload["data"]["urls"][0], timeout=5).content))
        assert image.size[0] * 3 == image.size[1] * 2


# -- contract through the real handlers ------------------------------------------------------------------------

@pytest.fixture
def inline_bus(inline_bus, loopback_fetch):
    """The shared in-process bus, with image downloads from the loopback simulators allowed."""
    return inline_bus


def configure(providers_file, *sims):
    names = [f"env{i}" for i in range(len(sims))]
    providers_file({"providers": {name: {"dialect": "envelope", "base_url": sim.base_url, "api_key": sim.api_key}
                                  for name, sim in zip(names, sims)},
                    "models": {"gpt-image-1.5": [{"provider": name} for name in names]}})


def generate(body, **kwargs):
    return call(submit_handler.lambda_handler, "POST", GEN, key=API_KEY, body=body, **kwargs)


def get_task(task_id):
    return call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY).json()


def latest_task_id():
    return call(poll_handler.lambda_handler, "GET", "/v1/images/tasks", key=API_KEY).json()["data"][0]["id"]


def stored(key):
    return boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["Body"].read()


def test_sync_success_stores_the_images_and_keeps_the_ids(inline_bus, providers_file):
    with EnvelopeSimulator() as sim:
        configure(providers_file, sim)
        reply = generate({"model": "gpt-image-1.5", "prompt": "a red kite", "n": 2, "size": "1024x1536",
                          "output_format": "jpeg", "quality": "medium", "response_format": "url", "seed": 5})
        assert reply.status == 200, reply.body
        body = reply.json()
        assert len(body["data"]) == 2 and all("X-Amz-Signature" in d["url"] for d in body["data"])
        assert [r.body for r in sim.generations] == [{
            "model": "gpt-image-1.5", "prompt": "a red kite", "n": 2, "size": "1024x1536", "stream": False,
            "quality": "medium", "output_format": "jpeg", "output_compression": 100}]
        assert sim.generations[0].headers["authorization"] == f"Bearer {sim.api_key}"
        answer = sim.answers[0]
        usage = answer["data"]["usage"]
        assert body["usage"] == {"images": 2, "input_tokens": usage["input_tokens"],
                                 "output_tokens": usage["output_tokens"], "total_tokens": usage["total_tokens"]}
        assert sim.image_downloads == 2 and len(s3_objects()) == 2
        assert Image.open(io.BytesIO(stored(s3_objects()[0]))).size == (256, 384)
        task = tasks.get(latest_task_id())
        assert task.upstream["request_id"] == answer["request_id"]
        assert task.upstream["id"] == answer["data"]["task_id"] and task.upstream["task_status"] == "success"


def test_a_request_with_every_newer_field_reaches_the_envelope_without_them(inline_bus, providers_file):
    with EnvelopeSimulator() as sim:
        configure(providers_file, sim)
        reply = generate({"model": "gpt-image-1.5", "prompt": "a kite", "moderation": "low", **NEWER_FIELDS})
        assert reply.status == 200, reply.body
        assert [r.body for r in sim.generations] == [{**BASE, "prompt": "a kite", "moderation": "low"}]


def test_async_success(inline_bus, providers_file):
    with EnvelopeSimulator() as sim:
        configure(providers_file, sim)
        reply = generate({"model": "gpt-image-1.5", "prompt": "a harbour", "aspect_ratio": "16:9",
                          "background": "opaque"}, query={"async": "true"})
        assert reply.status == 202 and reply.json()["status"] == "queued"
        inline_bus.drain()
        task = get_task(reply.json()["id"])
        assert task["status"] == "succeeded" and len(task["data"]) == 1 and task["usage"]["images"] == 1
        assert [r.body for r in sim.generations] == [{"model": "gpt-image-1.5", "prompt": "a harbour", "n": 1,
                                                      "size": "1536x1024", "stream": False, "background": "opaque"}]
        assert s3_objects() == [f"images/{task['id']}/0.png"] and sim.image_downloads == 1
        kept = tasks.get(task["id"]).upstream
        assert kept["request_id"] == sim.answers[0]["request_id"] and kept["id"] == sim.answers[0]["data"]["task_id"]


def test_data_urls_are_stored_without_a_download(inline_bus, providers_file):
    with EnvelopeSimulator(behaviour=Behaviour(mode="data_url")) as sim:
        configure(providers_file, sim)
        reply = generate({"model": "gpt-image-1.5", "prompt": "a dune", "n": 2})
        assert reply.status == 200 and len(reply.json()["data"]) == 2
        assert sim.image_downloads == 0 and len(s3_objects()) == 2


def test_a_policy_refusal_in_an_http_200_is_a_400_with_no_fallback(inline_bus, providers_file):
    with EnvelopeSimulator() as first, EnvelopeSimulator() as second:
        configure(providers_file, first, second)
        reply = generate({"model": "gpt-image-1.5", "prompt": "something forbidden"})
        assert reply.status == 400, reply.body
        error = reply.json()["error"]
        assert error["code"] == "content_policy_violation" and error["type"] == "invalid_request_error"
        assert "prompt violates content policy" in error["message"]
        assert len(first.generations) == 1 and second.generations == []
        task = tasks.get(latest_task_id())
        assert task.status == "failed" and task.error["code"] == "content_policy_violation"


def test_another_code_fails_the_task_with_the_message(inline_bus, providers_file):
    with EnvelopeSimulator(behaviour=Behaviour(errors=[(10086, "generation failed: model error")])) as first, \
            EnvelopeSimulator() as second:
        configure(providers_file, first, second)
        reply = generate({"model": "gpt-image-1.5", "prompt": "a fern"}, query={"async": "true"})
        inline_bus.drain()
        task = get_task(reply.json()["id"])
        assert task["status"] == "failed" and task["error"]["type"] == "upstream_error"
        assert "generation failed: model error" in task["error"]["message"]
        assert first.answers[0]["request_id"] in task["error"]["message"]
        assert second.generations == []  # the upstream may have done the work: not retried elsewhere
        assert s3_objects() == []


def test_an_in_band_rate_limit_falls_back_to_the_next_route(inline_bus, providers_file):
    with EnvelopeSimulator(behaviour=Behaviour(errors=[(429, "rate limit exceeded")])) as first, \
            EnvelopeSimulator() as second:
        configure(providers_file, first, second)
        reply = generate({"model": "gpt-image-1.5", "prompt": "a fern"})
        assert reply.status == 200, reply.body
        expected = {"model": "gpt-image-1.5", "prompt": "a fern", "n": 1, "size": "auto", "stream": False}
        assert [r.body for r in first.generations] == [expected] and [r.body for r in second.generations] == [
            expected]
        task = tasks.get(latest_task_id())
        assert task.upstream["provider"] == "env1" and task.upstream["request_id"] == second.answers[0]["request_id"]
