"""The `replicate` dialect (Replicate's predictions API): exact requests and parsing, then the contract and the
fault set through the real handlers against the strict simulator."""

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image

import poll_handler
from imagegw import tasks, worker
from imagegw.dialects import Done, Failed, HttpReply, Pending
from imagegw.dialects.replicate import ReplicateDialect, progress_of, refine_error, retry_hint_s
from imagegw.errors import BadRequest, ContentPolicyViolation, RateLimited, UpstreamFailed, from_task_error
from imagegw.provider_config import ProviderConfig
from imagegw.request import parse_request
from imagegw.routing import Route
from imagegw.transport import map_http_error
from tests.apiclient import FakeContext, call, generate, read_task as get_task
from tests.conftest import API_KEY, s3_objects
from tests.simulators.loopback import Answer
from tests.simulators.replicate_sim import VERSIONS, Behaviour, ReplicateSimulator, flux_size

DIALECT = ReplicateDialect()
KEY = "r8_unitTestToken0123456789abcdef"
SCHNELL = "black-forest-labs/flux-schnell"
PRO = "black-forest-labs/flux-1.1-pro"
VERSION = next(iter(VERSIONS))


def route(model=SCHNELL, base_url="https://api.replicate.com/v1", timeout_s=120.0):
    return Route("rep", "replicate", model, ProviderConfig(dialect="replicate", base_url=base_url, api_key=KEY,
                                                           timeout_s=timeout_s))


def calls_for(model=SCHNELL, **request):
    return DIALECT.build_submit(parse_request({"prompt": "a fox", **request}), route(model))


def reply(payload, status=200, headers=None):
    return HttpReply(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode())


def prediction(status="succeeded", output=("https://replicate.delivery/x/out-0.png",), **extra):
    return {"id": "p1", "status": status, "output": list(output) if output is not None else None, "logs": "",
            "error": None, **extra}


# -- pure translation: submit --------------------------------------------------------------------------------

def test_submit_is_one_model_prediction_with_prefer_wait():
    [call_] = calls_for(size="1792x1024", n=2, seed=5, output_format="jpeg", quality="hd", style="vivid")
    assert (call_.method, call_.url) == ("POST", "https://api.replicate.com/v1/models/black-forest-labs/"
                                                 "flux-schnell/predictions")
    assert call_.headers == {"Content-Type": "application/json", "Accept": "application/json",
                             "Authorization": f"Bearer {KEY}", "Prefer": "wait=60"}
    assert call_.json == {"input": {"prompt": "a fox", "aspect_ratio": "16:9", "num_outputs": 2,
                                    "output_format": "jpg", "seed": 5}}
    assert ReplicateSimulator.invalid(call_.json["input"], SCHNELL) is None


@pytest.mark.parametrize("timeout_s, wait", [(120, 60), (30, 25), (5.5, 1), (2, 1)])
def test_prefer_wait_comes_from_the_calls_budget(timeout_s, wait):
    [call_] = DIALECT.build_submit(parse_request({"prompt": "p"}), route(timeout_s=timeout_s))
    assert call_.headers["Prefer"] == f"wait={wait}" and call_.timeout_s == timeout_s


@pytest.mark.parametrize("request_, expected", [
    ({}, {"prompt": "a fox", "num_outputs": 1, "output_format": "png"}),
    ({"size": "1024x1024"}, {"prompt": "a fox", "aspect_ratio": "1:1", "num_outputs": 1, "output_format": "png"}),
    ({"size": "1024x1792"}, {"prompt": "a fox", "aspect_ratio": "9:16", "num_outputs": 1, "output_format": "png"}),
    ({"size": "1536x1024"}, {"prompt": "a fox", "aspect_ratio": "3:2", "num_outputs": 1, "output_format": "png"}),
    ({"size": "2560x1080"}, {"prompt": "a fox", "aspect_ratio": "21:9", "num_outputs": 1, "output_format": "png"}),
    ({"size": "4:5"}, {"prompt": "a fox", "aspect_ratio": "4:5", "num_outputs": 1, "output_format": "png"}),
    ({"size": "16:9", "aspect_ratio": "9:21"},
     {"prompt": "a fox", "aspect_ratio": "9:21", "num_outputs": 1, "output_format": "png"}),
    ({"size": "auto", "output_format": "webp", "n": 4},
     {"prompt": "a fox", "num_outputs": 4, "output_format": "webp"}),
])
def test_inputs_of_flux_schnell(request_, expected):
    [call_] = calls_for(**request_)
    assert call_.json == {"input": expected}
    assert ReplicateSimulator.invalid(call_.json["input"], SCHNELL) is None


def test_a_model_without_num_outputs_makes_n_predictions_with_distinct_seeds():
    calls = calls_for(PRO, n=3, seed=10, size="768x1024")
    assert [c.json for c in calls] == [{"input": {"prompt": "a fox", "aspect_ratio": "3:4", "output_format": "png",
                                                  "seed": 10 + i}} for i in range(3)]
    unseeded = calls_for(PRO, n=2)
    assert [c.json for c in unseeded] == [{"input": {"prompt": "a fox", "output_format": "png"}}] * 2
    assert all(ReplicateSimulator.invalid(c.json["input"], PRO) is None for c in calls + unseeded)


def test_ultra_has_no_webp_so_the_format_is_dropped():
    [call_] = calls_for("black-forest-labs/flux-1.1-pro-ultra", output_format="webp")
    assert call_.json == {"input": {"prompt": "a fox"}}


@pytest.mark.parametrize("model, version", [(f"{SCHNELL}:{VERSION}", VERSION), (VERSION, VERSION)])
def test_a_versioned_model_goes_to_v1_predictions(model, version):
    calls = calls_for(model, n=2)
    assert {c.url for c in calls} == {"https://api.replicate.com/v1/predictions"}
    if model.startswith(SCHNELL):  # the model is named: its num_outputs is known
        assert [c.json for c in calls] == [{"version": version, "input": {"prompt": "a fox", "num_outputs": 2,
                                                                          "output_format": "png"}}]
    else:  # a bare version id says nothing of the model's inputs: n predictions
        assert [c.json for c in calls] == [{"version": version, "input": {"prompt": "a fox",
                                                                          "output_format": "png"}}] * 2


# -- pure translation: answers ---------------------------------------------------------------------------------

def test_a_fast_prediction_is_done_in_one_call():
    done = DIALECT.submit(parse_request({"prompt": "p", "n": 2}), route(), lambda c: reply(prediction(
        output=["https://replicate.delivery/a.webp", "https://replicate.delivery/b.webp"]), 201))
    assert isinstance(done, Done) and [i.url for i in done.images] == ["https://replicate.delivery/a.webp",
                                                                       "https://replicate.delivery/b.webp"]
    assert done.usage == {"images": 2} and done.upstream_id == "p1"


def test_output_may_be_one_url_or_data_uris():
    one = DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply({**prediction(), "output": " https://r/x.png "})])
    assert one.images[0].url == "https://r/x.png"
    raw = b"\x89PNG\r\n\x1a\nbytes"
    data = DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply(prediction(
        output=[f"data:image/png;base64,{base64.b64encode(raw).decode()}"]))])
    assert data.images[0].data == raw and data.images[0].url is None


def test_unfinished_predictions_are_pending_on_every_id():
    replies = [reply({"id": "a1", "status": "starting", "logs": ""}),
               reply({"id": "b2", "status": "processing", "logs": " 10%|#\n 60%|######\n"})]
    assert DIALECT.parse_submit(parse_request({"prompt": "p", "n": 2}), replies) == Pending("a1,b2", 0)


@pytest.mark.parametrize("logs, status, expected", [
    ("", "starting", 0), (None, "processing", 50),
    ("Using seed: 1\n 25%|##  | 1/4\n 75%|###  | 3/4\n", "processing", 75),
    ("loading 100%", "processing", 100), ("no numbers", "processing", 50),
])
def test_progress(logs, status, expected):
    assert progress_of({"status": status, "logs": logs}) == expected


@pytest.mark.parametrize("error, status, cls, code", [
    ("CUDA out of memory", "failed", UpstreamFailed, "upstream_task_failed"),
    ("NSFW content detected. Try running it again, or try a different prompt.", "failed", ContentPolicyViolation,
     "content_policy_violation"),
    (None, "canceled", UpstreamFailed, "upstream_task_canceled"),
    ("timed out", "aborted", UpstreamFailed, "upstream_task_failed"),
])
def test_failed_predictions(error, status, cls, code):
    failed = DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply(prediction(status, None, error=error))])
    assert isinstance(failed, Failed) and type(failed.error) is cls and failed.error.code == code
    assert not failed.error.retriable
    if error:
        assert error[:20] in failed.error.message


def test_a_failure_text_is_scrubbed():
    outcome = DIALECT.submit(parse_request({"prompt": "p"}), route(), lambda c: reply(prediction(
        "failed", None, error=f"auth header was Bearer {KEY} and it failed")))
    assert KEY not in outcome.error.message and "[redacted]" in outcome.error.message


def test_succeeded_without_output_is_no_image():
    failed = DIALECT.parse_submit(parse_request({"prompt": "p"}), [reply(prediction(output=None))])
    assert failed.error.code == "no_image"


def test_check_gets_each_prediction_and_keeps_the_submitted_id():
    seen = []

    def send(c):
        seen.append((c.method, c.url, c.json, c.headers.get("Authorization")))
        pid = c.url.rsplit("/", 1)[1]
        return reply({"id": pid, "status": "succeeded", "output": [f"https://r/{pid}.png"]})

    done = DIALECT.check("a1,b2", route(), send)
    assert sorted(seen) == [("GET", f"https://api.replicate.com/v1/predictions/{pid}", None, f"Bearer {KEY}")
                            for pid in ("a1", "b2")]
    assert [i.url for i in done.images] == ["https://r/a1.png", "https://r/b2.png"] and done.upstream_id is None
    pending = DIALECT.check("a1", route(), lambda c: reply({"id": "a1", "status": "processing", "logs": "40%"}))
    assert pending == Pending("", 40)


def test_cancel_posts_to_each_prediction():
    calls = DIALECT.build_cancel("a1,b2", route(), {"id": "a1,b2"})
    assert [(c.method, c.url, c.json) for c in calls] == [
        ("POST", "https://api.replicate.com/v1/predictions/a1/cancel", None),
        ("POST", "https://api.replicate.com/v1/predictions/b2/cancel", None)]
    assert calls[0].headers["Authorization"] == f"Bearer {KEY}"


# -- errors ----------------------------------------------------------------------------------------------------

def problem(status, title, detail, **extra):
    return reply({"title": title, "detail": detail, "status": status, **extra}, status,
                 {"Content-Type": "application/problem+json"})


def refined(answer):
    return refine_error(answer, map_http_error(answer))


def test_a_422_names_the_field():
    error = refined(problem(422, "Input validation failed", "- input.aspect_ratio: aspect_ratio must be one of",
                            invalid_fields=[{"type": "enum", "field": "input.aspect_ratio",
                                             "description": "must be one of"}]))
    assert isinstance(error, BadRequest) and error.param == "aspect_ratio" and error.status == 400
    assert "aspect_ratio must be one of" in error.message and not error.retriable
    by_detail = refined(problem(422, "Input validation failed", "- input.num_outputs: Must be less than or equal to 4"))
    assert by_detail.param == "n"
    neither = refined(problem(422, "Invalid version", "The specified version does not exist"))
    assert neither.param is None and "version does not exist" in neither.message


def test_a_429_wait_comes_from_its_detail():
    error = refined(problem(429, "Request was throttled.", "Request was throttled. Your rate limit resets in ~30s."))
    assert isinstance(error, RateLimited) and error.retry_after_s == 30 and error.retriable
    with_header = problem(429, "Throttled", "resets in ~30s")
    with_header.headers["Retry-After"] = "4"
    assert refined(with_header).retry_after_s == 4  # a Retry-After header wins


@pytest.mark.parametrize("text, expected", [("resets in ~7s", 7), ("resets in ~1.5s.", 1.5), ("resets in 2m", 120),
                                            ("resets in ~500ms", 0.5), ("throttled", None)])
def test_retry_hints(text, expected):
    assert retry_hint_s(text) == expected


# -- contract and faults through the real handlers -------------------------------------------------------------

GEN = "/v1/images/generations"


@pytest.fixture
def replicate(inline_bus, providers_file, loopback_fetch, checks_at_once, simulators):
    """Start a simulator routed as `flux-schnell` (and `flux-pro`, whose second route is `local`)."""

    def start(behaviour=None, timeout_s=30):
        sim = simulators.start(ReplicateSimulator(api_key=KEY, behaviour=behaviour))
        providers_file({"providers": {"rep": {"dialect": "replicate", "base_url": sim.base_url + "/v1",
                                              "api_key": KEY, "timeout_s": timeout_s},
                                      "dev": {"dialect": "local"}},
                        "models": {"flux-schnell": [{"provider": "rep", "model": SCHNELL}],
                                   "flux-pro": [{"provider": "rep", "model": PRO}, {"provider": "dev"}]}})
        return sim

    yield start
    inline_bus.drain()


class Sweeper:
    """The schedule in a helper thread while a sync request waits: a bounded number of sweeps."""

    def __init__(self, rounds=200, pause_s=0.05):
        self.rounds, self.pause_s = rounds, pause_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        for _ in range(self.rounds):
            if self.stop.is_set():
                return
            poll_handler.lambda_handler(event, FakeContext())
            time.sleep(self.pause_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def sizes(answer):
    return [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size for item in answer.json()["data"]]


def test_a_fast_model_answers_a_sync_request_in_one_call(replicate):
    sim = replicate(Behaviour(fast=True))
    answer = generate({"model": "flux-schnell", "prompt": "a lighthouse", "n": 2, "size": "1792x1024",
                       "response_format": "b64_json"})
    assert answer.status == 200, answer.body
    assert [(r.method, r.path, r.body) for r in sim.creates] == [
        ("POST", "/v1/models/black-forest-labs/flux-schnell/predictions",
         {"input": {"prompt": "a lighthouse", "aspect_ratio": "16:9", "num_outputs": 2, "output_format": "png"}})]
    assert sim.creates[0].headers["prefer"] == "wait=25" and sim.checks == []
    assert sizes(answer) == [flux_size("16:9")] * 2 and sim.image_downloads == 2
    assert answer.json()["usage"] == {"images": 2}


@pytest.mark.parametrize("request_, param", [({"n": 5}, "n"), ({"aspect_ratio": "7:5"}, "aspect_ratio"),
                                             ({"size": "5:3"}, "size"), ({"size": "8192x8192"}, "size")])
def test_what_the_model_cannot_do_is_a_400_before_any_upstream_call(replicate, request_, param):
    sim = replicate()
    answer = generate({"model": "flux-schnell", "prompt": "p", **request_})
    assert answer.status == 400 and answer.json()["error"]["param"] == param and sim.requests == []


def test_a_slow_model_is_checked_until_it_succeeds(replicate):
    sim = replicate(Behaviour(checks_to_finish=3))
    with Sweeper():
        answer = generate({"model": "flux-schnell", "prompt": "a lighthouse", "response_format": "b64_json"})
    assert answer.status == 200, answer.body
    assert len(sim.creates) == 1 and len(sim.checks) >= 3
    assert {r.path for r in sim.checks} == {"/v1/predictions/rp0001q7xk2"}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" and r.body is None for r in sim.checks)
    assert sizes(answer) == [flux_size("1:1")]


def test_an_async_task_shows_progress_and_stores_at_once_on_the_check_path(replicate, inline_bus):
    sim = replicate(Behaviour(checks_to_finish=3, progress_steps=[25, 75]))
    accepted = generate({"model": "flux-pro", "prompt": "a fox", "n": 2, "seed": 3}, query={"async": "true"})
    assert accepted.status == 202
    inline_bus.drain()
    seen = []
    for _ in range(10):
        task = get_task(accepted.json()["id"]).json()
        seen.append((task["status"], task["progress"]))
        if task["status"] == "succeeded":
            break
    assert seen == [("in_progress", 25), ("in_progress", 75), ("succeeded", 100)]
    assert sorted(r.body["input"]["seed"] for r in sim.creates) == [3, 4]  # two predictions (in parallel), two seeds
    assert len(task["data"]) == 2 and sim.image_downloads == 2  # stored by the read that saw it finish
    assert len(s3_objects()) == 2


def test_data_uri_outputs_are_stored_without_a_download(replicate, inline_bus):
    sim = replicate(Behaviour(fast=True, output_shape="data"))
    answer = generate({"model": "flux-schnell", "prompt": "p", "output_format": "webp", "response_format": "b64_json"})
    assert answer.status == 200 and sim.image_downloads == 0
    assert base64.b64decode(answer.json()["data"][0]["b64_json"])[8:12] == b"WEBP"


def test_cancelling_the_task_cancels_the_prediction(replicate, inline_bus):
    sim = replicate(Behaviour(never_finish=True))
    accepted = generate({"model": "flux-pro", "prompt": "a fox", "n": 2}, query={"async": "true"})
    inline_bus.drain()
    ids = sorted(sim.predictions)
    assert sorted(tasks.get(accepted.json()["id"]).upstream["id"].split(",")) == ids
    cancelled = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{accepted.json()['id']}/cancel",
                     key=API_KEY)
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
    assert sorted(r.path for r in sim.cancels) == [f"/v1/predictions/{i}/cancel" for i in ids]
    assert {p.status for p in sim.predictions.values()} == {"canceled"}


def test_a_failed_upstream_cancel_never_fails_the_clients_cancel(replicate, inline_bus):
    sim = replicate(Behaviour(never_finish=True))
    accepted = generate({"model": "flux-schnell", "prompt": "a fox"}, query={"async": "true"})
    inline_bus.drain()
    sim.intercept = lambda r: Answer(500, {"title": "boom", "status": 500}) if r.path.endswith("/cancel") else None
    cancelled = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{accepted.json()['id']}/cancel",
                     key=API_KEY)
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled" and len(sim.cancels) >= 1


def test_a_task_cancelled_before_it_reached_upstream_sends_no_cancel(replicate, quiet_bus):
    sim = replicate()
    accepted = generate({"model": "flux-schnell", "prompt": "a fox"}, query={"async": "true"})
    cancelled = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{accepted.json()['id']}/cancel",
                     key=API_KEY)
    assert cancelled.status == 200 and sim.requests == []


def test_a_422_is_a_400_naming_the_field_and_nothing_else_is_tried(replicate, monkeypatch):
    sim = replicate(Behaviour(fast=True))
    # a mapping the simulator refuses (as Replicate would) reaches the client as a 400 naming the field
    monkeypatch.setattr("imagegw.dialects.replicate.requested_ratio", lambda req, ratios: "7:3")
    answer = generate({"model": "flux-pro", "prompt": "p", "size": "1024x1024"})
    assert answer.status == 400, answer.body
    error = answer.json()["error"]  # (a task's stored error keeps code and message: the message names the field)
    assert error["code"] == "upstream_rejected" and "(field 'aspect_ratio')" in error["message"]
    assert "input.aspect_ratio: aspect_ratio must be one of" in error["message"]
    assert len(sim.creates) == 1  # no fallback to the local route: the request itself was refused


def test_a_429_with_a_reset_hint_makes_the_task_wait_that_long(replicate, inline_bus, fake_clock):
    sim = replicate(Behaviour(rate_limit_first=10, resets_in_s=7))
    accepted = generate({"model": "flux-schnell", "prompt": "p"}, query={"async": "true"})
    inline_bus.drain()
    task = tasks.get(accepted.json()["id"])
    assert task.status == "queued" and task.waiting_for == "rate_limit" and len(sim.creates) == 3  # 1 + 2 retries
    assert 7000 <= task.next_check_at - fake_clock() <= 7300


SCHEDULE = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}


def run_to_the_end(inline_bus, fake_clock, task_id, rounds=80, step_ms=60_000):
    answers = []
    for _ in range(rounds):  # bounded: a minute of gateway time per round
        inline_bus.drain()
        seen = get_task(task_id)
        answers.append(seen.body)
        if seen.json()["status"] not in ("in_progress", "queued"):
            break
        fake_clock.advance(step_ms)
        worker.sweep()
    return seen.json(), answers


def hang(request):
    if request.method == "POST":
        time.sleep(1.5)
    return None


FAULTS = [  # (id, behaviour, intercept of the create, model, task status, error code)
    ("5xx then the next route", Behaviour(fast=True),
     lambda r: Answer(503, {"title": "Service Unavailable", "detail": "try later", "status": 503}),
     "flux-pro", "succeeded", None),
    ("5xx on the only route", Behaviour(fast=True),
     lambda r: Answer(503, {"title": "Service Unavailable", "detail": "try later", "status": 503}),
     "flux-schnell", "failed", "upstream_error"),
    ("timeout", Behaviour(fast=True), hang, "flux-schnell", "failed", "upstream_timeout"),
    ("malformed JSON", Behaviour(fast=True),
     lambda r: Answer(201, b"{\"id\": \"x\", \"status\": ", {"Content-Type": "application/json"}),
     "flux-schnell", "failed", "bad_upstream_response"),
    ("content policy", Behaviour(fast=True, error="NSFW content detected. Try a different prompt."), None,
     "flux-pro", "failed", "content_policy_violation"),
    ("expired output URL", Behaviour(fast=True, expire_files=True), None, "flux-schnell", "failed", "upstream_error"),
    ("never finishes", Behaviour(never_finish=True), None, "flux-schnell", "failed", "upstream_timeout"),
]


@pytest.mark.parametrize("behaviour, intercept, model, status, code", [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
def test_the_fault_set(replicate, inline_bus, fake_clock, caplog, behaviour, intercept, model, status, code):
    caplog.set_level("INFO")
    sim = replicate(behaviour, timeout_s=1)
    if intercept is not None:
        sim.intercept = lambda r: intercept(r) if r.method == "POST" else None
    accepted = generate({"model": model, "prompt": "a lighthouse"}, query={"async": "true"})
    assert accepted.status == 202, accepted.body
    task, answers = run_to_the_end(inline_bus, fake_clock, accepted.json()["id"])
    assert task["status"] == status, task
    if status == "failed":
        assert from_task_error(task["error"]).status != 500
        assert task["error"]["code"] == code, task["error"]
        if behaviour.expire_files:  # the output's 404 fails the task (after the fetch stage's retries)
            assert "HTTP 404" in task["error"]["message"] and sim.image_downloads == 0
        assert s3_objects() == []
    else:
        assert task["usage"]["images"] == 1 and len(sim.creates) >= 1  # the local route served it
    logs = [json.dumps(vars(record), default=str) for record in caplog.records]
    for text in [*answers, json.dumps(tasks.get(task["id"]).__dict__, default=str), *logs]:
        assert KEY not in text and KEY[3:15] not in text


def test_a_task_cancelled_while_its_prediction_was_being_created_cancels_it_once_created(replicate, inline_bus):
    sim = replicate(Behaviour(never_finish=True))
    accepted = generate({"model": "flux-schnell", "prompt": "a fox"}, query={"async": "true"})
    task_id = accepted.json()["id"]

    def cancel_first(request):  # the client's cancel lands while the create call is in flight
        if request.method == "POST" and not request.path.endswith("/cancel"):
            assert call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{task_id}/cancel",
                        key=API_KEY).status == 200
        return None

    sim.intercept = cancel_first
    inline_bus.drain()
    [pid] = sim.predictions
    assert tasks.get(task_id).status == "cancelled"
    assert [r.path for r in sim.cancels] == [f"/v1/predictions/{pid}/cancel"]
    assert sim.predictions[pid].status == "canceled" and sim.checks == []
