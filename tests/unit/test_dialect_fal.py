"""The `fal` dialect (fal.ai's queue API): exact requests and parsing, the queue URLs checked against the base
URL, then the contract, the cancel and the fault set through the real handlers against the strict simulator."""

import base64
import io
import json
import time

import pytest
from PIL import Image

import poll_handler
from imagegw import tasks, worker
from imagegw.dialects import Done, Failed, HttpReply, Job, Pending
from imagegw.dialects.fal import FalDialect, image_size, refine_error, request_body
from imagegw.errors import BadRequest, ContentPolicyViolation, RateLimited, UpstreamFailed, from_task_error
from imagegw.provider_config import ProviderConfig
from imagegw.request import parse_request
from imagegw.routing import Route
from imagegw.transport import map_http_error
from tests.apiclient import call, generate, read_task as get_task
from tests.conftest import API_KEY, s3_objects
from tests.simulators.fal_sim import Behaviour, FalSimulator, validation_problem
from tests.simulators.loopback import Answer

DIALECT = FalDialect()
KEY = "fal-unit-key-id:0123456789abcdef0123"
BASE = "https://queue.fal.run"
RID = "764cabcf-b745-4b3e-ae38-000000000001"
QUEUED = {"status": "IN_QUEUE", "request_id": RID, "queue_position": 2,
          "response_url": f"{BASE}/fal-ai/flux/requests/{RID}",
          "status_url": f"{BASE}/fal-ai/flux/requests/{RID}/status",
          "cancel_url": f"{BASE}/fal-ai/flux/requests/{RID}/cancel"}
URLS = {k: QUEUED[k] for k in ("status_url", "response_url", "cancel_url")}


def route(model="fal-ai/flux/dev", base_url=BASE, timeout_s=60.0):
    return Route("fal", "fal", model, ProviderConfig(dialect="fal", base_url=base_url, api_key=KEY,
                                                     timeout_s=timeout_s))


def reply(payload, status=200, headers=None):
    return HttpReply(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode())


def body_for(**request):
    return request_body(parse_request({"prompt": "a fox", **request}))


# -- pure translation: submit ---------------------------------------------------------------------------------

def test_submit_posts_the_model_id_with_a_key_header():
    [call_] = DIALECT.build_submit(parse_request({"prompt": "a fox", "n": 3, "size": "1024x768", "seed": 9,
                                                  "quality": "hd", "style": "vivid", "user": "u"}), route())
    assert (call_.method, call_.url) == ("POST", "https://queue.fal.run/fal-ai/flux/dev")
    assert call_.headers == {"Content-Type": "application/json", "Accept": "application/json",
                             "Authorization": f"Key {KEY}"}
    assert call_.json == {"prompt": "a fox", "image_size": "landscape_4_3", "num_images": 3, "seed": 9,
                          "output_format": "png"}
    assert validation_problem(call_.json) is None


@pytest.mark.parametrize("request_, expected", [
    ({"size": "1024x1024"}, "square_hd"), ({"size": "512x512"}, "square"), ({"size": "768x1024"}, "portrait_4_3"),
    ({"size": "576x1024"}, "portrait_16_9"), ({"size": "1024x768"}, "landscape_4_3"),
    ({"size": "1024x576"}, "landscape_16_9"), ({"size": "1536x1024"}, {"width": 1536, "height": 1024}),
    ({"size": "16:9"}, "landscape_16_9"), ({"size": "2:3"}, "portrait_4_3"), ({"size": "21:9"}, "landscape_16_9"),
    ({"size": "1024x1024", "aspect_ratio": "9:16"}, "portrait_16_9"), ({"size": "auto"}, None), ({}, None),
])
def test_image_size(request_, expected):
    assert image_size(parse_request({"prompt": "p", **request_})) == expected


@pytest.mark.parametrize("request_, expected", [
    ({}, {"prompt": "a fox", "num_images": 1, "output_format": "png"}),
    ({"output_format": "jpeg", "n": 4}, {"prompt": "a fox", "num_images": 4, "output_format": "jpeg"}),
    ({"output_format": "webp"}, {"prompt": "a fox", "num_images": 1}),
])
def test_bodies(request_, expected):
    assert body_for(**request_) == expected and validation_problem(body_for(**request_)) is None


def submit(answer, model="fal-ai/flux/dev"):
    return DIALECT.submit(parse_request({"prompt": "p"}), route(model), lambda c: answer)


def test_the_submit_answer_is_pending_with_its_urls():
    assert submit(reply(QUEUED)) == Pending(RID, 10, meta={**URLS, "queue_position": "2"})


def test_missing_urls_are_built_as_fals_client_builds_them():
    pending = submit(reply({"request_id": RID}), model="fal-ai/flux-pro/v1.1-ultra")
    assert pending.meta == {"status_url": f"{BASE}/fal-ai/flux-pro/requests/{RID}/status",
                            "response_url": f"{BASE}/fal-ai/flux-pro/requests/{RID}",
                            "cancel_url": f"{BASE}/fal-ai/flux-pro/requests/{RID}/cancel"}


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "https://queue.fal.run.evil.example/x",
                                 "http://queue.fal.run/fal-ai/flux/requests/x/status",
                                 "https://queue.fal.run:8443/x", "https://user@queue.fal.run/x", 42])
def test_a_url_off_the_base_url_is_never_followed(url):
    failed = submit(reply({**QUEUED, "status_url": url}))
    assert isinstance(failed, Failed) and failed.error.code == "unsafe_upstream_url" and not failed.error.retriable


def test_an_answer_without_a_request_id():
    failed = submit(reply({"status": "IN_QUEUE"}))
    assert failed.error.code == "bad_upstream_response" and failed.error.retriable


# -- pure translation: checks -----------------------------------------------------------------------------------

def checked(*answers, upstream=None):
    sent, queue = [], list(answers)

    def send(c):
        sent.append((c.method, c.url, c.params, c.headers.get("Authorization")))
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return DIALECT.check(RID, route(), send, upstream=URLS if upstream is None else upstream), sent


RESULT = {"images": [{"url": "https://v3.fal.media/files/a.png", "width": 1024, "height": 768,
                      "content_type": "image/png"}], "seed": 1, "has_nsfw_concepts": [False],
          "timings": {"inference": 1.1}}


@pytest.mark.parametrize("status, expected", [
    ({"status": "IN_QUEUE", "queue_position": 0}, Pending("", 20, {"queue_position": "0"})),
    ({"status": "IN_QUEUE", "queue_position": 1}, Pending("", 15, {"queue_position": "1"})),
    ({"status": "IN_QUEUE", "queue_position": 9}, Pending("", 5, {"queue_position": "9"})),
    ({"status": "IN_PROGRESS", "logs": None}, Pending("", 50)),
])
def test_unfinished_statuses(status, expected):
    outcome, sent = checked(reply(status, 202))
    assert outcome == expected
    assert sent == [("GET", URLS["status_url"], {"logs": "0"}, f"Key {KEY}")]


def test_completed_reads_the_result_at_the_response_url():
    done, sent = checked(reply({"status": "COMPLETED", "logs": None, "metrics": {}}), reply(RESULT))
    assert isinstance(done, Done) and [i.url for i in done.images] == ["https://v3.fal.media/files/a.png"]
    assert done.usage == {"images": 1}
    assert sent[1] == ("GET", URLS["response_url"], None, f"Key {KEY}")


def test_a_check_without_stored_urls_builds_them():
    _, sent = checked(reply({"status": "IN_PROGRESS"}), upstream={"id": RID})
    assert sent[0][1] == f"{BASE}/fal-ai/flux/requests/{RID}/status"


def test_a_stored_url_off_the_base_is_refused_at_check_time_too():
    outcome, sent = checked(upstream={"status_url": "http://169.254.169.254/x"})
    assert outcome.error.code == "unsafe_upstream_url" and sent == []


@pytest.mark.parametrize("error, cls, code", [
    ("Runner disconnected", UpstreamFailed, "upstream_task_failed"),
    ("Image flagged by the content moderation system", ContentPolicyViolation, "content_policy_violation"),
])
def test_completed_with_an_error_fails(error, cls, code):
    failed, sent = checked(reply({"status": "COMPLETED", "error": error, "error_type": "runner_disconnected"}))
    assert type(failed.error) is cls and failed.error.code == code and not failed.error.retriable
    assert len(sent) == 1


def test_nsfw_flagged_images_are_dropped_and_all_flagged_is_a_refusal():
    two = {"images": [{"url": "https://v3.fal.media/a.png"}, {"url": "https://v3.fal.media/b.png"}],
           "has_nsfw_concepts": [True, False]}
    done, _ = checked(reply({"status": "COMPLETED"}), reply(two))
    assert [i.url for i in done.images] == ["https://v3.fal.media/b.png"] and done.usage == {"images": 1}
    refused, _ = checked(reply({"status": "COMPLETED"}), reply({**two, "has_nsfw_concepts": [True, True]}))
    assert isinstance(refused.error, ContentPolicyViolation) and refused.error.status == 400


def test_data_uri_results_and_empty_results():
    raw = b"\x89PNG\r\n\x1a\nxx"
    done, _ = checked(reply({"status": "COMPLETED"}), reply({"images": [
        {"url": "data:image/png;base64," + base64.b64encode(raw).decode()}]}))
    assert done.images[0].data == raw
    empty, _ = checked(reply({"status": "COMPLETED"}), reply({"images": []}))
    assert empty.error.code == "no_image"
    weird, _ = checked(reply({"status": "SOMETHING"}))
    assert weird.error.code == "bad_upstream_response"


def test_cancel_is_a_put_of_the_cancel_url():
    [cancel] = DIALECT.build_cancel(RID, route(), {"id": RID, **URLS})
    assert (cancel.method, cancel.url, cancel.json) == ("PUT", URLS["cancel_url"], None)
    assert cancel.headers["Authorization"] == f"Key {KEY}"


# -- errors --------------------------------------------------------------------------------------------------------

def refined(answer):
    return refine_error(answer, map_http_error(answer))


def test_a_422_names_the_field_from_loc():
    error = refined(reply({"detail": [{"loc": ["body", "num_images"], "msg": "Input should be less than or equal "
                                                                           "to 4", "type": "less_than_equal"}]}, 422))
    assert isinstance(error, BadRequest) and error.param == "n" and error.status == 400
    assert "num_images: Input should be less than or equal to 4" in error.message
    nested = refined(reply({"detail": [{"loc": ["body", "image_size", "width"], "msg": "too big", "type": "x"}]}, 422))
    assert nested.param == "size" and "image_size.width: too big" in nested.message


@pytest.mark.parametrize("status, header, retriable", [
    (500, "false", False), (500, "true", True), (500, None, True), (400, "true", True), (400, None, False),
    (429, "false", True),
])
def test_x_fal_retryable_is_honoured(status, header, retriable):
    error = refined(reply({"detail": "Runner failed"}, status, {"X-Fal-Retryable": header} if header else {}))
    assert error.retriable is retriable
    assert isinstance(error, RateLimited) == (status == 429)


# -- contract and faults through the real handlers ------------------------------------------------------------

GEN = "/v1/images/generations"


@pytest.fixture
def fal(inline_bus, providers_file, loopback_fetch, checks_at_once, simulators):

    def start(behaviour=None, timeout_s=20):
        sim = simulators.start(FalSimulator(api_key=KEY, behaviour=behaviour))
        providers_file({"providers": {"fal": {"dialect": "fal", "base_url": sim.base_url, "api_key": KEY,
                                              "timeout_s": timeout_s},
                                      "dev": {"dialect": "local"}},
                        "models": {"flux-dev": [{"provider": "fal", "model": "fal-ai/flux/dev"}],
                                   "flux-dev-2": [{"provider": "fal", "model": "fal-ai/flux/dev"},
                                                  {"provider": "dev"}]}})
        return sim

    yield start
    inline_bus.drain()


def test_an_async_task_follows_the_queue_with_progress(fal, inline_bus):
    sim = fal(Behaviour(queue_start=1, progress_checks=1))
    accepted = generate({"model": "flux-dev", "prompt": "a fox", "n": 2, "size": "1024x576", "seed": 4},
                        query={"async": "true"})
    inline_bus.drain()
    task = tasks.get(accepted.json()["id"])
    assert task.upstream["status_url"] == f"{sim.base_url}/fal-ai/flux/requests/{task.upstream['id']}/status"
    seen = []
    for _ in range(10):
        view = get_task(accepted.json()["id"]).json()
        seen.append((view["status"], view["progress"]))
        if view["status"] == "succeeded":
            break
    assert seen == [("in_progress", 15), ("in_progress", 20), ("in_progress", 50), ("succeeded", 100)]
    assert [(r.path, r.body) for r in sim.submits] == [
        ("/fal-ai/flux/dev", {"prompt": "a fox", "image_size": "landscape_16_9", "num_images": 2, "seed": 4,
                              "output_format": "png"})]
    assert all(r.query == {"logs": "0"} and r.headers["authorization"] == f"Key {KEY}" for r in sim.status_checks)
    assert len(sim.results) == 1 and len(view["data"]) == 2 and len(s3_objects()) == 2


def test_checks_and_cancel_use_the_urls_the_submit_gave(fal, inline_bus):
    """The task's upstream meta reaches the check and the cancel: URLs unlike the built ones are followed."""
    sim = fal(Behaviour(url_prefix="/q", never_finish=True))
    accepted = generate({"model": "flux-dev", "prompt": "a fox"}, query={"async": "true"})
    inline_bus.drain()
    assert get_task(accepted.json()["id"]).json()["status"] == "in_progress"
    call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{accepted.json()['id']}/cancel", key=API_KEY)
    [job] = sim.queue.values()
    assert [r.path for r in sim.status_checks] == [f"/q/fal-ai/flux/requests/{job.id}/status"]
    assert [r.path for r in sim.cancels] == [f"/q/fal-ai/flux/requests/{job.id}/cancel"]


@pytest.mark.parametrize("request_, param", [({"n": 5}, "n"), ({"size": "4096x4096"}, "size"),
                                             ({"size": "100x100"}, "size")])
def test_what_fal_cannot_do_is_a_400_before_any_upstream_call(fal, request_, param):
    sim = fal()
    answer = generate({"model": "flux-dev", "prompt": "p", **request_})
    assert answer.status == 400 and answer.json()["error"]["param"] == param and sim.requests == []


def test_a_sync_request_gets_its_images(fal):
    sim = fal(Behaviour(queue_start=0, progress_checks=0))
    answer = generate({"model": "flux-dev", "prompt": "a fox", "size": "1536x1024", "response_format": "b64_json"})
    assert answer.status == 200, answer.body
    raw = base64.b64decode(answer.json()["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(raw)).size == (1536, 1024)
    assert sim.submits[0].body["image_size"] == {"width": 1536, "height": 1024}


def test_cancelling_the_task_puts_the_cancel_url(fal, inline_bus):
    sim = fal(Behaviour(never_finish=True))
    accepted = generate({"model": "flux-dev", "prompt": "a fox"}, query={"async": "true"})
    inline_bus.drain()
    cancelled = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{accepted.json()['id']}/cancel",
                     key=API_KEY)
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
    [job] = sim.queue.values()
    assert [(r.method, r.path) for r in sim.cancels] == [("PUT", f"/fal-ai/flux/requests/{job.id}/cancel")]
    assert job.cancelled and sim.cancels[0].headers["authorization"] == f"Key {KEY}"


def test_a_foreign_cancel_url_is_never_sent(fal, inline_bus, monkeypatch):
    sim = fal(Behaviour(never_finish=True))
    accepted = generate({"model": "flux-dev", "prompt": "a fox"}, query={"async": "true"})
    inline_bus.drain()
    task = tasks.get(accepted.json()["id"])
    sent = []
    monkeypatch.setattr(worker.transport, "send", lambda c: sent.append(c))
    tampered = tasks.Task(**{**task.__dict__, "status": "cancelled",
                             "upstream": {**task.upstream, "cancel_url": "http://169.254.169.254/x"}})
    assert worker.cancel_upstream(tampered) is False and sent == [] and sim.cancels == []


def run_to_the_end(inline_bus, fake_clock, task_id, rounds=80):
    answers = []
    for _ in range(rounds):  # bounded: a minute of gateway time per round
        inline_bus.drain()
        seen = get_task(task_id)
        answers.append(seen.body)
        if seen.json()["status"] not in ("in_progress", "queued"):
            break
        fake_clock.advance(60_000)
        worker.sweep()
    return seen.json(), answers


def hang(request):
    if request.method == "POST":
        time.sleep(1.5)
    return None


FAULTS = [  # (id, behaviour, intercept, model, task status, error code)
    ("429 waits for the provider", Behaviour(failures=[429] * 10), None, "flux-dev", "queued", None),
    ("5xx retryable: the next route", Behaviour(failures=[503] * 3, retryable="true"), None, "flux-dev-2",
     "succeeded", None),
    ("5xx not retryable: no fallback", Behaviour(failures=[500] * 3, retryable="false"), None, "flux-dev-2",
     "failed", "upstream_error"),
    ("timeout", Behaviour(), hang, "flux-dev", "failed", "upstream_timeout"),
    ("malformed JSON", Behaviour(), lambda r: Answer(200, b"{\"request_id\": ", {"Content-Type": "application/json"}),
     "flux-dev", "failed", "bad_upstream_response"),
    ("422 at the result", Behaviour(), None, "flux-dev", "failed", "upstream_rejected"),
    ("content policy", Behaviour(nsfw=[True]), None, "flux-dev", "failed", "content_policy_violation"),
    ("foreign queue URLs", Behaviour(foreign_urls=True), None, "flux-dev-2", "failed", "unsafe_upstream_url"),
    ("expired result URL", Behaviour(expire_files=True), None, "flux-dev", "failed", "upstream_error"),
    ("never finishes", Behaviour(never_finish=True), None, "flux-dev", "failed", "upstream_timeout"),
]


@pytest.mark.parametrize("behaviour, intercept, model, status, code", [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
def test_the_fault_set(fal, inline_bus, fake_clock, caplog, monkeypatch, behaviour, intercept, model, status, code):
    caplog.set_level("INFO")
    sim = fal(behaviour, timeout_s=1)
    if intercept is not None:
        sim.intercept = lambda r: intercept(r) if r.method == "POST" else None
    if code == "upstream_rejected":  # a value the queue takes and the model refuses when it runs
        monkeypatch.setattr("imagegw.dialects.fal.image_size", lambda req: {"width": 4096, "height": 4096})
    accepted = generate({"model": model, "prompt": "a lighthouse"}, query={"async": "true"})
    assert accepted.status == 202, accepted.body
    task, answers = run_to_the_end(inline_bus, fake_clock, accepted.json()["id"],
                                   rounds=1 if status == "queued" else 80)
    assert task["status"] == status, task
    if status == "failed":
        assert task["error"]["code"] == code, task["error"]
        assert from_task_error(task["error"]).status != 500 and s3_objects() == []
        if code == "upstream_rejected":
            assert "(field 'size')" in task["error"]["message"] and "image_size.width" in task["error"]["message"]
        if behaviour.foreign_urls:  # never followed, and no fallback after the job was taken
            assert sim.status_checks == [] and sim.results == []
    elif status == "queued":
        assert task["waiting_for"] == "rate_limit"
    else:
        assert task["usage"]["images"] == 1  # from the local route
    logs = [json.dumps(vars(record), default=str) for record in caplog.records]
    for text in [*answers, json.dumps(tasks.get(task["id"]).__dict__, default=str), *logs]:
        assert KEY not in text and KEY[:20] not in text


def test_a_job_without_the_meta_hook_still_checks(fal, inline_bus):
    """A task stored before the queue URLs were kept (no meta): the check builds them from the request id."""
    sim = fal(Behaviour(queue_start=0, progress_checks=0))
    outcome = DIALECT.submit(parse_request({"prompt": "p"}), route(base_url=sim.base_url),
                             worker.transport.send, Job())
    for _ in range(5):  # in the queue, in progress, completed
        done = DIALECT.check(outcome.upstream_id, route(base_url=sim.base_url), worker.transport.send)
        if not isinstance(done, Pending):
            break
    assert isinstance(done, Done) and len(done.images) == 1
    assert {r.path for r in sim.status_checks} == {f"/fal-ai/flux/requests/{outcome.upstream_id}/status"}


def test_no_cancel_is_sent_once_the_upstream_finished_or_without_an_id(fal, inline_bus, monkeypatch):
    fal(Behaviour(never_finish=True))
    accepted = generate({"model": "flux-dev", "prompt": "a fox"}, query={"async": "true"})
    inline_bus.drain()
    task = tasks.get(accepted.json()["id"])
    sent = []
    monkeypatch.setattr(worker.transport, "send", lambda c: sent.append(c))
    cancelled = tasks.Task(**{**task.__dict__, "status": "cancelled"})
    assert worker.cancel_upstream(tasks.Task(**{**cancelled.__dict__, "stage": "generated"})) is False
    assert worker.cancel_upstream(tasks.Task(**{**cancelled.__dict__, "upstream": {}})) is False
    assert worker.cancel_upstream(task) is False  # not cancelled
    assert sent == []
    assert worker.cancel_upstream(cancelled) is True and [c.method for c in sent] == ["PUT"]
