"""The `jimeng` dialect (the jimeng relay): pure translation, parsing of answers shaped as its reference's
example, and the contract through the real handlers against the loopback simulator, sync and async."""

import io
import json
import os

import boto3
import pytest
import requests
from PIL import Image

import poll_handler
from imagegw.dialects import Done, Failed, HttpReply, get_dialect
from imagegw.dialects.jimeng import jimeng_ratio
from imagegw.errors import ContentPolicyViolation, UpstreamFailed
from imagegw.request import parse_request
from imagegw.provider_config import load_config_text
from imagegw.routing import routes_for
from tests.apiclient import call, generate
from tests.conftest import API_KEY, NEWER_FIELDS, s3_objects
from tests.simulators.jimeng_sim import PIXELS, Behaviour, JimengSimulator

GEN = "/v1/images/generations"
CONFIG = load_config_text(json.dumps({
    "providers": {"j": {"dialect": "jimeng", "base_url": "https://jimeng.example/v1/", "api_key": "sk-j"}},
    "models": {"jimeng-4.0": [{"provider": "j"}], "jimeng-3.1": [{"provider": "j", "model": "jimeng-3.1-pro"}]},
}))
DIALECT = get_dialect("jimeng")

# The seed's own example answer, verbatim (four signed, expiring URLs).
SEED_ANSWER = (
    b'{\r\n    "created": 1765863987,\r\n    "data": [\r\n        {\r\n            "url": "https://p19-dreamina-sign-sg'
    b'.ibyteimg.com/tos-alisg-i-wopfjsm1ax-sg/66657fb2eac34a2490a2e5b02a10894e~tplv-wopfjsm1ax-aigc_resize:0:0.jpeg'
    b'?lk3s=43402efa&x-expires=1767744000&x-signature=HPpUoqaNH%2Bnh%2BFmvJIuF6ETheZc%3D&format=.jpeg"\r\n        },'
    b'\r\n        {\r\n            "url": "https://p16-dreamina-sign-sg.ibyteimg.com/tos-alisg-i-wopfjsm1ax-sg/0cf4043'
    b'd94de432e8754fd6ff8e0278d~tplv-wopfjsm1ax-aigc_resize:0:0.jpeg?lk3s=43402efa&x-expires=1767744000&x-signature'
    b'=K6pNWf3Yo%2FvgXHcmw30X6h00DRw%3D&format=.jpeg"\r\n        },\r\n        {\r\n            "url": "https://p16-'
    b'dreamina-sign-sg.ibyteimg.com/tos-alisg-i-wopfjsm1ax-sg/7ef97eacbb7c4cc49ae427870c28309e~tplv-wopfjsm1ax-aigc_'
    b'resize:0:0.jpeg?lk3s=43402efa&x-expires=1767744000&x-signature=7YW0XMwoA3vRc5RNFFwOMgWh0zE%3D&format=.jpeg"'
    b'\r\n        },\r\n        {\r\n            "url": "https://p19-dreamina-sign-sg.ibyteimg.com/tos-alisg-i-wopfjsm1'
    b'ax-sg/ea9d8881a8c34f4c8029fa2c89a9ec19~tplv-wopfjsm1ax-aigc_resize:0:0.jpeg?lk3s=43402efa&x-expires=176774400'
    b'0&x-signature=2mLW1df9ACv%2FBbM3yp%2BCTxQIqoI%3D&format=.jpeg"\r\n        }\r\n    ]\r\n}'
)
SEED_URLS = [item["url"] for item in json.loads(SEED_ANSWER)["data"]]


def build(body, model="jimeng-4.0"):
    return DIALECT.build_submit(parse_request({"model": model, **body}), routes_for(model, CONFIG)[0])


# -- pure translation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, size", [
    ({}, "1:1"),                                               # no size: 1:1
    ({"size": "auto"}, "1:1"),
    ({"size": "2:3"}, "2:3"),                                   # a ratio passes as is (as in the relay's API page)
    ({"size": "21:9"}, "21:9"),
    ({"size": "1024x1024"}, "1:1"),                             # pixels: the nearest supported ratio
    ({"size": "1792x1024"}, "16:9"),
    ({"size": "1024x1536"}, "2:3"),
    ({"size": "1536x1024"}, "3:2"),
    ({"size": "1024x768"}, "4:3"),
    ({"size": "1024x1792"}, "9:16"),
    ({"aspect_ratio": "9:16"}, "9:16"),
    ({"size": "1024x1024", "aspect_ratio": "16:9"}, "16:9"),    # aspect_ratio wins over a pixel size
    ({"size": "3:4", "aspect_ratio": "21:9"}, "21:9"),          # ... and over a ratio in size
])
def test_size_is_an_aspect_ratio(body, size):
    calls = build({"prompt": "一只可爱的小猪", **body})
    assert len(calls) == 1
    assert calls[0].json == {"model": "jimeng-4.0", "prompt": "一只可爱的小猪", "size": size}


def test_a_ratio_outside_the_list_becomes_the_nearest_supported_one():
    # Only reachable when the first route's model is not a jimeng model (validation refuses it otherwise).
    assert jimeng_ratio(parse_request({"prompt": "p", "size": "5:1"})) == "21:9"
    assert jimeng_ratio(parse_request({"prompt": "p", "aspect_ratio": "5:4"})) == "4:3"


def test_every_other_optional_field_is_dropped():
    calls = build({"prompt": "p", "n": 3, "size": "16:9", "quality": "hd", "style": "vivid",
                   "response_format": "b64_json", "output_format": "jpeg", "output_compression": 50,
                   "background": "opaque", "moderation": "low", "user": "u-1", "resolution": "2k", "seed": 42,
                   "webhook": "https://hooks.example/x", **NEWER_FIELDS})
    assert [c.json for c in calls] == [{"model": "jimeng-4.0", "prompt": "p", "size": "16:9"}]


def test_url_key_and_upstream_model():
    call_ = build({"prompt": "p"}, model="jimeng-3.1")[0]
    assert (call_.method, call_.url) == ("POST", "https://jimeng.example/v1/images/generations")
    assert call_.headers["Authorization"] == "Bearer sk-j" and "sk-j" not in repr(call_)
    assert call_.json["model"] == "jimeng-3.1-pro"


@pytest.mark.parametrize("n, calls", [(1, 1), (2, 1), (4, 1), (5, 2), (6, 2), (8, 2), (9, 3), (10, 3)])
def test_four_images_per_call_so_n_becomes_the_number_of_calls(n, calls):
    built = build({"prompt": "p", "n": n})
    assert len(built) == calls
    assert all("n" not in c.json for c in built)


# -- parsing ------------------------------------------------------------------------------------------------

def test_the_seed_answer_keeps_exactly_n_images():
    reply = HttpReply(200, {}, SEED_ANSWER)
    one = DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply])
    assert [i.url for i in one.images] == SEED_URLS[:1] and one.usage == {"images": 1}
    two = DIALECT.parse_submit(parse_request({"prompt": "p", "n": 2}), [reply])
    assert [i.url for i in two.images] == SEED_URLS[:2] and two.usage == {"images": 2}
    four = DIALECT.parse_submit(parse_request({"prompt": "p", "n": 4}), [reply])
    assert [i.url for i in four.images] == SEED_URLS and four.usage == {"images": 4}
    assert all(i.data is None and i.revised_prompt is None for i in four.images)


def test_fanned_out_answers_are_joined_in_order_and_cut_to_n():
    first = HttpReply(200, {}, json.dumps({"created": 1, "data": [{"url": f"https://a/{i}"} for i in range(4)]})
                      .encode())
    second = HttpReply(200, {}, json.dumps({"created": 1, "data": [{"url": f"https://b/{i}"} for i in range(4)]})
                       .encode())
    done = DIALECT.parse_submit(parse_request({"prompt": "p", "n": 6}), [first, second])
    assert [i.url for i in done.images] == [f"https://a/{i}" for i in range(4)] + ["https://b/0", "https://b/1"]
    assert done.usage == {"images": 6}


@pytest.mark.parametrize("body, error, code", [
    (b'{"created": 1}', UpstreamFailed, "no_image"),
    (b'{"created": 1, "data": []}', UpstreamFailed, "no_image"),
    (b'{"created": 1, "data": [{"b64_json": null}]}', UpstreamFailed, "no_image"),
    (b'{"error": {"message": "generation failed"}}', UpstreamFailed, "no_image"),
    (b'{"code": -2007, "message": "content policy: the prompt is not allowed"}', ContentPolicyViolation,
     "content_policy_violation"),
    (b'<html>bad gateway</html>', UpstreamFailed, "bad_upstream_response"),
])
def test_answers_without_images_fail(body, error, code):
    with pytest.raises(error) as err:
        DIALECT.parse_submit(parse_request({"prompt": "p"}), [HttpReply(200, {}, body)])
    assert err.value.code == code


def test_submit_runs_the_calls_and_fails_on_an_empty_answer():
    sent = []

    def send(c):
        sent.append(c)
        return HttpReply(200, {}, SEED_ANSWER)

    route = routes_for("jimeng-4.0", CONFIG)[0]
    done = DIALECT.submit(parse_request({"prompt": "p", "n": 7}), route, send)
    assert isinstance(done, Done) and len(sent) == 2 and len(done.images) == 7
    failed = DIALECT.submit(parse_request({"prompt": "p"}), route, lambda c: HttpReply(200, {}, b'{"data": []}'))
    assert isinstance(failed, Failed) and failed.error.code == "no_image"


# -- the simulator checks what the relay's API page says ----------------------------------------------------

def test_simulator_refuses_pixel_sizes_bad_keys_and_missing_fields():
    with JimengSimulator() as sim:
        url = sim.base_url + GEN
        good = {"Authorization": f"Bearer {sim.api_key}"}
        assert requests.post(url, json={"prompt": "p", "size": "2:3"}, headers={"Authorization": "Bearer x"},
                             timeout=5).status_code == 401
        pixels = requests.post(url, json={"prompt": "p", "size": "1024x1024"}, headers=good, timeout=5)
        assert pixels.status_code == 400 and "aspect ratio" in pixels.json()["error"]["message"]
        assert requests.post(url, json={"prompt": "p"}, headers=good, timeout=5).status_code == 400
        ok = requests.post(url, json={"model": "jimeng-4.0", "prompt": "p", "size": "2:3"}, headers=good, timeout=5)
        urls = [d["url"] for d in ok.json()["data"]]
        assert ok.status_code == 200 and len(urls) == 4 and all("x-expires=" in u for u in urls)
        image = Image.open(io.BytesIO(requests.get(urls[0], timeout=5).content))
        assert image.size == PIXELS["2:3"] and sim.image_downloads == 1


# -- contract through the real handlers ------------------------------------------------------------------------

@pytest.fixture
def inline_bus(inline_bus, loopback_fetch):
    """The shared in-process bus, with image downloads from the loopback simulators allowed."""
    return inline_bus


@pytest.fixture
def jimeng(providers_file):
    with JimengSimulator() as sim:
        providers_file({"providers": {"jm": {"dialect": "jimeng", "base_url": sim.base_url + "/v1",
                                             "api_key": sim.api_key}},
                        "models": {"jimeng-4.0": [{"provider": "jm"}]}})
        yield sim


def stored_size(key):
    raw = boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["Body"].read()
    return Image.open(io.BytesIO(raw)).size


def test_sync_n6_makes_two_calls_and_stores_exactly_six(inline_bus, jimeng):
    reply = generate({"model": "jimeng-4.0", "prompt": "一只可爱的小猪", "n": 6, "size": "1792x1024",
                      "quality": "hd", "seed": 7})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert len(body["data"]) == 6 and body["usage"] == {"images": 6}
    assert all("X-Amz-Signature" in d["url"] for d in body["data"])
    assert [r.body for r in jimeng.generations] == [{"model": "jimeng-4.0", "prompt": "一只可爱的小猪",
                                                     "size": "16:9"}] * 2
    assert all(r.headers["authorization"] == f"Bearer {jimeng.api_key}" for r in jimeng.generations)
    assert jimeng.image_downloads == 6  # the two surplus images are never fetched
    keys = s3_objects()
    assert len(keys) == 6 and {stored_size(k) for k in keys} == {PIXELS["16:9"]}


def test_sync_n2_makes_one_call_and_stores_two(inline_bus, jimeng):
    reply = generate({"model": "jimeng-4.0", "prompt": "a cat", "n": 2, "size": "2:3"})
    assert reply.status == 200, reply.body
    assert len(reply.json()["data"]) == 2
    assert [r.body for r in jimeng.generations] == [{"model": "jimeng-4.0", "prompt": "a cat", "size": "2:3"}]
    assert jimeng.image_downloads == 2 and len(s3_objects()) == 2


def test_a_request_with_every_newer_field_reaches_jimeng_without_them(inline_bus, jimeng):
    reply = generate({"model": "jimeng-4.0", "prompt": "a cat", "size": "2:3", "moderation": "low", **NEWER_FIELDS})
    assert reply.status == 200, reply.body
    assert [r.body for r in jimeng.generations] == [{"model": "jimeng-4.0", "prompt": "a cat", "size": "2:3"}]


def test_async_task_succeeds_with_the_images_stored(inline_bus, jimeng):
    reply = generate({"model": "jimeng-4.0", "prompt": "a lake", "n": 3, "aspect_ratio": "9:16",
                      "size": "1024x1024"}, query={"async": "true"})
    assert reply.status == 202 and reply.json()["status"] == "queued"
    inline_bus.drain()
    task = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{reply.json()['id']}", key=API_KEY).json()
    assert task["status"] == "succeeded" and len(task["data"]) == 3 and task["usage"] == {"images": 3}
    assert [r.body for r in jimeng.generations] == [{"model": "jimeng-4.0", "prompt": "a lake", "size": "9:16"}]
    assert jimeng.image_downloads == 3
    keys = s3_objects()
    assert keys == [f"images/{task['id']}/{i}.png" for i in range(3)]
    assert stored_size(keys[0]) == PIXELS["9:16"]


def two_routes(providers_file, first, second):
    providers_file({"providers": {
        "first": {"dialect": "jimeng", "base_url": first.base_url, "api_key": first.api_key},
        "second": {"dialect": "jimeng", "base_url": second.base_url, "api_key": second.api_key}},
        "models": {"jimeng-4.0": [{"provider": "first"}, {"provider": "second"}]}})


def test_a_busy_route_falls_back_to_the_next(inline_bus, providers_file):
    with JimengSimulator(behaviour=Behaviour(failures=[503] * 10)) as busy, JimengSimulator() as spare:
        two_routes(providers_file, busy, spare)
        ok = generate({"model": "jimeng-4.0", "prompt": "a boat"})
        assert ok.status == 200 and len(ok.json()["data"]) == 1
        assert busy.generations and [r.body for r in spare.generations] == [
            {"model": "jimeng-4.0", "prompt": "a boat", "size": "1:1"}]
        assert spare.image_downloads == 1


def test_a_refused_prompt_is_a_400_with_no_fallback(inline_bus, providers_file):
    with JimengSimulator() as first, JimengSimulator() as second:
        two_routes(providers_file, first, second)
        refused = generate({"model": "jimeng-4.0", "prompt": "something forbidden"})
        assert refused.status == 400 and refused.json()["error"]["code"] == "content_policy_violation"
        assert len(first.generations) == 1 and second.generations == []
