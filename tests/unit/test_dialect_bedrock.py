"""The `bedrock` dialect (Amazon Bedrock's InvokeModel): the pure translation, the boto3 seam under botocore's
Stubber (exact InvokeModel parameters, error mapping), then the contract through the real handlers against the
SigV4-checking loopback simulator: sync and async, the fault set, fallback only where retriable, pacing."""

import base64
import io
import json
import os
import threading
import time

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from PIL import Image

from imagegw import pacing, provider_config, tasks
from imagegw.capabilities import validate_for_model
from imagegw.dialects import Done, Failed, HttpReply, get_dialect
from imagegw.dialects import bedrock
from imagegw.dialects.base import read_answer
from imagegw.dialects.bedrock import (AMAZON_FIELDS, STABILITY_FIELDS, amazon_body, amazon_size, error_for,
                                      family, stability_bodies)
from imagegw.errors import BadRequest, ContentPolicyViolation, RateLimited, UpstreamFailed, UpstreamTimeout
from imagegw.provider_config import ProviderConfig
from imagegw.request import parse_request
from imagegw.routing import Route, routes_for
from tests.apiclient import generate, read_task
from tests.conftest import NEWER_FIELDS, s3_objects
from tests.simulators.bedrock_sim import BLOCKED, RATIO_PIXELS, BedrockSimulator, Behaviour
from tests.simulators.loopback import png_bytes
from tests.unit.test_dialect_fields import VALUES, sent

GEN = "/v1/images/generations"
DIALECT = get_dialect("bedrock")
SD35, ULTRA = "stability.sd3-5-large-v1:0", "stability.stable-image-ultra-v1:1"
CORE = "stability.stable-image-core-v1:1"
NOVA, TITAN = "amazon.nova-canvas-v1:0", "amazon.titan-image-generator-v2:0"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYbedrock"  # the signing secret: never in a task or a log


@pytest.fixture(autouse=True)
def fresh_clients():
    bedrock.forget_clients()
    yield
    bedrock.forget_clients()


def route(model=SD35, base_url=None, region="us-west-2", timeout_s=120.0, provider="br"):
    return Route(provider, "bedrock", model, ProviderConfig(dialect="bedrock", base_url=base_url, region=region,
                                                            timeout_s=timeout_s))


def req(**fields):
    return parse_request({"prompt": "a cat", **fields})


def reply(payload, request_id="r-1"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return HttpReply(200, {"x-amzn-requestid": request_id}, raw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- pure translation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, kind", [
    (SD35, "stability"), (ULTRA, "stability"), (CORE, "stability"), ("us.stability.sd3-5-large-v1:0", "stability"),
    (NOVA, "amazon"), (TITAN, "amazon"), ("eu.amazon.nova-canvas-v1:0", "amazon"),
    ("stability.stable-diffusion-xl-v1", None), ("amazon.titan-text-express-v1", None), ("dall-e-3", None),
])
def test_the_family_comes_from_the_model_id(model, kind):
    assert family(model) == kind
    assert DIALECT.carries(model) == {"stability": STABILITY_FIELDS, "amazon": AMAZON_FIELDS}.get(kind, frozenset())


def test_a_stability_request_is_one_flat_body_per_image_with_consecutive_seeds():
    calls = DIALECT.build_submit(req(n=3, size="1792x1024", seed=41, output_format="jpeg", quality="hd",
                                     style="vivid", user="u"), route(SD35))
    assert [(c.method, c.url) for c in calls] == [
        ("POST", "https://bedrock-runtime.us-west-2.amazonaws.com/model/stability.sd3-5-large-v1%3A0/invoke")] * 3
    assert [c.json for c in calls] == [
        {"prompt": "a cat", "mode": "text-to-image", "aspect_ratio": "16:9", "output_format": "jpeg", "seed": s}
        for s in (41, 42, 43)]
    assert calls[0].headers == {"Content-Type": "application/json", "Accept": "application/json"}
    assert all(c.timeout_s == 120 for c in calls)


def test_ultra_and_core_take_no_mode_and_unset_fields_are_left_out():
    assert stability_bodies(req(), ULTRA) == [{"prompt": "a cat", "aspect_ratio": "1:1"}]
    assert stability_bodies(req(n=2), CORE) == [{"prompt": "a cat", "aspect_ratio": "1:1"}] * 2
    assert stability_bodies(req(output_format="webp"), SD35) == [  # not offered: dropped, the model's png
        {"prompt": "a cat", "mode": "text-to-image", "aspect_ratio": "1:1"}]
    assert stability_bodies(req(seed=2**32 - 1), ULTRA)[0]["seed"] == 0  # beyond 4,294,967,294: wraps


@pytest.mark.parametrize("fields, ratio", [
    ({"size": "1024x1024"}, "1:1"), ({"size": "1792x1024"}, "16:9"), ({"size": "1024x1792"}, "9:16"),
    ({"size": "1536x1024"}, "3:2"), ({"size": "1024x1536"}, "2:3"), ({"size": "2560x1080"}, "21:9"),
    ({"size": "1080x1350"}, "4:5"), ({"size": "1250x1000"}, "5:4"), ({"size": "640x1536"}, "9:21"),
    ({"size": "21:9"}, "21:9"), ({"size": "auto"}, "1:1"), ({"aspect_ratio": "4:5"}, "4:5"),
    ({"size": "1792x1024", "aspect_ratio": "9:16"}, "9:16"),  # its own parameter wins
])
def test_a_size_maps_to_the_nearest_of_the_nine_ratios(fields, ratio):
    assert stability_bodies(req(**fields), SD35)[0]["aspect_ratio"] == ratio
    assert BedrockSimulator.stability_problem(SD35, stability_bodies(req(**fields), SD35)[0]) is None


def test_an_amazon_request_is_one_call_for_all_images():
    calls = DIALECT.build_submit(req(n=3, size="1280x720", quality="high", seed=7, output_format="jpeg"),
                                 route(NOVA, base_url="https://vpce-1.bedrock-runtime.example/"))
    assert len(calls) == 1
    assert calls[0].url == "https://vpce-1.bedrock-runtime.example/model/amazon.nova-canvas-v1%3A0/invoke"
    assert calls[0].json == {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a cat"},
                             "imageGenerationConfig": {"width": 1280, "height": 720, "numberOfImages": 3,
                                                       "quality": "premium", "seed": 7}}
    assert amazon_body(req(), TITAN) == {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a cat"},
                                         "imageGenerationConfig": {"width": 1024, "height": 1024,
                                                                   "numberOfImages": 1}}


@pytest.mark.parametrize("fields, size", [
    ({}, (1024, 1024)), ({"resolution": "2k"}, (2048, 2048)), ({"size": "16:9"}, (1024, 576)),
    ({"aspect_ratio": "9:16", "resolution": "2k"}, (1152, 2048)), ({"size": "4:1"}, (1024, 320)),
    ({"size": "3:2", "resolution": "2k"}, (2048, 1360)), ({"size": "auto"}, (1024, 1024)),
    ({"size": "1:4", "resolution": "2k"}, (512, 2048)),
])
def test_an_amazon_ratio_becomes_pixels_on_the_16_pixel_grid(fields, size):
    width, height = amazon_size(req(**fields))
    assert (width, height) == size
    body = amazon_body(req(**fields), NOVA)
    assert BedrockSimulator.amazon_problem(NOVA, body) is None


@pytest.mark.parametrize("quality, sent_quality", [("hd", "premium"), ("high", "premium"), ("standard", "standard"),
                                                   ("medium", "standard"), ("low", "standard"), ("auto", None)])
def test_amazon_quality_and_seed_ranges(quality, sent_quality):
    config = amazon_body(req(quality=quality, seed=2**32 - 1), NOVA)["imageGenerationConfig"]
    assert config.get("quality") == sent_quality
    assert config["seed"] == (2**32 - 1) % 858_993_460  # Nova's range
    assert amazon_body(req(seed=2**32 - 1), TITAN)["imageGenerationConfig"]["seed"] == (2**32 - 1) % 2_147_483_647


@pytest.mark.parametrize("model", [SD35, ULTRA, NOVA, "us.amazon.nova-canvas-v1:0", TITAN])
def test_a_bedrock_model_sends_exactly_the_fields_it_declares(model):
    carried = DIALECT.carries(model)
    for field in sorted(VALUES):
        without = {k: v for k, v in VALUES.items() if k != field}
        moves = (sent("bedrock", model, "generate", {field: VALUES[field]}) != sent("bedrock", model, "generate", {})
                 or sent("bedrock", model, "generate", VALUES) != sent("bedrock", model, "generate", without))
        assert moves == (field in carried), f"{model}: {field}"


def test_a_model_of_no_known_family_fails_without_a_call():
    outcome = DIALECT.submit(req(), route("stability.stable-diffusion-xl-v1"), send=None)
    assert isinstance(outcome, Failed) and outcome.error.code == "provider_config_invalid"
    assert DIALECT.build_submit(req(), route("meta.llama3-8b-instruct-v1:0")) == []


# -- parsing -------------------------------------------------------------------------------------------------

def test_stability_answers_are_parsed_with_seeds_and_request_ids():
    png = png_bytes(8, 8)
    done = DIALECT.parse_submit(req(n=2), [
        reply({"seeds": [11], "finish_reasons": [None], "images": [b64(png)]}, "a"),
        reply({"seeds": [12], "finish_reasons": [None], "images": [b64(png)]}, "b")])
    assert isinstance(done, Done) and [i.data for i in done.images] == [png, png]
    assert done.usage == {"images": 2} and done.meta == {"request_id": "a,b", "seeds": "11,12"}


def test_a_filter_reason_in_a_200_is_a_content_policy_refusal():
    with pytest.raises(ContentPolicyViolation) as refused:
        DIALECT.parse_submit(req(), [reply({"seeds": [1], "finish_reasons": ["Filter reason: prompt"],
                                            "images": []})])
    assert refused.value.code == "content_policy_violation" and not refused.value.retriable
    with pytest.raises(UpstreamFailed) as failed:  # not a filter: the provider's failure, retriable
        DIALECT.parse_submit(req(), [reply({"seeds": [1], "finish_reasons": ["Inference error"], "images": []})])
    assert failed.value.retriable and failed.value.code == "upstream_error"


def test_amazon_answers_keep_what_was_not_filtered():
    png = png_bytes(8, 8)
    done = DIALECT.parse_submit(req(n=3), [reply({"images": [b64(png), b64(png)],
                                                  "error": "1 image was blocked by our content filters."})])
    assert len(done.images) == 2 and done.usage == {"images": 2}
    assert done.meta["filtered"].startswith("1 of 3: 1 image was blocked")
    with pytest.raises(ContentPolicyViolation):
        DIALECT.parse_submit(req(), [reply({"images": [], "error": "blocked by our content filters"})])
    with pytest.raises(UpstreamFailed) as empty:
        DIALECT.parse_submit(req(), [reply({"images": []})])
    assert empty.value.code == "no_image"


@pytest.mark.parametrize("raw", [b"<html>busy</html>", b'["images"]', b'{"images": ["not base64!"]}',
                                 b'{"images": [7]}'])
def test_a_malformed_answer_is_a_bad_upstream_response(raw):
    outcome = read_answer(DIALECT.parse_submit, req(), [reply(raw)])
    assert isinstance(outcome, Failed) and outcome.error.code == "bad_upstream_response"
    assert outcome.error.retriable


# -- the boto3 seam under botocore's Stubber -----------------------------------------------------------------

def streaming(payload) -> StreamingBody:
    raw = json.dumps(payload).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def stubbed(r):
    client = bedrock.client_for(r)
    return Stubber(client)


def test_invoke_model_gets_exactly_the_model_id_and_body(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    r = route(NOVA, region="us-east-1")
    png = png_bytes(8, 8)
    with stubbed(r) as stub:
        stub.add_response("invoke_model", {"body": streaming({"images": [b64(png), b64(png)]}),
                                           "contentType": "application/json"},
                          {"modelId": NOVA, "contentType": "application/json", "accept": "application/json",
                           "body": json.dumps({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a cat"},
                                               "imageGenerationConfig": {"width": 1024, "height": 1024,
                                                                         "numberOfImages": 2}}).encode()})
        outcome = DIALECT.submit(req(n=2), r, send=None)
        stub.assert_no_pending_responses()
    assert isinstance(outcome, Done) and [i.data for i in outcome.images] == [png, png]


def test_a_stability_fan_out_makes_n_invocations(monkeypatch):
    r = route(ULTRA, region="us-west-2")
    with stubbed(r) as stub:
        for seed in (5, 6):
            stub.add_response("invoke_model", {"body": streaming({"seeds": [seed], "finish_reasons": [None],
                                                                  "images": [b64(png_bytes(4, 4))]}),
                                               "contentType": "application/json"},
                              {"modelId": ULTRA, "contentType": "application/json", "accept": "application/json",
                               "body": json.dumps({"prompt": "a cat", "aspect_ratio": "1:1", "seed": seed}).encode()})
        monkeypatch.setattr(bedrock.Dialect, "run_submit", _sequential_run_submit)  # stubbed answers in order
        outcome = DIALECT.submit(req(n=2, seed=5), r, send=None)
        stub.assert_no_pending_responses()
    assert isinstance(outcome, Done) and outcome.meta["seeds"] == "5,6"


def _sequential_run_submit(self, req_, route_, send, job):
    return read_answer(self.parse_submit, req_, [send(c) for c in self.build_calls(req_, route_, job)])


@pytest.mark.parametrize("code, status, message, error_type, error_code, retriable", [
    ("ValidationException", 400, "Malformed input request: width must be a multiple of 16", BadRequest,
     "upstream_rejected", False),
    ("ValidationException", 400, BLOCKED, ContentPolicyViolation, "content_policy_violation", False),
    ("AccessDeniedException", 403, "You don't have access to the model with the specified model ID.",
     UpstreamFailed, "provider_auth_failed", True),
    ("ThrottlingException", 429, "Too many requests, please wait before trying again.", RateLimited,
     "rate_limit_exceeded", True),
    ("ServiceQuotaExceededException", 400, "Quota exceeded", RateLimited, "rate_limit_exceeded", True),
    ("ModelTimeoutException", 408, "Model has timed out in processing the request.", UpstreamTimeout,
     "upstream_timeout", True),
    ("ModelNotReadyException", 429, "Model is not ready for inference.", UpstreamFailed, "upstream_error", True),
    ("ServiceUnavailableException", 503, "Service Unavailable", UpstreamFailed, "upstream_error", True),
    ("InternalServerException", 500, "Internal Server Error", UpstreamFailed, "upstream_error", True),
    ("ResourceNotFoundException", 404, "The provided model identifier is invalid.", UpstreamFailed,
     "upstream_model_not_found", True),
])
def test_client_errors_map_to_the_gateway_errors(code, status, message, error_type, error_code, retriable):
    r = route(NOVA, region="us-east-1")
    with stubbed(r) as stub:
        stub.add_client_error("invoke_model", service_error_code=code, service_message=message,
                              http_status_code=status)
        outcome = DIALECT.submit(req(), r, send=None)
    assert isinstance(outcome, Failed), outcome
    error = outcome.error
    assert type(error) is error_type and error.code == error_code and error.retriable == retriable
    assert error_for({"Error": {"Code": code, "Message": message},
                      "ResponseMetadata": {"HTTPStatusCode": status}}).code == error_code


def test_throttling_carries_bedrocks_retry_hint_when_it_sends_one():
    r = route(NOVA, region="us-east-1")
    with stubbed(r) as stub:
        stub.add_client_error("invoke_model", service_error_code="ThrottlingException", service_message="slow down",
                              http_status_code=429, response_meta={"HTTPHeaders": {"retry-after": "7"}})
        stub.add_client_error("invoke_model", service_error_code="ThrottlingException", service_message="slow down",
                              http_status_code=429)
        hinted, plain = DIALECT.submit(req(), r, send=None), DIALECT.submit(req(), r, send=None)
    assert isinstance(hinted.error, RateLimited) and hinted.error.retry_after_s == 7
    assert isinstance(plain.error, RateLimited) and plain.error.retry_after_s is None


def test_an_unexpected_failure_after_the_call_went_out_is_never_retried(monkeypatch):
    r = route(NOVA, region="us-east-1")

    def broken(**kwargs):
        raise RuntimeError("the SDK broke")

    monkeypatch.setattr(bedrock.client_for(r), "invoke_model", broken)
    outcome = DIALECT.submit(req(), r, send=None)
    assert isinstance(outcome, Failed) and not outcome.error.retriable and "RuntimeError" in outcome.error.message


def test_botocore_never_retries_and_reads_within_the_routes_timeout():
    client = bedrock.client_for(route(NOVA, region="eu-west-1", timeout_s=42))
    config = client.meta.config
    assert config.retries["total_max_attempts"] == 1
    assert config.read_timeout == 42 and config.connect_timeout == 10 and config.proxies == {}
    assert client.meta.region_name == "eu-west-1"
    assert bedrock.client_for(route(NOVA, region="eu-west-1", timeout_s=42)) is client  # kept
    assert bedrock.client_for(route(NOVA, region="eu-west-1", timeout_s=5)) is not client


# -- configuration and capabilities --------------------------------------------------------------------------

def test_a_bedrock_provider_needs_a_region_and_no_key():
    def problems(provider):
        return provider_config.problems({"providers": {"br": {"dialect": "bedrock", **provider}},
                                         "models": {"m": [{"provider": "br", "model": NOVA}]}})

    assert problems({"region": "us-east-1"}) == []
    assert problems({"region": "us-east-1", "base_url": "https://vpce-1.example"}) == []
    assert problems({}) == ["providers.br.region: required by dialect bedrock (an AWS region, e.g. us-east-1)"]
    assert [p.split(":")[0] for p in problems({"region": "US East"})] == ["providers.br.region"]
    assert problems({"region": "us-east-1", "base_url": "ftp://x"})[0].startswith("providers.br.base_url")
    sdxl = "stability.stable-diffusion-xl-v1"  # another request format: refused when the document is loaded
    unknown = provider_config.problems({"providers": {"br": {"dialect": "bedrock", "region": "us-east-1"}},
                                        "models": {"sdxl": [{"provider": "br", "model": sdxl}],
                                                   "us.amazon.nova-canvas-v1:0": [{"provider": "br"}],
                                                   "*": [{"provider": "br"}]}})
    assert unknown == ["models.sdxl.0.model: the bedrock dialect has no request format for "
                       "'stability.stable-diffusion-xl-v1': it speaks Stability (stability.sd3*, "
                       "stability.stable-image-ultra*, stability.stable-image-core*) and Amazon (amazon.nova-canvas*, "
                       "amazon.titan-image-generator*) model ids, with an optional cross-region prefix (us., eu., ...)"]


@pytest.mark.parametrize("model, fields, param", [
    (NOVA, {"size": "1000x1000"}, "size"),  # not on the 16-pixel grid
    (NOVA, {"size": "4096x4096"}, "size"),  # over 4,194,304 pixels
    (NOVA, {"size": "2048x320"}, "size"),  # wider than 4:1
    (NOVA, {"size": "256x256"}, "size"),  # under 320
    (NOVA, {"size": "5:1"}, "size"), (NOVA, {"aspect_ratio": "1:5"}, "aspect_ratio"),
    (NOVA, {"n": 6}, "n"), (NOVA, {"prompt": "x" * 1025}, "prompt"), (TITAN, {"prompt": "x" * 513}, "prompt"),
    (NOVA, {"resolution": "4k"}, "resolution"), ("us.amazon.nova-canvas-v1:0", {"size": "1000x1000"}, "size"),
    (SD35, {"size": "4:3"}, "size"), (SD35, {"aspect_ratio": "3:4"}, "aspect_ratio"), (SD35, {"n": 5}, "n"),
    (SD35, {"prompt": "x" * 10001}, "prompt"),
])
def test_bad_input_is_refused_before_any_call(model, fields, param):
    with pytest.raises(BadRequest) as refused:
        validate_for_model(parse_request({"prompt": "p", **fields}), model, "bedrock")
    assert refused.value.param == param


@pytest.mark.parametrize("model, fields", [
    (NOVA, {"size": "2048x2048"}), (NOVA, {"size": "1280x320"}), (NOVA, {"size": "16:9", "n": 5}),
    (TITAN, {"size": "1024x1024"}), (SD35, {"size": "1000x700"}), (SD35, {"size": "9:21", "n": 4}),
    (ULTRA, {"aspect_ratio": "5:4"}),
])
def test_good_input_passes(model, fields):
    validate_for_model(parse_request({"prompt": "p", **fields}), model, "bedrock")


# -- contract through the real handlers, against the simulator ------------------------------------------------

@pytest.fixture
def world(inline_bus, providers_file, monkeypatch, simulators):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)

    def start(behaviour=None, *, fallback=False, timeout_s=30, max_concurrency=None):
        sim = simulators.start(BedrockSimulator(behaviour=behaviour))
        provider = {"dialect": "bedrock", "region": "us-east-1", "base_url": sim.base_url, "timeout_s": timeout_s}
        if max_concurrency:
            provider["max_concurrency"] = max_concurrency
        routes = {"sd": [{"provider": "br", "model": SD35}], "nova": [{"provider": "br", "model": NOVA}]}
        if fallback:
            for entries in routes.values():
                entries.append({"provider": "dev"})
        providers_file({"providers": {"br": provider, "dev": {"dialect": "local"}}, "models": routes})
        return sim

    yield start
    inline_bus.drain()


def test_sync_stability_fan_out_signed_and_stored(world):
    sim = world()
    answer = generate({"model": "sd", "prompt": "two foxes", "n": 2, "size": "1536x1024", "seed": 9,
                       "output_format": "jpeg", "response_format": "b64_json", "style": "vivid", **NEWER_FIELDS})
    assert answer.status == 200, answer.body
    bodies = sorted((r.body for r in sim.generations), key=lambda b: b["seed"])
    assert bodies == [{"prompt": "two foxes", "mode": "text-to-image", "aspect_ratio": "3:2",
                       "output_format": "jpeg", "seed": s} for s in (9, 10)]
    for request in sim.generations:
        assert request.path == "/model/stability.sd3-5-large-v1%3A0/invoke"
        key_id = os.environ["AWS_ACCESS_KEY_ID"]  # the function's own credentials (moto's here)
        assert request.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/")
        assert "/us-east-1/bedrock/aws4_request" in request.headers["authorization"]
        assert request.headers["x-amz-date"] and SECRET not in json.dumps(request.headers)
    data = answer.json()["data"]
    assert answer.json()["usage"] == {"images": 2} and len(s3_objects()) == 2
    assert [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in data] == [RATIO_PIXELS["3:2"]] * 2


def test_async_amazon_task_through_the_bus(world, inline_bus):
    sim = world()
    submitted = generate({"model": "nova", "prompt": "a harbour", "n": 3, "size": "16:9", "quality": "hd"},
                         query={"async": "true"})
    assert submitted.status == 202 and submitted.json()["status"] == "queued"
    inline_bus.drain()
    task = read_task(submitted.json()["id"]).json()
    assert task["status"] == "succeeded" and len(task["data"]) == 3 and task["usage"] == {"images": 3}
    assert [r.body for r in sim.generations] == [{
        "taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a harbour"},
        "imageGenerationConfig": {"width": 1024, "height": 576, "numberOfImages": 3, "quality": "premium"}}]
    stored = tasks.get(submitted.json()["id"]).upstream
    assert stored["provider"] == "br" and stored["model"] == NOVA and stored["request_id"] == "req-1"


def test_bad_input_never_reaches_bedrock(world):
    sim = world()
    for model, bad, param in [("nova", {"size": "1000x1000"}, "size"), ("nova", {"n": 6}, "n"),
                              ("sd", {"aspect_ratio": "3:4"}, "aspect_ratio")]:
        answer = generate({"model": model, "prompt": "p", **bad})
        assert answer.status == 400 and answer.json()["error"]["param"] == param
    assert sim.requests == []


FAULTS = [  # (id, behaviour, prompt, the task's error code alone, whether the local fallback serves)
    ("throttled", Behaviour(failures=[(429, "ThrottlingException")]), "p", None, True),
    ("service unavailable", Behaviour(failures=[(503, "ServiceUnavailableException")]), "p", "upstream_error", True),
    ("internal error", Behaviour(failures=[(500, "InternalServerException")]), "p", "upstream_error", True),
    ("model timeout", Behaviour(failures=[(408, "ModelTimeoutException")]), "p", "upstream_timeout", True),
    ("model not ready", Behaviour(failures=[(429, "ModelNotReadyException")]), "p", "upstream_error", True),
    ("access denied", Behaviour(failures=[(403, "AccessDeniedException")]), "p", "provider_auth_failed", True),
    ("not JSON in a 200", Behaviour(body=b"<html>oops</html>"), "p", "bad_upstream_response", True),
    ("filtered in a 200", Behaviour(), "filtered fox", "content_policy_violation", False),
    ("blocked by the content filters", Behaviour(), "blocked fox", "content_policy_violation", False),
    ("refused as invalid", Behaviour(failures=[(400, "ValidationException")]), "p", "upstream_rejected", False),
]


@pytest.mark.parametrize("behaviour, prompt, code, falls_back", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("fallback", [False, True], ids=["one route", "with fallback"])
def test_a_fault_ends_the_task_clearly_and_falls_back_only_when_retriable(world, inline_bus, caplog, behaviour,
                                                                         prompt, code, falls_back, fallback):
    caplog.set_level("INFO")
    sim = world(Behaviour(failures=list(behaviour.failures), body=behaviour.body), fallback=fallback)
    submitted = generate({"model": "sd", "prompt": prompt}, query={"async": "true"})
    assert submitted.status == 202, submitted.body
    task_id = submitted.json()["id"]
    inline_bus.drain()
    task = read_task(task_id).json()
    assert len(sim.generations) == 1  # botocore made exactly one attempt
    if fallback and falls_back:
        assert task["status"] == "succeeded" and tasks.get(task_id).upstream["provider"] == "dev", task
    elif code is None:  # throttled on its only route: the task waits for the provider, as after any 429
        assert task["status"] == "queued" and task["waiting_for"] == "rate_limit", task
    else:
        assert task["status"] == "failed" and task["error"]["code"] == code, task
        assert tasks.get(task_id).upstream["provider"] == "br"
        assert s3_objects() == []
    logs = [json.dumps(vars(record), default=str) for record in caplog.records]
    for text in [submitted.body, json.dumps(task), json.dumps(tasks.get(task_id).__dict__, default=str), *logs]:
        assert SECRET not in text and SECRET[:12] not in text


class Hanging(BedrockSimulator):
    """Answers after `delay_s` (bounded: the test's simulator stops)."""

    delay_s = 3.0

    def respond(self, handler, request):
        time.sleep(self.delay_s)
        try:
            super().respond(handler, request)
        except (BrokenPipeError, ConnectionResetError):  # the gateway gave up, as it should
            pass


def test_an_upstream_that_does_not_answer_in_time_is_an_upstream_timeout(inline_bus, providers_file):
    with Hanging() as sim:
        providers_file({"providers": {"br": {"dialect": "bedrock", "region": "us-east-1", "base_url": sim.base_url,
                                             "timeout_s": 1}},
                        "models": {"nova": [{"provider": "br", "model": NOVA}]}})
        started = time.monotonic()
        answer = generate({"model": "nova", "prompt": "slow"})
        assert time.monotonic() - started < 2.9  # the read timeout fired, not the simulator's answer
        assert answer.status == 504 and answer.json()["error"]["code"] == "upstream_timeout"
        assert len(sim.generations) == 1


def test_bedrock_routes_are_paced_like_http_routes(world, inline_bus):
    sim = world(max_concurrency=1)
    r = routes_for("nova")[0]
    held = pacing.acquire(r, "someone-else")  # the provider's only slot is in use
    assert isinstance(held, pacing.Permit)
    submitted = generate({"model": "nova", "prompt": "wait your turn"}, query={"async": "true"})
    task_id = submitted.json()["id"]
    inline_bus.drain()
    waiting = read_task(task_id).json()
    assert waiting["status"] == "queued" and waiting["waiting_for"] == "capacity" and sim.requests == []
    pacing.release(held)  # hands the slot over: the waiting task is woken and served
    inline_bus.drain()
    assert read_task(task_id).json()["status"] == "succeeded" and len(sim.generations) == 1


def test_a_fan_out_holds_one_slot_and_calls_in_parallel(world):
    sim = world(max_concurrency=1)
    seen = []
    lock = threading.Lock()
    original = sim.answer

    def slow(request):
        with lock:
            seen.append(time.monotonic())
        time.sleep(0.3)
        return original(request)

    sim.answer = slow
    answer = generate({"model": "sd", "prompt": "three owls", "n": 3})
    assert answer.status == 200, answer.body
    assert len(sim.generations) == 3 and len(answer.json()["data"]) == 3
    assert max(seen) - min(seen) < 0.25  # all three in flight at once, under the provider's one slot
