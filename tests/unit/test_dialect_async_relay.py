"""The `async-relay` dialect (the async task relay): pure translation, then the contract through the real
handlers."""

import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import poll_handler
from imagegw import tasks
from imagegw.dialects import Done, Failed, HttpReply, Pending
from imagegw.dialects.async_relay import AsyncRelayDialect, parse_progress, request_body
from imagegw.errors import ContentPolicyViolation, UpstreamFailed
from imagegw.request import parse_request
from imagegw.provider_config import ProviderConfig
from imagegw.routing import Route
from tests.apiclient import FakeContext, call, generate, read_task as get_task
from tests.conftest import API_KEY, NEWER_FIELDS, s3_objects
from tests.simulators.async_relay_sim import ID_SHAPES, AsyncRelaySimulator, Behaviour
from tests.simulators.loopback import png_bytes

GEN = "/v1/images/generations"
DIALECT = AsyncRelayDialect()
SCHEDULE_EVENT = json.loads((Path(__file__).resolve().parents[2] / "events" / "schedule-sweep.json").read_text())


def route(model="dall-e-3", base_url="https://relay.example/", key="sk-r"):
    return Route("r", "async-relay", model, ProviderConfig(dialect="async-relay", base_url=base_url, api_key=key))


def body_for(model="dall-e-3", **request):
    return request_body(parse_request({"prompt": "a cat", **request}), model)


def reply(payload, status=200):
    return HttpReply(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def submit_outcome(payload, n=1):
    return DIALECT.submit(parse_request({"prompt": "p", "n": n}), route(), lambda c: reply(payload))


# -- pure translation: submit --------------------------------------------------------------------------------

def test_submit_is_the_seed_call_with_async_true():
    call_ = DIALECT.build_submit(parse_request({"model": "x", "prompt": "a cat", "size": "1792x1024"}), route())[0]
    assert (call_.method, call_.url, call_.params) == ("POST", "https://relay.example/v1/images/generations",
                                                       {"async": "true"})
    assert call_.headers["Authorization"] == "Bearer sk-r"
    assert call_.json == {"model": "dall-e-3", "size": "1792x1024", "n": 1, "prompt": "a cat"}


@pytest.mark.parametrize("model, request_, expected", [
    ("dall-e-3", {"quality": "hd", "style": "vivid", "user": "u-1", "response_format": "b64_json", "seed": 3},
     {"model": "dall-e-3", "size": "1024x1024", "n": 1, "prompt": "a cat", "quality": "hd", "style": "vivid",
      "user": "u-1"}),
    ("dall-e-2", {"n": 2, "size": "512x512", "quality": "standard", "style": "natural"},
     {"model": "dall-e-2", "size": "512x512", "n": 2, "prompt": "a cat"}),
    ("gpt-image-1", {"size": "auto", "quality": "high", "background": "transparent", "output_format": "webp",
                     "output_compression": 80, "moderation": "low", "style": "vivid", "response_format": "url",
                     **NEWER_FIELDS},
     {"model": "gpt-image-1", "size": "auto", "n": 1, "prompt": "a cat", "quality": "high",
      "background": "transparent", "output_format": "webp", "output_compression": 80, "moderation": "low"}),
    ("dall-e-3", {"size": "16:9"}, {"model": "dall-e-3", "size": "1792x1024", "n": 1, "prompt": "a cat"}),
    ("dall-e-3", {"aspect_ratio": "9:16"}, {"model": "dall-e-3", "size": "1024x1792", "n": 1, "prompt": "a cat"}),
    ("flux-dev", {"size": "16:9", "aspect_ratio": "1:1", "resolution": "2k"},
     {"model": "flux-dev", "size": "2048x1152", "n": 1, "prompt": "a cat"}),
    ("flux-dev", {"aspect_ratio": "3:4", "webhook": "https://hook.example/"},
     {"model": "flux-dev", "size": "768x1024", "n": 1, "prompt": "a cat"}),
])
def test_submit_bodies(model, request_, expected):
    body = body_for(model, **request_)
    assert body == expected
    assert AsyncRelaySimulator.problem(body) is None


@pytest.mark.parametrize("answer", [
    {"task_id": "t-1"},
    {"id": "t-1", "object": "image.task"},
    {"code": "success", "message": "", "data": "t-1"},
    {"data": {"task_id": "t-1", "status": "SUBMITTED"}},
    {"code": 0, "data": {"id": "t-1"}},
])
def test_every_task_id_shape_is_pending(answer):
    assert submit_outcome(answer) == Pending(upstream_id="t-1")


def test_a_numeric_task_id_is_kept_as_text():
    assert submit_outcome({"task_id": 12345}) == Pending(upstream_id="12345")


def test_a_synchronous_answer_is_done():
    png = png_bytes(4, 4)
    outcome = submit_outcome({"created": 1, "data": [{"url": "https://cdn.example/0.png"},
                                                     {"b64_json": base64.b64encode(png).decode()}]}, n=2)
    assert isinstance(outcome, Done) and outcome.images[0].url == "https://cdn.example/0.png"
    assert outcome.images[1].data == png and outcome.usage == {"images": 2}


def test_submit_answers_without_a_task():
    quota = submit_outcome({"code": "insufficient_quota", "message": "quota exhausted", "data": None})
    assert isinstance(quota.error, UpstreamFailed) and quota.error.retriable
    assert "quota exhausted" in quota.error.message
    refused = submit_outcome({"code": "fail", "message": "prompt blocked by the safety system"})
    assert isinstance(refused.error, ContentPolicyViolation)
    empty = submit_outcome({"created": 1, "data": []})
    assert empty.error.code == "bad_upstream_response"


# -- pure translation: check ---------------------------------------------------------------------------------

def test_check_is_a_get_of_the_task():
    check = DIALECT.build_check("img/task 1", route(base_url="https://relay.example/v1"))
    assert (check.method, check.url, check.json) == ("GET", "https://relay.example/v1/images/tasks/img%2Ftask%201",
                                                     None)
    assert check.headers["Authorization"] == "Bearer sk-r" and check.timeout_s <= 30


def envelope(task):
    return {"code": "success", "message": "", "data": task}


RESULT = {"created": 1, "data": [{"url": "https://cdn.example/a.png"}]}


@pytest.mark.parametrize("wrap", [envelope, lambda task: task], ids=["envelope", "flat"])
@pytest.mark.parametrize("task, expected", [
    ({"status": "NOT_START", "progress": ""}, Pending("", 0)),
    ({"status": "SUBMITTED", "progress": "0%"}, Pending("", 0)),
    ({"status": "QUEUED", "progress": "0%"}, Pending("", 0)),
    ({"status": "IN_PROGRESS", "progress": "30%"}, Pending("", 30)),
    ({"status": "in_progress", "progress": 70}, Pending("", 70)),
    ({"status": "InProgress", "progress": "45"}, Pending("", 45)),
    ({"status": "UNKNOWN", "progress": "10%"}, Pending("", 10)),
    ({"status": "something-new"}, Pending("", 0)),
])
def test_unfinished_statuses_are_pending_with_progress(wrap, task, expected):
    assert DIALECT.parse_check(reply(wrap({"task_id": "t-1", **task}))) == expected


@pytest.mark.parametrize("wrap", [envelope, lambda task: task], ids=["envelope", "flat"])
@pytest.mark.parametrize("status", ["SUCCESS", "success", "Success"])
def test_success_is_done_with_the_images(wrap, status):
    done = DIALECT.parse_check(reply(wrap({"task_id": "t-1", "status": status, "progress": "100%",
                                           "data": RESULT})))
    assert isinstance(done, Done) and [i.url for i in done.images] == ["https://cdn.example/a.png"]
    assert done.usage == {"images": 1}


@pytest.mark.parametrize("result", [RESULT, RESULT["data"], json.dumps(RESULT)], ids=["object", "list", "string"])
def test_the_result_may_be_an_object_a_list_or_json_text(result):
    done = DIALECT.parse_check(reply(envelope({"status": "SUCCESS", "data": result})))
    assert done.images[0].url == "https://cdn.example/a.png"


def test_success_with_b64_a_result_url_or_nothing():
    png = png_bytes(4, 4)
    b64 = DIALECT.parse_check(reply(envelope({"status": "SUCCESS", "data": {
        "data": [{"b64_json": base64.b64encode(png).decode()}], "usage": {"total_tokens": 5}}})))
    assert b64.images[0].data == png and b64.usage == {"images": 1, "total_tokens": 5}
    by_url = DIALECT.parse_check(reply({"status": "SUCCESS", "result_url": "https://cdn.example/r.png"}))
    assert by_url.images[0].url == "https://cdn.example/r.png"
    empty = DIALECT.parse_check(reply(envelope({"status": "SUCCESS", "data": None})))
    assert isinstance(empty, Failed) and empty.error.code == "no_image" and not empty.error.retriable


@pytest.mark.parametrize("wrap", [envelope, lambda task: task], ids=["envelope", "flat"])
def test_failure_carries_the_fail_reason(wrap):
    failed = DIALECT.parse_check(reply(wrap({"task_id": "t-1", "status": "FAILURE", "progress": "100%",
                                             "fail_reason": "upstream model overloaded"})))
    assert isinstance(failed, Failed) and isinstance(failed.error, UpstreamFailed)
    assert not failed.error.retriable and failed.error.code == "upstream_task_failed"
    assert failed.error.message == "The provider's task failed: upstream model overloaded"
    assert failed.error.status == 502
    refused = DIALECT.parse_check(reply(wrap({"status": "failure", "fail_reason": "Content policy violation"})))
    assert isinstance(refused.error, ContentPolicyViolation) and refused.error.status == 400


def test_an_envelope_without_a_task():
    lost = DIALECT.parse_check(reply({"code": "task_not_exist", "message": "task_not_exist", "data": None}))
    assert lost.error.code == "upstream_task_lost" and not lost.error.retriable
    busy = DIALECT.parse_check(reply({"code": "error", "message": "database busy"}))
    assert busy.error.code == "bad_upstream_response" and busy.error.retriable


@pytest.mark.parametrize("value, expected", [("45%", 45), (45, 45), ("45", 45), (45.9, 45), (" 45 % ", 45),
                                             ("100%", 100), (150, 100), (-3, 0), ("", 0), (None, 0), ("n/a", 0),
                                             (True, 0), (float("nan"), 0)])
def test_progress_parsing(value, expected):
    assert parse_progress(value) == expected


# -- contract through the real handlers ---------------------------------------------------------------------


@pytest.fixture
def relay(inline_bus, providers_file, loopback_fetch, checks_at_once, simulators):
    """Start a relay simulator routed as `dall-e-3`; checks are due at once (no backoff) for the tests."""

    def start(behaviour=None):
        sim = simulators.start(AsyncRelaySimulator(behaviour=behaviour))
        providers_file({"providers": {"relay": {"dialect": "async-relay", "base_url": sim.base_url + "/v1",
                                                "api_key": sim.api_key}},
                        "models": {"dall-e-3": [{"provider": "relay"}]}})
        return sim

    yield start
    inline_bus.drain()


REQUEST = {"model": "dall-e-3", "prompt": "a lighthouse at dusk", "size": "1792x1024", "quality": "hd",
           "response_format": "b64_json"}
EXPECTED_SUBMIT = {"model": "dall-e-3", "size": "1792x1024", "n": 1, "prompt": "a lighthouse at dusk",
                   "quality": "hd"}


def schedule_sweep():
    """The schedule's invocation of the poll function (EventBridge Scheduled Event)."""
    return poll_handler.lambda_handler(SCHEDULE_EVENT, FakeContext())


class Sweeper:
    """The schedule in a helper thread while a sync request waits: a bounded number of sweeps."""

    def __init__(self, rounds=100, pause_s=0.05):
        self.rounds, self.pause_s = rounds, pause_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for _ in range(self.rounds):
            if self.stop.is_set():
                return
            schedule_sweep()
            time.sleep(self.pause_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def assert_submitted(sim, body=EXPECTED_SUBMIT):
    assert [(r.method, r.path, r.query, r.body) for r in sim.submits] == [
        ("POST", "/v1/images/generations", {"async": "true"}, body)]
    assert sim.submits[0].headers["authorization"] == f"Bearer {sim.api_key}"
    assert all(r.method == "GET" and r.body is None and r.headers["authorization"] == f"Bearer {sim.api_key}"
               for r in sim.checks)


def test_sync_request_completes_as_the_schedule_checks(relay):
    sim = relay()
    with Sweeper():
        answer = generate(REQUEST)
    assert answer.status == 200, answer.body
    assert_submitted(sim)
    # (at least 4: the relay reports SUCCESS on its 4th check; on a loaded machine a check may be retried)
    assert len(sim.checks) >= 4 and {r.path for r in sim.checks} == {"/v1/images/tasks/img_task_0001"}
    data = answer.json()["data"]
    raw = base64.b64decode(data[0]["b64_json"])  # answered from our stored copy of the relay's URL image
    assert Image.open(io.BytesIO(raw)).size == (1792, 1024) and sim.image_downloads == 1
    assert answer.json()["usage"] == {"images": 1}


def test_a_request_with_every_newer_field_reaches_the_relay_without_them(relay):
    sim = relay()
    with Sweeper():
        answer = generate({**REQUEST, "moderation": "low", **NEWER_FIELDS})
    assert answer.status == 200, answer.body
    assert_submitted(sim)


def test_sync_request_past_its_wait_bound_is_finished_by_polling(relay):
    sim = relay(Behaviour(id_shape="code_data", envelope=False, checks_to_finish=40))
    accepted = generate(REQUEST, headers={"Prefer": "wait=1"})
    assert accepted.status == 202 and accepted.headers["location"].startswith("/v1/images/tasks/")
    task = accepted.json()
    # the wait itself checks upstream once a check is due (how many depends on the machine's speed)
    assert task["status"] in ("queued", "in_progress") and len(sim.checks) < 40
    for _ in range(60):
        task = call(poll_handler.lambda_handler, "GET", accepted.headers["location"], key=API_KEY).json()
        if task["status"] == "succeeded":
            break
        time.sleep(0.05)
    assert task["status"] == "succeeded" and len(task["data"]) == 1
    assert_submitted(sim)


@pytest.mark.parametrize("shape", ID_SHAPES)
@pytest.mark.parametrize("envelope_", [True, False], ids=["envelope", "flat"])
def test_async_task_polls_through_with_visible_progress(relay, inline_bus, shape, envelope_):
    sim = relay(Behaviour(id_shape=shape, envelope=envelope_, lower_case_status=not envelope_,
                          progress_as="percent" if envelope_ else "int"))
    accepted = generate({**REQUEST, "n": 2, "size": "1024x1024"}, query={"async": "true"})
    assert accepted.status == 202 and accepted.json()["status"] == "queued"
    inline_bus.drain()  # submitted: the task now waits on the relay
    seen = []
    for _ in range(20):
        task = get_task(accepted.json()["id"]).json()
        seen.append((task["status"], task["progress"]))
        if task["status"] == "succeeded":
            break
        inline_bus.drain()
    assert seen[:3] == [("in_progress", 5), ("in_progress", 30), ("in_progress", 70)]
    assert task["status"] == "succeeded" and len(task["data"]) == 2 and len(sim.checks) == 4
    assert_submitted(sim, {**EXPECTED_SUBMIT, "n": 2, "size": "1024x1024"})
    assert len(s3_objects()) == 2


def test_a_task_nobody_polls_succeeds_through_the_schedule_alone(relay, inline_bus):
    sim = relay(Behaviour(checks_to_finish=5, progress_steps=["30%", "70%", "90%"], result_format="b64_json"))
    accepted = generate(REQUEST, query={"async": "true"})
    inline_bus.drain()
    progress = []
    for _ in range(20):
        counts = schedule_sweep()
        inline_bus.drain()
        current = tasks.get(accepted.json()["id"])
        progress.append(current.progress)
        if current.terminal:
            break
        assert counts["checked"] == 1
    assert current.status == "succeeded" and progress == [5, 30, 70, 90, 100]
    assert len(sim.checks) == 5 and sim.image_downloads == 0  # b64 result: stored by the checking worker
    assert s3_objects() == [f"images/{current.id}/0.png"]
    assert_submitted(sim)


@pytest.mark.parametrize("reason, code, type_", [
    ("upstream model overloaded", "upstream_task_failed", "upstream_error"),
    ("Your prompt violates our content policy", "content_policy_violation", "invalid_request_error"),
])
def test_failure_fails_the_task_with_the_fail_reason(relay, inline_bus, reason, code, type_):
    sim = relay(Behaviour(checks_to_finish=2, fail_reason=reason))
    accepted = generate(REQUEST, query={"async": "true"})
    inline_bus.drain()
    for _ in range(10):
        task = get_task(accepted.json()["id"]).json()
        if task["status"] != "in_progress":
            break
    assert task["status"] == "failed" and len(sim.checks) == 2
    assert task["error"]["code"] == code and task["error"]["type"] == type_ and reason in task["error"]["message"]
    assert "data" not in task and s3_objects() == []


def test_sync_failure_is_a_502_carrying_the_reason(relay):
    relay(Behaviour(checks_to_finish=3, fail_reason="GPU node lost"))
    with Sweeper():
        answer = generate(REQUEST)
    error = answer.json()["error"]
    assert answer.status == 502 and error["type"] == "upstream_error" and "GPU node lost" in error["message"]


def test_a_relay_that_answers_synchronously_is_not_checked(relay):
    sim = relay(Behaviour(sync_anyway=True))
    answer = generate({**REQUEST, "response_format": "url"})
    assert answer.status == 200 and len(answer.json()["data"]) == 1
    assert_submitted(sim)
    assert sim.checks == [] and answer.json()["data"][0]["url"].startswith("http")
