"""No provider secret is ever echoed: every dialect's error paths against an upstream that echoes the request's
Authorization header (real relays do), through the real `Dialect.submit/check` and `transport.send` against the
loopback simulators, then once end to end through the API (answer, stored task and log lines)."""

import json
import re
from urllib.parse import quote

import pytest

import poll_handler
import submit_handler
from imagegw import transport
from imagegw.dialects import Done, Failed, get_dialect
from imagegw.request import parse_request
from imagegw.provider_config import ProviderConfig
from imagegw.routing import Route
from imagegw.scrub import MESSAGE_CHARS, PROMPT_CHARS
from tests.apiclient import call
from tests.conftest import API_KEY
from tests.simulators.async_relay_sim import AsyncRelaySimulator
from tests.simulators.envelope_sim import EnvelopeSimulator
from tests.simulators.grok_sim import GrokSimulator
from tests.simulators.jimeng_sim import JimengSimulator
from tests.simulators.loopback import Answer, Captured
from tests.simulators.openai_sim import OpenAISimulator

KEY = "zz9/Plural+Z-alpha=ROUTEKEY"  # the route's key: no known shape, only the exact match can catch it
OTHER_TOKEN = "sk-proj-AbC123def456GhI789"  # someone else's key the relay leaks too
SIMULATORS = {"openai": OpenAISimulator, "jimeng": JimengSimulator, "envelope": EnvelopeSimulator,
              "grok": GrokSimulator, "async-relay": AsyncRelaySimulator}


def hostile_text(request: Captured) -> str:
    """What a careless relay says: the headers it got, the key in several spellings, a signed URL, a line break
    and escape codes for the log, and far more text than anyone should store."""
    auth = request.headers.get("authorization", "")
    return (f"Invalid request. Received headers {{'Authorization': '{auth}'}}; raw {auth}; your key {KEY} "
            f"(shown as {KEY[:16]}...) "
            f"(url-encoded {quote(KEY, safe='')}) has no quota; retry at "
            f"https://relay:{KEY}@up.example/v1?api_key={quote(KEY, safe='')}; also tried {OTHER_TOKEN}."
            "\n\x1b[2Jforged log line " + "padding " * 120)


def openai_error(text):
    return {"error": {"message": text, "type": "invalid_request_error", "code": "echo"}}


def envelope(code):
    return lambda text: {"code": code, "message": text, "data": None, "request_id": f"req {text[:120]}"}


# (dialect, phase, HTTP status, body from the hostile text): every way an upstream's words reach an error.
CASES = [
    *[(d, "submit", status, openai_error) for d in ("openai", "jimeng", "grok", "async-relay")
      for status in (400, 401, 429, 500)],
    ("openai", "submit", 502, lambda text: text.encode()),  # not JSON: the body's own text
    *[("envelope", "submit", status, envelope(status)) for status in (400, 401, 429, 500)],
    *[("envelope", "submit", 200, envelope(code)) for code in (400, 401, 429, 500, 777, "E_AUTH Bearer " + KEY)],
    ("envelope", "submit", 200, lambda text: {"code": 0, "data": {"urls": [], "task_status": text},
                                              "request_id": text}),
    ("jimeng", "submit", 200, lambda text: {"data": [], "message": text}),
    ("jimeng", "submit", 200, lambda text: {"data": [], "error": {"message": text + " content policy"}}),
    ("grok", "submit", 200, lambda text: {"data": [], "error": {"message": text}}),
    ("grok", "submit", 200, lambda text: {"data": None, "message": "safety system: " + text}),
    ("async-relay", "submit", 200, lambda text: {"code": "fail", "message": text}),
    ("async-relay", "submit", 200, lambda text: {"code": text, "data": None}),
    ("async-relay", "submit", 200, lambda text: {"message": text}),
    *[("async-relay", "check", status, openai_error) for status in (400, 401, 429, 500)],
    ("async-relay", "check", 200, lambda text: {"code": "success", "data": {"status": "FAILURE",
                                                                            "fail_reason": text}}),
    ("async-relay", "check", 200, lambda text: {"status": "FAILURE", "fail_reason": "moderation: " + text}),
    ("async-relay", "check", 200, lambda text: {"code": "task_not_exist", "message": text, "data": None}),
    ("async-relay", "check", 404, lambda text: {"code": "task_not_exist", "message": text}),
]


@pytest.fixture(autouse=True)
def one_attempt(monkeypatch):
    monkeypatch.setenv("UPSTREAM_RETRIES", "0")  # a 429/5xx answered once: the message is what matters here
    transport.session.cache_clear()
    yield
    transport.session.cache_clear()


def route_to(sim, dialect: str) -> Route:
    model = {"envelope": "gpt-image-1.5", "jimeng": "jimeng-4.0", "grok": "grok-2-image"}.get(dialect, "dall-e-3")
    config = ProviderConfig(dialect=dialect, base_url=sim.base_url, api_key=KEY, timeout_s=10)
    return Route("hostile", dialect, model, config)


def assert_clean(text: str, *, capped: bool = True) -> None:
    assert KEY[:12] not in text and quote(KEY, safe="")[:12] not in text, text
    assert "sk-proj" not in text and "relay:" not in text, text
    assert not re.search(r"Bearer (?!\[redacted\])\S", text), text
    assert "\x1b" not in text and "\\u001b" not in text and "\n" not in text and "\\n" not in text, text
    if capped:
        assert len(text) <= MESSAGE_CHARS, text


@pytest.mark.parametrize("dialect, phase, status, body", CASES,
                         ids=[f"{d}-{p}-{s}-{i}" for i, (d, p, s, _) in enumerate(CASES)])
def test_no_error_path_echoes_the_key(dialect, phase, status, body):
    with SIMULATORS[dialect]() as sim:
        sim.intercept = lambda request: Answer(status, body(hostile_text(request)))
        route, impl = route_to(sim, dialect), get_dialect(dialect)
        if phase == "submit":
            outcome = impl.submit(parse_request({"model": route.upstream_model, "prompt": "p"}), route,
                                  transport.send)
        else:
            outcome = impl.check("img_task_0001", route, transport.send)
        assert sim.requests and sim.requests[0].headers["authorization"] == f"Bearer {KEY}"  # it had the key
    assert isinstance(outcome, Failed), outcome
    error = outcome.error
    assert_clean(error.message)
    assert str(error) == error.message and error.task_error()["message"] == error.message
    assert_clean(json.dumps(error.body()), capped=False)


@pytest.mark.parametrize("dialect, answer", [
    ("envelope", lambda sim, text: {"code": 0, "message": "ok", "request_id": text,
                                    "data": {"urls": [sim.file_url(64, 64, "a")], "task_status": text}}),
    ("openai", lambda sim, text: {"created": 1, "data": [{"url": sim.file_url(64, 64, "a"),
                                                          "revised_prompt": text}]}),
])
def test_upstream_text_in_a_success_is_scrubbed_too(dialect, answer):
    with SIMULATORS[dialect]() as sim:
        sim.intercept = lambda request: (Answer(200, answer(sim, hostile_text(request)))
                                         if request.path == sim.generation_path else None)
        route = route_to(sim, dialect)
        outcome = get_dialect(dialect).submit(parse_request({"model": route.upstream_model, "prompt": "p"}), route,
                                              transport.send)
    assert isinstance(outcome, Done), outcome
    prompts = [image.revised_prompt for image in outcome.images if image.revised_prompt is not None]
    assert list(outcome.meta.values()) or prompts
    for text in outcome.meta.values():
        assert_clean(text)
    for text in prompts:  # a revised prompt has a cap of its own (PROMPT_CHARS): rewrites run long
        assert_clean(text, capped=False)
        assert "Invalid request" in text and len(text) <= PROMPT_CHARS


def test_the_api_answer_the_stored_task_and_the_logs_carry_no_key(inline_bus, providers_file, caplog):
    """Route 1 echoes the key in a 429 (the worker logs it and falls back), route 2 in a 400 (the task fails)."""
    caplog.set_level("INFO")
    with OpenAISimulator(api_key=KEY) as busy, OpenAISimulator(api_key=KEY) as refusing:
        busy.intercept = lambda request: Answer(429, openai_error(hostile_text(request)))
        refusing.intercept = lambda request: Answer(400, openai_error(hostile_text(request)))
        providers_file({"providers": {"busy": {"dialect": "openai", "base_url": busy.base_url, "api_key": KEY},
                                      "refusing": {"dialect": "openai", "base_url": refusing.base_url,
                                                   "api_key": KEY}},
                        "models": {"dall-e-3": [{"provider": "busy"}, {"provider": "refusing"}]}})
        body = {"model": "dall-e-3", "prompt": "a fox"}
        sync = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY, body=body)
        queued = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY, body=body,
                      headers={"Prefer": "respond-async"})
        inline_bus.drain()
        task = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{queued.json()['id']}", key=API_KEY)
    assert len(busy.requests) == 2 and len(refusing.requests) == 2  # both requests went both ways
    assert sync.status == 400 and sync.json()["error"]["code"] == "upstream_rejected"
    assert "Invalid request" in sync.json()["error"]["message"]  # the provider's words, without its secrets
    assert_clean(sync.json()["error"]["message"])
    assert task.json()["status"] == "failed"
    assert_clean(task.json()["error"]["message"])
    assert KEY[:12] not in sync.body + task.body and quote(KEY, safe="")[:12] not in sync.body + task.body
    records = [json.dumps(vars(record), default=str) for record in caplog.records]  # message and extras
    assert any("route failed, falling back" in line for line in records)
    assert any("task failed" in line and "Invalid request" in line for line in records)
    for line in records:
        assert KEY[:12] not in line and quote(KEY, safe="")[:12] not in line and "sk-proj" not in line, line


# -- the newer families: each one's own error shapes, with the key in whatever header it sends it ------------------
from tests.simulators.fal_sim import FalSimulator  # noqa: E402
from tests.simulators.gemini_sim import GeminiSimulator  # noqa: E402
from tests.simulators.midjourney_sim import MidjourneySimulator  # noqa: E402
from tests.simulators.replicate_sim import ReplicateSimulator  # noqa: E402

NEWER = {"replicate": (ReplicateSimulator, "black-forest-labs/flux-schnell"), "fal": (FalSimulator, "fal-ai/flux/dev"),
         "midjourney": (MidjourneySimulator, "midjourney"), "gemini": (GeminiSimulator, "gemini-2.5-flash-image")}


def problem(status):
    return lambda text: {"type": "about:blank", "title": text[:80], "detail": text, "status": status}


def google(status):
    return lambda text: {"error": {"code": status, "message": text, "status": "INVALID_ARGUMENT"}}


NEWER_CASES = [
    *[("replicate", "submit", status, problem(status)) for status in (400, 401, 422, 429, 500)],
    ("replicate", "submit", 201, lambda text: {"id": "p1", "status": "failed", "error": text, "output": None}),
    ("replicate", "check", 200, lambda text: {"id": "p1", "status": "failed", "error": "NSFW " + text}),
    *[("replicate", "check", status, problem(status)) for status in (401, 500)],
    *[("fal", "submit", status, lambda text: {"detail": text}) for status in (400, 401, 429, 500)],
    ("fal", "submit", 422, lambda text: {"detail": [{"loc": ["body", "prompt"], "msg": text, "type": "x"}]}),
    *[("midjourney", "submit", 200, lambda text, code=code: {"code": code, "description": text, "result": None})
      for code in (3, 4, 23, 24, 9)],
    *[("midjourney", "submit", status, lambda text: {"code": status, "description": text}) for status in (401, 500)],
    ("midjourney", "check", 200, lambda text: {"id": "t1", "status": "FAILURE", "failReason": text}),
    ("midjourney", "check", 200, lambda text: {"id": "t1", "status": "FAILURE", "failReason": "banned " + text}),
    *[("gemini", "submit", status, google(status)) for status in (400, 403, 429, 500)],
    ("gemini", "submit", 200, lambda text: {"promptFeedback": {"blockReason": "SAFETY", "blockReasonMessage": text}}),
]


@pytest.mark.parametrize("dialect, phase, status, body", NEWER_CASES,
                         ids=[f"{d}-{p}-{s}-{i}" for i, (d, p, s, _) in enumerate(NEWER_CASES)])
def test_no_error_path_of_the_newer_families_echoes_the_key(dialect, phase, status, body):
    cls, model = NEWER[dialect]
    with cls(api_key=KEY) as sim:
        sim.intercept = lambda request: Answer(status, body(hostile_text(request)))
        config = ProviderConfig(dialect=dialect, base_url=sim.base_url, api_key=KEY, timeout_s=10)
        route, impl = Route("hostile", dialect, model, config), get_dialect(dialect)
        if phase == "submit":
            outcome = impl.submit(parse_request({"model": model, "prompt": "p"}), route, transport.send)
        else:
            outcome = impl.check("t1;n=1" if dialect == "midjourney" else "p1", route, transport.send)
        assert sim.requests and any(KEY in value for value in sim.requests[0].headers.values())  # it had the key
    assert isinstance(outcome, Failed), outcome
    assert_clean(outcome.error.message)
    assert_clean(json.dumps(outcome.error.body()), capped=False)
