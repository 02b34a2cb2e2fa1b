"""The `gemini` dialect (Google's Generative Language API: Gemini image models and Imagen): pure translation,
then the contract and the fault set through the real handlers against the loopback simulator."""

import base64
import copy
import io
import json
import os

import boto3
import pytest
from PIL import Image

import poll_handler
from imagegw import transport, worker
from imagegw.capabilities import capability_for
from imagegw.dialects import Done, Failed, HttpReply
from imagegw.dialects.gemini import GeminiDialect, content_body, image_sizes, predict_body
from imagegw.errors import ContentPolicyViolation, RateLimited, UpstreamFailed, from_task_error
from imagegw.provider_config import ProviderConfig
from imagegw.request import parse_request
from imagegw.routing import Route
from tests.apiclient import call, generate
from tests.conftest import API_KEY, NEWER_FIELDS, s3_objects
from tests.simulators.gemini_sim import Behaviour, GeminiSimulator
from tests.simulators.loopback import png_bytes

GEN = "/v1/images/generations"
DIALECT = GeminiDialect()
PNG = png_bytes(4, 4)
B64 = base64.b64encode(PNG).decode()


def route(model="gemini-2.5-flash-image", base_url=None, key="AIza-route-key"):
    return Route("g", "gemini", model, ProviderConfig(dialect="gemini", base_url=base_url, api_key=key))


def calls(model, **request):
    return DIALECT.build_submit(parse_request({"prompt": "a cat", **request}), route(model))


def reply(payload, status=200):
    return HttpReply(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def gemini_answer(*parts, finish="STOP", usage=None):
    return {"candidates": [{"content": {"role": "model", "parts": list(parts)}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage or {"promptTokenCount": 5, "candidatesTokenCount": 1290, "totalTokenCount": 1295},
            "modelVersion": "gemini-2.5-flash-image", "responseId": "resp-1"}


def parse(*payloads, n=1):
    return DIALECT.parse_submit(parse_request({"prompt": "p", "n": n}), [reply(p) for p in payloads])


# -- requests -----------------------------------------------------------------------------------------------

def test_a_gemini_request_is_generate_content_with_the_key_in_x_goog_api_key_and_n_calls():
    sent = calls("gemini-2.5-flash-image", n=2, size="1792x1024")
    assert len(sent) == 2 and sent[0] == sent[1]
    call_ = sent[0]
    assert (call_.method, call_.url) == (
        "POST", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash-image:generateContent")
    assert call_.headers == {"Content-Type": "application/json", "Accept": "application/json",
                             "x-goog-api-key": "AIza-route-key"}
    assert call_.params is None  # never the key in the URL
    assert call_.json == {"contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
                          "generationConfig": {"responseModalities": ["IMAGE"],
                                               "imageConfig": {"aspectRatio": "16:9"}}}


def test_without_size_or_ratio_no_image_config_is_sent_and_resolution_only_where_the_model_has_it():
    assert calls("gemini-2.5-flash-image", size="auto", resolution="1k")[0].json["generationConfig"] == {
        "responseModalities": ["IMAGE"]}
    assert calls("gemini-3-pro-image-preview", resolution="2k")[0].json["generationConfig"] == {
        "responseModalities": ["IMAGE"], "imageConfig": {"imageSize": "2K"}}
    assert calls("gemini-3-pro-image-preview", aspect_ratio="21:9", resolution="4k")[0].json[
        "generationConfig"]["imageConfig"] == {"aspectRatio": "21:9", "imageSize": "4K"}


@pytest.mark.parametrize("request_, ratio", [
    ({"size": "1024x1024"}, "1:1"), ({"size": "1792x1024"}, "16:9"), ({"size": "1024x1792"}, "9:16"),
    ({"size": "1536x1024"}, "3:2"), ({"size": "1024x1536"}, "2:3"), ({"size": "1024x1280"}, "4:5"),
    ({"size": "2048x880"}, "21:9"), ({"size": "4:3"}, "4:3"), ({"aspect_ratio": "5:4"}, "5:4"),
    ({"size": "1024x1024", "aspect_ratio": "3:4"}, "3:4"), ({"aspect_ratio": "2:1"}, "16:9"),
])
def test_sizes_and_ratios_become_the_nearest_listed_aspect_ratio(request_, ratio):
    body = content_body(parse_request({"prompt": "p", **request_}), "gemini-2.5-flash-image")
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": ratio}
    assert GeminiSimulator.content_problem(body, "gemini-2.5-flash-image") is None


def test_an_imagen_request_is_predict_with_sample_count_in_calls_of_at_most_four():
    sent = calls("imagen-4.0-generate-001", n=6, size="1792x1024", resolution="2k")
    assert [c.url for c in sent] == [
        "https://generativelanguage.googleapis.com/v1beta/models/imagen-4.0-generate-001:predict"] * 2
    assert sent[0].headers["x-goog-api-key"] == "AIza-route-key" and "Authorization" not in sent[0].headers
    assert [c.json for c in sent] == [
        {"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": count, "aspectRatio": "16:9",
                                                            "sampleImageSize": "2K", "includeRaiReason": True}}
        for count in (4, 2)]
    for body in (c.json for c in sent):
        assert GeminiSimulator.predict_problem(body, "imagen-4.0-generate-001") is None


@pytest.mark.parametrize("model, request_, parameters", [
    ("imagen-4.0-fast-generate-001", {"resolution": "2k", "aspect_ratio": "3:4"},
     {"sampleCount": 1, "aspectRatio": "3:4", "includeRaiReason": True}),
    ("imagen-3.0-generate-002", {"size": "1024x1536"}, {"sampleCount": 1, "aspectRatio": "3:4",
                                                         "includeRaiReason": True}),
    ("imagen-4.0-ultra-generate-001", {"resolution": "4k"}, {"sampleCount": 1, "sampleImageSize": "2K",
                                                              "includeRaiReason": True}),
    ("imagen-4.0-generate-001", {"size": "21:9"}, {"sampleCount": 1, "aspectRatio": "16:9",
                                                   "includeRaiReason": True}),
])
def test_imagen_parameters_by_model(model, request_, parameters):
    body = predict_body(parse_request({"prompt": "p", **request_}), model, 1)
    assert body["parameters"] == parameters
    assert GeminiSimulator.predict_problem(body, model) is None


def test_base_url_models_prefix_and_other_fields():
    own = Route("g", "gemini", "models/gemini-3-pro-image-preview",
                ProviderConfig(dialect="gemini", base_url="https://relay.example/v1beta/", api_key="k"))
    sent = DIALECT.build_submit(parse_request({"prompt": "p", "quality": "hd", "style": "vivid", "user": "u",
                                               "seed": 7, "output_format": "jpeg", "background": "opaque",
                                               "moderation": "low", "response_format": "b64_json",
                                               "webhook": "https://hook.example/x", **NEWER_FIELDS}), own)
    assert sent[0].url == "https://relay.example/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert sent[0].json == {"contents": [{"role": "user", "parts": [{"text": "p"}]}],
                            "generationConfig": {"responseModalities": ["IMAGE"]}}


def test_what_is_carried_follows_the_capability_table():
    for model in ("gemini-2.5-flash-image", "gemini-3-pro-image-preview", "imagen-4.0-generate-001",
                  "imagen-4.0-fast-generate-001", "imagen-3.0-generate-002"):
        takes_size = len(capability_for(model).resolutions) > 1
        assert bool(image_sizes(model)) == takes_size
        assert ("resolution" in DIALECT.carries(model)) == takes_size
        assert ("n" in DIALECT.carries(model)) == model.startswith("imagen")
    assert DIALECT.carries("dall-e-2") == {"size", "aspect_ratio"}


# -- answers ------------------------------------------------------------------------------------------------

def test_the_image_part_is_kept_and_text_and_thought_parts_dropped_usage_normalised():
    thought = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(b"draft").decode()}, "thought": True}
    answer = gemini_answer({"text": "Here you go"}, thought, {"inlineData": {"mimeType": "image/png", "data": B64}},
                           usage={"promptTokenCount": 7, "candidatesTokenCount": 1290, "thoughtsTokenCount": 100,
                                  "totalTokenCount": 1397})
    done = parse(answer, answer, n=2)
    assert isinstance(done, Done) and [i.data for i in done.images] == [PNG, PNG]
    assert all(i.revised_prompt is None and i.url is None for i in done.images)
    assert done.usage == {"images": 2, "input_tokens": 14, "output_tokens": 2780, "total_tokens": 2794}
    assert done.upstream_id == "resp-1,resp-1" and done.meta == {"model_version": "gemini-2.5-flash-image"}


def test_a_relay_snake_case_answer_is_read_too():
    done = parse({"candidates": [{"content": {"parts": [{"inline_data": {"mime_type": "image/png", "data": B64}}]},
                                  "finish_reason": "STOP"}]})
    assert [i.data for i in done.images] == [PNG] and done.usage == {"images": 1}


@pytest.mark.parametrize("answer, detail", [
    ({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}, "blockReason SAFETY"),
    ({"promptFeedback": {"blockReason": "OTHER"}}, "blockReason OTHER"),
    (gemini_answer(finish="IMAGE_SAFETY"), "IMAGE_SAFETY"),
    ({"candidates": [{"finishReason": "PROHIBITED_CONTENT"}]}, "PROHIBITED_CONTENT"),
    ({"candidates": [{"finishReason": "BLOCKLIST"}]}, "BLOCKLIST"),
])
def test_blocks_are_content_policy_refusals(answer, detail):
    with pytest.raises(ContentPolicyViolation) as refused:
        parse(answer)
    assert detail in refused.value.message and refused.value.status == 400 and not refused.value.retriable


@pytest.mark.parametrize("answer, detail", [
    (gemini_answer({"text": "I can only describe it."}), "STOP"),
    ({"candidates": [{"finishReason": "NO_IMAGE"}]}, "NO_IMAGE"),
    ({"candidates": [{"finishReason": "IMAGE_OTHER"}]}, "IMAGE_OTHER"),
    ({"candidates": [], "usageMetadata": {}}, "no candidates"),
    (gemini_answer({"inlineData": {"mimeType": "text/plain", "data": B64}}), "STOP"),
])
def test_another_answer_without_an_image_is_a_retriable_no_image(answer, detail):
    with pytest.raises(UpstreamFailed) as failed:
        parse(answer)
    assert failed.value.code == "no_image" and failed.value.retriable and detail in failed.value.message


def test_a_fan_out_keeps_the_images_of_the_calls_that_were_not_blocked():
    done = parse(gemini_answer({"inlineData": {"mimeType": "image/png", "data": B64}}),
                 {"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, n=2)
    assert len(done.images) == 1 and done.usage["images"] == 1 and done.meta["filtered"] == "1: IMAGE_SAFETY"


def test_imagen_predictions_filtered_ones_missing_and_none_is_a_refusal():
    reason = {"raiFilteredReason": "Unable to show generated images. Support codes: 58061214"}
    done = parse({"predictions": [{"bytesBase64Encoded": B64, "mimeType": "image/png"}, reason,
                                  {"bytesBase64Encoded": B64, "mimeType": "image/png"}]}, n=3)
    assert [i.data for i in done.images] == [PNG, PNG] and done.usage == {"images": 2}
    assert done.meta["filtered"].startswith("1: Unable to show generated images")
    for answer in ({"predictions": [reason, reason]}, {}, {"predictions": []}):
        with pytest.raises(ContentPolicyViolation):
            parse(answer, n=2)


def test_unexpected_shapes_are_the_upstreams_failure_never_a_crash():
    for body in (b"[1, 2]", b"not json", json.dumps(gemini_answer({"inlineData": {"data": "@@@"}})).encode(),
                 json.dumps({"candidates": "x"}).encode(),
                 json.dumps({"predictions": [{"bytesBase64Encoded": 5}]}).encode()):
        outcome = DIALECT.submit(parse_request({"prompt": "p"}), route(), lambda c, b=body: HttpReply(200, {}, b))
        assert isinstance(outcome, Failed) and outcome.error.status in (400, 502), body
        assert outcome.error.code in ("bad_upstream_response", "no_image", "content_policy_violation"), body


def test_googles_retry_info_is_the_429s_retry_hint():
    body = {"error": {"code": 429, "message": "Quota exceeded. Please retry in 37.04s.", "status": "RESOURCE_EXHAUSTED",
                      "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                                  {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}
    error = transport.map_http_error(reply(body, 429))
    assert isinstance(error, RateLimited) and error.retry_after_s == 37.0 and "Quota exceeded" in error.message
    with_header = HttpReply(429, {"Retry-After": "3"}, json.dumps(body).encode())
    assert transport.map_http_error(with_header).retry_after_s == 3.0  # the header wins
    assert transport.map_http_error(reply({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, 429)
                                    ).retry_after_s is None
    assert transport.retry_delay_s(HttpReply(429, {}, b"nope")) is None


def test_a_wrong_key_is_provider_auth_failed_through_the_real_transport(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BACKOFF_S", "0.01")
    with GeminiSimulator() as sim:
        for key in ("AIza-wrong-key-0123456789", None):
            outcome = DIALECT.submit(parse_request({"prompt": "p"}), route(base_url=sim.base_url, key=key),
                                     transport.send)
            assert isinstance(outcome, Failed) and outcome.error.code == "provider_auth_failed", outcome
            assert outcome.error.status == 502 and "AIza-wrong" not in outcome.error.message
        good = DIALECT.submit(parse_request({"prompt": "p"}), route(base_url=sim.base_url, key=sim.api_key),
                              transport.send)
        assert isinstance(good, Done)
        assert [r.headers.get("x-goog-api-key") for r in sim.generations] == ["AIza-wrong-key-0123456789", None,
                                                                                sim.api_key]


# -- contract through the real handlers ---------------------------------------------------------------------

MODELS = {"nano-banana": "gemini-2.5-flash-image", "nano-banana-pro": "gemini-3-pro-image-preview",
          "imagen": "imagen-4.0-generate-001", "imagen-fast": "imagen-4.0-fast-generate-001"}


@pytest.fixture
def gemini(inline_bus, providers_file, loopback_fetch, simulators):
    """start(behaviour, fallback=False, timeout_s=...) -> the simulator (and the fallback one, when asked)."""

    def start(behaviour=None, *, fallback=False, timeout_s=30, key=None):
        sims = [simulators.start(GeminiSimulator(behaviour=behaviour))]
        if fallback:
            sims.append(simulators.start(GeminiSimulator(api_key="AIzaSyFallbackUpstream987654321")))
        providers = {f"google{i}": {"dialect": "gemini", "base_url": sim.base_url,
                                    "api_key": key if key and i == 0 else sim.api_key, "timeout_s": timeout_s}
                     for i, sim in enumerate(sims)}
        providers_file({"providers": providers,
                        "models": {public: [{"provider": name, "model": upstream} for name in providers]
                                   for public, upstream in MODELS.items()}})
        return sims if fallback else sims[0]

    yield start
    inline_bus.drain()


def s3_image(key):
    return boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["Body"].read()


def test_sync_two_gemini_images_as_b64_nothing_downloaded(gemini):
    sim = gemini()
    answer = generate({"model": "nano-banana", "prompt": "two cats", "n": 2, "size": "1792x1024",
                       "response_format": "b64_json"})
    assert answer.status == 200, answer.body
    expected = {"contents": [{"role": "user", "parts": [{"text": "two cats"}]}],
                "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9"}}}
    assert [(r.path, r.body) for r in sim.generations] == [
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", expected)] * 2
    assert all(r.headers["x-goog-api-key"] == sim.api_key and "authorization" not in r.headers
               for r in sim.generations)
    body = answer.json()
    prompt_tokens = len("two cats") // 4
    assert body["usage"] == {"images": 2, "input_tokens": 2 * prompt_tokens, "output_tokens": 2 * 1290,
                             "total_tokens": 2 * (prompt_tokens + 1290)}
    assert sim.image_downloads == 0  # inline bytes: no result URL exists that could expire
    keys = s3_objects()
    assert len(keys) == 2 and len(body["data"]) == 2
    for entry, key in zip(body["data"], keys, strict=True):
        raw = base64.b64decode(entry["b64_json"])
        assert raw == s3_image(key) and Image.open(io.BytesIO(raw)).size == (1344, 768)
        assert "revised_prompt" not in entry or entry["revised_prompt"] is None


def test_async_imagen_task_with_a_ratio_and_resolution(gemini, inline_bus):
    sim = gemini()
    submitted = generate({"model": "imagen", "prompt": "a wide harbour", "n": 3, "aspect_ratio": "16:9",
                          "resolution": "2k"}, query={"async": "true"})
    assert submitted.status == 202 and submitted.json()["status"] == "queued"
    inline_bus.drain()
    task = call(poll_handler.lambda_handler, "GET", submitted.headers["location"], key=API_KEY).json()
    assert task["status"] == "succeeded" and len(task["data"]) == 3 and task["usage"] == {"images": 3}
    assert [r.body for r in sim.generations] == [{"instances": [{"prompt": "a wide harbour"}], "parameters": {
        "sampleCount": 3, "aspectRatio": "16:9", "sampleImageSize": "2K", "includeRaiReason": True}}]
    assert sim.generations[0].path == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert Image.open(io.BytesIO(s3_image(s3_objects()[0]))).size == (1536, 838)  # 2816x1536, capped by the sim


def test_gemini_3_thought_images_are_not_stored(gemini):
    gemini()
    answer = generate({"model": "nano-banana-pro", "prompt": "a fox", "aspect_ratio": "1:1", "resolution": "1k",
                       "response_format": "b64_json"})
    assert answer.status == 200, answer.body
    (entry,) = answer.json()["data"]
    assert Image.open(io.BytesIO(base64.b64decode(entry["b64_json"]))).size == (1024, 1024)  # not the 8x8 thought


def test_bad_input_is_a_400_before_any_upstream_call(gemini):
    sim = gemini()
    for model, bad, param in [("nano-banana", {"size": "2:1"}, "size"), ("nano-banana", {"n": 5}, "n"),
                              ("nano-banana", {"resolution": "2k"}, "resolution"),
                              ("nano-banana-pro", {"aspect_ratio": "1:2"}, "aspect_ratio"),
                              ("imagen", {"size": "3:2"}, "size"), ("imagen", {"resolution": "4k"}, "resolution"),
                              ("imagen-fast", {"resolution": "2k"}, "resolution"),
                              ("imagen", {"prompt": "x" * 1921}, "prompt")]:
        answer = generate({"model": model, "prompt": "p", **bad})
        assert answer.status == 400 and answer.json()["error"]["param"] == param, (model, bad, answer.body)
    assert sim.generations == []


# -- the fault set ------------------------------------------------------------------------------------------

FAULTS = [  # (id, Behaviour kwargs, model, the task's error code with one route, falls back to a second route)
    ("429 RESOURCE_EXHAUSTED with RetryInfo", {"failures": [(429, "RESOURCE_EXHAUSTED")] * 9}, "nano-banana", None,
     True),
    ("503 UNAVAILABLE", {"failures": [(503, "UNAVAILABLE")] * 9}, "nano-banana", "upstream_error", True),
    ("500 INTERNAL on imagen", {"failures": [(500, "INTERNAL")] * 9}, "imagen", "upstream_error", True),
    ("timeout", {"stall_s": 2.5}, "nano-banana", "upstream_timeout", True),
    ("200 that is not JSON", {"garbage": True}, "nano-banana", "bad_upstream_response", True),
    ("prompt blocked", {"block": "prompt"}, "nano-banana", "content_policy_violation", False),
    ("image blocked", {"block": "image"}, "nano-banana", "content_policy_violation", False),
    ("imagen filtered every image", {"filtered": 4}, "imagen", "content_policy_violation", False),
    ("imagen answered {}", {"empty": True}, "imagen", "content_policy_violation", False),
    ("text only", {"block": "text"}, "nano-banana", "no_image", True),
    ("finishReason NO_IMAGE", {"block": "no_image"}, "nano-banana", "no_image", True),
]


def run_task(model, inline_bus, fake_clock, rounds=4):
    submitted = generate({"model": model, "prompt": "a lighthouse", "n": 2}, query={"async": "true"})
    assert submitted.status == 202, submitted.body
    answers = [submitted.body]
    for _ in range(rounds):  # bounded: a minute of gateway time per round
        inline_bus.drain()
        seen = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{submitted.json()['id']}", key=API_KEY)
        answers.append(seen.body)
        if seen.json()["status"] not in ("queued", "in_progress"):
            break
        fake_clock.advance(60_000)
        worker.sweep()
    return seen.json(), answers


@pytest.mark.parametrize("kwargs, model, code", [f[1:4] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_fault_ends_the_task_with_a_clear_code_and_leaks_no_key(gemini, inline_bus, fake_clock, caplog, kwargs,
                                                                  model, code):
    caplog.set_level("INFO")
    sim = gemini(Behaviour(**copy.deepcopy(kwargs)), timeout_s=1)
    task, answers = run_task(model, inline_bus, fake_clock, rounds=1 if code is None else 4)
    if code is None:  # a 429 means wait: queued for its provider, not failed
        assert task["status"] == "queued" and task["waiting_for"] == "rate_limit", task
    else:
        assert task["status"] == "failed" and task["error"]["code"] == code, task
        assert from_task_error(task["error"]).status in (400, 502, 504)
    logs = [json.dumps(vars(record), default=str) for record in caplog.records]
    for text in [*answers, *logs]:
        assert sim.api_key not in text and sim.api_key[6:20] not in text
    assert s3_objects() == []


@pytest.mark.parametrize("kwargs, model, falls_back", [(f[1], f[2], f[4]) for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_only_a_retriable_fault_falls_back_to_the_next_route(gemini, inline_bus, fake_clock, kwargs, model,
                                                             falls_back):
    first, second = gemini(Behaviour(**copy.deepcopy(kwargs)), fallback=True, timeout_s=1)
    task, _ = run_task(model, inline_bus, fake_clock)
    assert bool(second.generations) == falls_back
    if falls_back:
        assert task["status"] == "succeeded" and len(task["data"]) == 2, task
        assert task["usage"]["images"] == 2
    else:
        assert task["status"] == "failed" and task["error"]["code"] == "content_policy_violation"
    assert first.generations


def test_the_429_wait_follows_googles_retry_delay(gemini, inline_bus, fake_clock):
    from imagegw import tasks

    sim = gemini(Behaviour(failures=[(429, "RESOURCE_EXHAUSTED")] * 9, retry_delay="120s"))
    submitted = generate({"model": "nano-banana", "prompt": "p"}, query={"async": "true"})
    inline_bus.drain()
    task = tasks.get(submitted.json()["id"])
    assert task.waiting_for == "rate_limit"
    assert task.next_check_at - fake_clock() >= 119_000  # not the 1-2 s backoff it would be without the hint
    assert len(sim.generations) == 3  # the transport's own retries, then the task waits


def test_a_wrong_key_fails_provider_auth_failed(gemini, inline_bus, fake_clock):
    first = gemini(key="AIzaSyWrongKeyForTheFirstRoute000")
    task, answers = run_task("nano-banana", inline_bus, fake_clock)
    assert task["status"] == "failed" and task["error"]["code"] == "provider_auth_failed"
    assert not any("AIzaSyWrongKey" in text for text in answers)
    assert first.generations


def test_a_gemini_provider_needs_only_a_key():
    from imagegw import provider_config

    def document(**provider):
        return {"providers": {"g": {"dialect": "gemini", **provider}}, "models": {"m": [{"provider": "g"}]}}

    assert provider_config.problems(document(api_key_env="GEMINI_API_KEY")) == []
    assert provider_config.problems(document(base_url="https://relay.example/v1beta", api_key_env="K")) == []
    assert any("a key source is required by dialect gemini" in p for p in provider_config.problems(document()))


@pytest.mark.parametrize("status, google_status", [(400, "INVALID_ARGUMENT"), (403, "PERMISSION_DENIED"),
                                                   (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (200, None)])
def test_an_upstream_echoing_the_key_leaks_nothing(monkeypatch, status, google_status):
    from tests.simulators.loopback import Answer

    monkeypatch.setenv("UPSTREAM_BACKOFF_S", "0.01")
    key = "zz9/Plural+Z-alpha=GOOGLEKEY"  # no known shape: only the exact match can catch it
    with GeminiSimulator(api_key=key) as sim:
        def echo(request):
            text = f"Bad request; you sent x-goog-api-key={request.headers.get('x-goog-api-key')} ({key[:16]}...)"
            if status == 200:  # a 2xx whose block reason quotes the key
                return Answer(200, {"promptFeedback": {"blockReason": text}})
            return Answer(status, {"error": {"code": status, "message": text, "status": google_status}})

        sim.intercept = echo
        outcome = DIALECT.submit(parse_request({"prompt": "p"}), route(base_url=sim.base_url, key=key), transport.send)
        assert isinstance(outcome, Failed)
        assert key not in outcome.error.message and key[:16] not in outcome.error.message, outcome.error.message
