"""The `grok` dialect (xAI's Grok images API via a relay): pure translation, then the contract through the real
handlers."""

import base64
import io
import json

import pytest
from PIL import Image

import poll_handler
from imagegw.dialects import Done, Failed, HttpReply
from imagegw.dialects.grok import GrokDialect, request_body
from imagegw.errors import ContentPolicyViolation, UpstreamFailed
from imagegw.request import parse_request
from imagegw.provider_config import ProviderConfig
from imagegw.routing import Route
from tests.apiclient import call, generate
from tests.conftest import API_KEY, NEWER_FIELDS, s3_objects
from tests.simulators.grok_sim import Behaviour, GrokSimulator
from tests.simulators.loopback import png_bytes

GEN = "/v1/images/generations"
DIALECT = GrokDialect()


def route(base_url="https://grok.example/v1", key="xai-k", model="grok-3-image"):
    return Route("g", "grok", model, ProviderConfig(dialect="grok", base_url=base_url, api_key=key))


def body_for(**request):
    return request_body(parse_request({"prompt": "a cat", **request}), "grok-3-image")


def reply(payload, status=200):
    return HttpReply(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())


# -- pure translation ----------------------------------------------------------------------------------------

def test_the_seed_example_request_is_what_we_send_minus_the_stray_whitespace():
    call_ = DIALECT.build_submit(parse_request({
        "model": "grok-image", "prompt": "a cat", "size": "960x960", "n": 2, "aspect_ratio": "1:1",
        "quality": "low", "resolution": "1k", "response_format": "b64_json "}), route())[0]
    assert (call_.method, call_.url) == ("POST", "https://grok.example/v1/images/generations")
    assert call_.headers["Authorization"] == "Bearer xai-k" and call_.params is None
    assert call_.json == {"model": "grok-3-image", "prompt": "a cat", "size": "960x960",
                          "aspect_ratio": ["1:1", "1:1"], "n": 2, "quality": ["low", "low"],
                          "resolution": ["1k", "1k"], "response_format": "b64_json"}
    assert list(call_.json) == ["model", "prompt", "size", "aspect_ratio", "n", "quality", "resolution",
                                "response_format"]  # field order as the relay's API page lists them


def test_required_lists_are_sent_as_n_nulls_when_the_client_set_nothing():
    assert body_for() == {"model": "grok-3-image", "prompt": "a cat", "aspect_ratio": [None], "n": 1,
                          "quality": [None], "resolution": [None], "response_format": "url"}
    three = body_for(n=3, quality="high")
    assert three["aspect_ratio"] == [None] * 3 and three["quality"] == ["high"] * 3
    assert three["resolution"] == [None] * 3 and "size" not in three


@pytest.mark.parametrize("request_, size, ratio", [
    ({"size": "1024x1024"}, "960x960", None),
    ({"size": "1792x1024"}, "1280x720", None),
    ({"size": "1024x1792"}, "720x1280", None),
    ({"size": "1536x1024"}, "1168x784", None),
    ({"size": "1024x1536"}, "784x1168", None),
    ({"size": "1280x720"}, "1280x720", None),
    ({"size": "16:9"}, "1280x720", "16:9"),
    ({"size": "9:19.5"}, "720x1280", "9:19.5"),
    ({"size": "1:1", "aspect_ratio": "2:3"}, "960x960", "2:3"),
    ({"aspect_ratio": "3:4"}, "784x1168", "3:4"),
    ({"aspect_ratio": "5:4"}, "1168x784", "4:3"),  # not listed: the nearest listed ratio
    ({"size": "1024x1024", "aspect_ratio": "16:9"}, "960x960", "16:9"),
])
def test_sizes_map_to_the_five_and_ratios_travel_in_aspect_ratio(request_, size, ratio):
    body = body_for(n=2, **request_)
    assert body["size"] == size and body["aspect_ratio"] == [ratio, ratio]
    assert GrokSimulator.problem(body) is None  # what the service accepts


def test_values_outside_the_seed_lists_are_mapped_and_other_fields_dropped():
    body = body_for(quality="hd", resolution="4k", style="vivid", user="u-1", seed=7, output_format="jpeg",
                    background="opaque", moderation="low", output_compression=50, webhook="https://hook.example/x",
                    **NEWER_FIELDS)
    assert body == {"model": "grok-3-image", "prompt": "a cat", "aspect_ratio": [None], "n": 1,
                    "quality": ["high"], "resolution": ["2k"], "response_format": "url"}
    assert body_for(quality="standard")["quality"] == ["medium"] and body_for(quality="auto")["quality"] == [None]
    assert GrokSimulator.problem(body) is None


def test_the_seed_answer_is_parsed_and_usage_normalised():
    seed_answer = {"created": 1773127037,
                   "data": [{"url": "https://pub-8562.r2.dev/grok/8903fc79-152b-4b80-b384-d74ae6775b07.jpg"}],
                   "usage": {"generated_images": 1, "output_tokens": 16384, "total_tokens": 16384}}
    done = DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply(seed_answer)])
    assert isinstance(done, Done)
    assert [i.url for i in done.images] == ["https://pub-8562.r2.dev/grok/8903fc79-152b-4b80-b384-d74ae6775b07.jpg"]
    assert done.usage == {"images": 1, "output_tokens": 16384, "total_tokens": 16384}


def test_stray_whitespace_and_case_in_the_answer_are_tolerated():
    png = png_bytes(8, 8)
    answer = {"created": 1, "data": [{" B64_JSON ": " " + base64.b64encode(png).decode() + "\n"},
                                     {"url ": " https://x.example/1.jpg "}, {"url": "https://x.example/extra.jpg"}],
              "usage": {"generated_images": 3, "input_tokens": 9, "output_tokens": 100, "total_tokens": 109}}
    done = DIALECT.parse_submit(parse_request({"prompt": "p", "n": 2}), [reply(answer)])
    assert done.images[0].data == png and done.images[1].url == "https://x.example/1.jpg"
    assert len(done.images) == 2  # beyond n: ignored
    assert done.usage == {"images": 2, "input_tokens": 9, "output_tokens": 100, "total_tokens": 109}


def test_an_answer_without_images_is_a_failure_or_a_refusal():
    with pytest.raises(UpstreamFailed) as failed:
        DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply({"created": 1, "data": []})])
    assert failed.value.code == "no_image" and failed.value.retriable
    with pytest.raises(ContentPolicyViolation):
        DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply(
            {"data": [], "error": {"message": "Prompt rejected by content moderation"}})])
    outcome = DIALECT.submit(parse_request({"prompt": "p"}), route(), lambda c: reply({"data": None}))
    assert isinstance(outcome, Failed) and outcome.error.code == "no_image"


# -- contract through the real handlers ---------------------------------------------------------------------


@pytest.fixture
def grok(inline_bus, providers_file, loopback_fetch, simulators):
    def start(behaviour=None):
        sim = simulators.start(GrokSimulator(behaviour=behaviour))
        providers_file({"providers": {"xai": {"dialect": "grok", "base_url": sim.base_url + "/v1",
                                              "api_key": sim.api_key}},
                        "models": {"aurora": [{"provider": "xai", "model": "grok-3-image"}]}})
        return sim

    yield start
    inline_bus.drain()


def s3_image(key):
    import os

    import boto3

    return boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["Body"].read()


def test_sync_two_images_of_an_unlisted_size_as_b64(grok):
    sim = grok()
    reply_ = generate({"model": "aurora", "prompt": "two cats", "n": 2, "size": "1024x1024",
                       "response_format": "b64_json"})
    assert reply_.status == 200, reply_.body
    assert [r.body for r in sim.generations] == [{
        "model": "grok-3-image", "prompt": "two cats", "size": "960x960", "aspect_ratio": [None, None], "n": 2,
        "quality": [None, None], "resolution": [None, None], "response_format": "b64_json"}]
    assert sim.generations[0].headers["authorization"] == f"Bearer {sim.api_key}"
    body = reply_.json()
    assert body["usage"] == {"images": 2, "output_tokens": 32768, "total_tokens": 32768}
    assert len(body["data"]) == 2 and sim.image_downloads == 0  # bytes in hand: nothing to download
    keys = s3_objects()
    assert len(keys) == 2
    for entry, key in zip(body["data"], keys):
        raw = base64.b64decode(entry["b64_json"])
        assert raw == s3_image(key) and Image.open(io.BytesIO(raw)).size == (960, 960)
        assert "X-Amz-Signature" in entry["url"]


def test_a_request_with_every_newer_field_reaches_grok_without_them(grok):
    sim = grok()
    reply_ = generate({"model": "aurora", "prompt": "a cat", "moderation": "low", **NEWER_FIELDS})
    assert reply_.status == 200, reply_.body
    assert [r.body for r in sim.generations] == [{"model": "grok-3-image", "prompt": "a cat", "aspect_ratio": [None],
                                                  "n": 1, "quality": [None], "resolution": [None],
                                                  "response_format": "url"}]


def test_async_task_with_a_ratio_size_quality_and_resolution(grok, inline_bus):
    sim = grok()
    reply_ = generate({"model": "aurora", "prompt": "a wide harbour", "n": 2, "size": "16:9", "quality": "high",
                       "resolution": "2k"}, query={"async": "true"})
    assert reply_.status == 202 and reply_.json()["status"] == "queued"
    inline_bus.drain()
    task = call(poll_handler.lambda_handler, "GET", reply_.headers["location"], key=API_KEY).json()
    assert task["status"] == "succeeded" and len(task["data"]) == 2
    assert task["usage"] == {"images": 2, "output_tokens": 32768, "total_tokens": 32768}
    assert [r.body for r in sim.generations] == [{
        "model": "grok-3-image", "prompt": "a wide harbour", "size": "1280x720", "aspect_ratio": ["16:9", "16:9"],
        "n": 2, "quality": ["high", "high"], "resolution": ["2k", "2k"], "response_format": "url"}]
    assert sim.image_downloads == 2
    assert Image.open(io.BytesIO(s3_image(s3_objects()[0]))).size == (1280, 720)


def test_a_refusal_is_a_400_and_bad_input_never_reaches_grok(grok):
    sim = grok()
    refused = generate({"model": "aurora", "prompt": "against policy"})
    assert refused.status == 400 and refused.json()["error"]["code"] == "content_policy_violation"
    for bad, param in [({"quality": "hd"}, "quality"), ({"resolution": "4k"}, "resolution"),
                       ({"size": "21:9"}, "size"), ({"prompt": "x" * 1001}, "prompt")]:
        answer = generate({"model": "aurora", "prompt": "p", **bad})
        assert answer.status == 400 and answer.json()["error"]["param"] == param
    assert len(sim.generations) == 1


def test_an_empty_answer_fails_the_sync_request_with_502(grok):
    grok(Behaviour(empty=True))
    failed = generate({"model": "aurora", "prompt": "p"})
    assert failed.status == 502 and failed.json()["error"]["code"] == "no_image"
