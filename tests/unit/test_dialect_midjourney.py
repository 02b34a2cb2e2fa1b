"""The `midjourney` dialect: the exact midjourney-proxy requests, every answer it reads, the tiles the worker cuts
from the grid, and the fault set through the real handlers against the simulator."""

import base64
import io
import json
import os
import time

import boto3

import pytest
from PIL import Image

from imagegw import tasks, tiles, worker
from imagegw.capabilities import validate_for_model
from imagegw.dialects import Done, Failed, HttpCall, HttpReply, Pending, get_dialect
from imagegw.dialects.midjourney import aspect, prompt_for, split_id
from imagegw.errors import BadRequest, ContentPolicyViolation, RateLimited, UpstreamFailed
from imagegw.provider_config import ProviderConfig, problems
from imagegw.request import parse_request
from imagegw.routing import Route
from tests.apiclient import generate, read_task as get_task
from tests.conftest import s3_objects
from tests.simulators.fault_sim import bomb_png
from tests.simulators.loopback import Answer
from tests.simulators.midjourney_sim import QUADRANT_COLOURS, Behaviour, MidjourneySimulator, grid_png

MJ = get_dialect("midjourney")
GEN = "/v1/images/generations"


def route(base_url="https://relay.example", key="sk-mj", auth="bearer", model="midjourney"):
    return Route("mj", "midjourney", model, ProviderConfig(dialect="midjourney", base_url=base_url, api_key=key,
                                                           auth=auth, timeout_s=60))


def req(**fields):
    return parse_request({"model": "midjourney", "prompt": "a lighthouse at dusk", **fields})


def reply(payload, status=200):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return HttpReply(status, {"content-type": "application/json"}, body)


# -- the exact requests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("base_url, expected", [
    ("https://relay.example", "https://relay.example/mj/submit/imagine"),
    ("https://relay.example/", "https://relay.example/mj/submit/imagine"),
    ("https://relay.example/v1", "https://relay.example/mj/submit/imagine"),
    ("http://proxy.example:8080/mj", "http://proxy.example:8080/mj/submit/imagine"),
    ("http://proxy.example:8080/mj/", "http://proxy.example:8080/mj/submit/imagine"),
])
def test_submit_is_a_post_of_the_prompt_under_mj(base_url, expected):
    [call_] = MJ.build_submit(req(size="1792x1024"), route(base_url))
    assert call_ == HttpCall("POST", expected, json={"prompt": "a lighthouse at dusk --ar 7:4"}, timeout_s=60,
                             headers={"Content-Type": "application/json", "Accept": "application/json",
                                      "Authorization": "Bearer sk-mj"})


def test_midjourney_proxy_itself_takes_the_mj_api_secret_header():
    [call_] = MJ.build_submit(req(), route(auth="mj-api-secret"))
    assert call_.headers == {"Content-Type": "application/json", "Accept": "application/json", "mj-api-secret": "sk-mj"}
    check = MJ.build_check("1700000000001000;n=4", route("http://p.example/mj", auth="mj-api-secret"))
    assert (check.method, check.url, check.json) == ("GET", "http://p.example/mj/task/1700000000001000/fetch", None)
    assert check.headers == {"Accept": "application/json", "mj-api-secret": "sk-mj"} and check.timeout_s == 30


@pytest.mark.parametrize("fields, expected", [
    ({"size": "1792x1024"}, "7:4"), ({"size": "1024x1792"}, "4:7"), ({"size": "1024x1024"}, "1:1"),
    ({"size": "1536x1024"}, "3:2"), ({"size": "16:9"}, "16:9"), ({"size": "19.5:9"}, "13:6"),
    ({"size": "1000x333"}, "1000:333"), ({"aspect_ratio": "21:9"}, "7:3"),
    ({"size": "1024x1024", "aspect_ratio": "4:3"}, "4:3"), ({"size": "auto"}, None), ({}, None),
])
def test_size_and_aspect_ratio_become_a_reduced_ratio(fields, expected):
    assert aspect(req(**fields)) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("a fox", "a fox --ar 7:4"),
    ("  a fox  ", "a fox --ar 7:4"),
    ("a fox --ar 2:3", "a fox --ar 2:3"),
    ("a fox --aspect 2:3 --v 6", "a fox --aspect 2:3 --v 6"),
    ("a fox --AR 2:3", "a fox --AR 2:3"),
    ("a fox --artistic", "a fox --artistic --ar 7:4"),
])
def test_a_ratio_already_in_the_prompt_wins(prompt, expected):
    assert prompt_for(req(prompt=prompt, size="1792x1024")) == expected


def test_every_other_field_is_dropped():
    full = req(n=4, size="1024x1024", quality="hd", style="vivid", response_format="b64_json", user="u", seed=7,
               output_format="jpeg", background="transparent", moderation="low", resolution="2k")
    [call_] = MJ.build_submit(full, route())
    assert call_.json == {"prompt": "a lighthouse at dusk --ar 1:1"} and call_.params is None


def test_more_than_four_images_is_refused_before_any_call():
    with pytest.raises(BadRequest) as raised:
        MJ.build_submit(req(n=5), route())
    assert raised.value.param == "n"
    with pytest.raises(BadRequest) as raised:
        validate_for_model(req(n=5), "midjourney", "midjourney")
    assert raised.value.param == "n"
    with pytest.raises(BadRequest) as raised:  # any model name on a midjourney route: the dialect's table
        validate_for_model(parse_request({"model": "mj", "prompt": "p" * 5981}), "niji-6", "midjourney")
    assert raised.value.param == "prompt"


# -- the submit answer ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [1, 22, 21, "1"])
def test_submitted_queued_or_existing_is_pending_on_the_task_id(code):
    answer = {"code": code, "description": "提交成功", "result": "1320098173412546", "properties": {}}
    outcome = MJ.parse_submit(req(n=3), [reply(answer)])
    assert outcome == Pending(upstream_id="1320098173412546;n=3",
                              meta={"task_id": "1320098173412546", "submit_code": str(code)})
    assert split_id(outcome.upstream_id) == ("1320098173412546", 3) and split_id("42") == ("42", 1)


def test_a_numeric_task_id_is_kept_as_text():
    assert MJ.parse_submit(req(), [reply({"code": 1, "result": 17})]).upstream_id == "17;n=1"


@pytest.mark.parametrize("answer, error, code, retriable", [
    ({"code": 24, "description": "可能包含敏感词", "result": None,
      "properties": {"promptEn": "nude", "bannedWord": "nude"}}, ContentPolicyViolation, "content_policy_violation",
     False),
    ({"code": 23, "description": "队列已满，请稍后尝试", "result": None}, RateLimited, "rate_limit_exceeded", True),
    ({"code": 4, "description": "base64格式错误"}, BadRequest, "upstream_rejected", False),
    ({"code": 3, "description": "无可用的账号实例"}, UpstreamFailed, "upstream_unavailable", True),
    ({"code": 9, "description": "提交失败，系统异常"}, UpstreamFailed, "upstream_unavailable", True),
    ({"code": 99, "description": "something odd"}, UpstreamFailed, "upstream_rejected_task", True),
    ({"code": 9, "description": "Banned prompt detected"}, ContentPolicyViolation, "content_policy_violation", False),
    ({"code": 1, "result": None}, UpstreamFailed, "bad_upstream_response", True),
    ({"description": "no code at all"}, UpstreamFailed, "upstream_rejected_task", True),
    (["not", "an", "object"], UpstreamFailed, "bad_upstream_response", True),
])
def test_a_submit_the_proxy_did_not_take_fails_clearly(answer, error, code, retriable):
    sent = []
    outcome = MJ.submit(req(), route(), lambda c: sent.append(c) or reply(answer))
    assert isinstance(outcome, Failed) and type(outcome.error) is error, outcome
    assert outcome.error.code == code and outcome.error.retriable is retriable and len(sent) == 1
    if isinstance(answer, dict) and answer.get("description"):
        assert answer["description"] in outcome.error.message
    if answer.get("properties") if isinstance(answer, dict) else None:
        assert "banned word: nude" in outcome.error.message


def test_submit_text_is_scrubbed_of_the_key():
    key = "zz9/Plural+Z-alpha=ROUTEKEY"
    outcome = MJ.submit(req(), route(key=key), lambda c: reply({"code": 9, "description": f"bad secret {key} x"}))
    assert isinstance(outcome, Failed) and key not in outcome.error.message and "[redacted]" in outcome.error.message


# -- the check answer -----------------------------------------------------------------------------------------

def task_answer(status, **fields):
    return {"id": "1320098173412546", "action": "IMAGINE", "status": status, "prompt": "p", "promptEn": "p",
            "description": "/imagine p", "submitTime": 1, "startTime": 2, "finishTime": None, "imageUrl": None,
            "progress": None, "failReason": None, "properties": {}, "buttons": [], **fields}


def check(upstream_id, answer):
    return MJ.check(upstream_id, route(), lambda c: reply(answer))


@pytest.mark.parametrize("status, progress, expected", [
    ("NOT_START", None, 0), ("SUBMITTED", "0%", 0), ("IN_PROGRESS", "45%", 45), ("IN_PROGRESS", "100%", 100),
    ("SOMETHING_NEW", "12%", 12),
])
def test_unfinished_statuses_are_pending_with_progress(status, progress, expected):
    assert check("1;n=1", task_answer(status, progress=progress)) == Pending(upstream_id="", progress=expected)


GRID_URL = "https://cdn.example/attachments/grid_0.png?ex=1"


@pytest.mark.parametrize("n, tiles_", [(1, [None]), (2, [(0, 2, 2), (1, 2, 2)]),
                                       (3, [(0, 2, 2), (1, 2, 2), (2, 2, 2)]),
                                       (4, [(0, 2, 2), (1, 2, 2), (2, 2, 2), (3, 2, 2)])])
def test_success_is_the_grid_or_its_first_n_quadrants(n, tiles_):
    outcome = check(f"1320098173412546;n={n}", task_answer("SUCCESS", progress="100%", imageUrl=GRID_URL))
    assert isinstance(outcome, Done) and outcome.usage == {"images": n}
    assert [(image.url, image.tile) for image in outcome.images] == [(GRID_URL, tile) for tile in tiles_]


@pytest.mark.parametrize("answer, code, error", [
    (task_answer("FAILURE", failReason="[Invalid parameter] Unrecognized parameter(s): `--foo`", progress=""),
     "upstream_task_failed", UpstreamFailed),
    (task_answer("FAILURE", failReason="Banned prompt detected: gore"), "content_policy_violation",
     ContentPolicyViolation),
    (task_answer("CANCEL"), "upstream_task_cancelled", UpstreamFailed),
    (task_answer("MODAL"), "upstream_task_needs_action", UpstreamFailed),
    (task_answer("SUCCESS", imageUrl=""), "no_image", UpstreamFailed),
    (b"", "upstream_task_lost", UpstreamFailed),
    (b"null", "upstream_task_lost", UpstreamFailed),
])
def test_an_ended_task_that_has_no_images_fails_for_good(answer, code, error):
    outcome = check("1;n=4", answer)
    assert isinstance(outcome, Failed) and type(outcome.error) is error and outcome.error.code == code
    assert outcome.error.retriable is False
    if isinstance(answer, dict) and answer["failReason"]:
        assert answer["failReason"] in outcome.error.message


def test_a_check_answer_that_is_not_a_task_is_retried_at_the_next_check():
    outcome = check("1;n=1", b"<html>bad gateway</html>")
    assert isinstance(outcome, Failed) and outcome.error.code == "bad_upstream_response" and outcome.error.retriable


# -- provider configuration -----------------------------------------------------------------------------------

def config(**provider):
    return {"providers": {"p": {"dialect": "midjourney", "base_url": "http://proxy.example/mj", "api_key": "k",
                                **provider}}, "models": {"midjourney": [{"provider": "p"}]}}


def test_auth_is_checked_with_the_configuration():
    assert problems(config()) == [] and problems(config(auth="mj-api-secret")) == []
    assert problems(config(auth="basic")) == ["providers.p.auth: input should be 'bearer' or 'mj-api-secret'"]
    other = {"providers": {"o": {"dialect": "openai", "base_url": "https://o.example", "api_key": "k",
                                 "auth": "mj-api-secret"}}, "models": {"m": [{"provider": "o"}]}}
    assert problems(other) == ["providers.o.auth: dialect openai sends its key as bearer, not mj-api-secret"]


# -- tiles ----------------------------------------------------------------------------------------------------

def colours(data):
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.format, {colour for _, colour in image.convert("RGB").getcolors(1 << 24)}


def test_the_four_quadrants_are_the_right_pixels_and_sizes():
    parts = tiles.cut(grid_png(70, 40), "image/png", [(i, 2, 2) for i in range(4)])
    assert [colours(part) for part in parts] == [((70, 40), "PNG", {colour}) for colour in QUADRANT_COLOURS]


def test_odd_sized_cells_cover_the_image_exactly():
    assert [tiles.box(i, 2, 2, 101, 51) for i in range(4)] == [(0, 0, 50, 25), (50, 0, 101, 25),
                                                                (0, 25, 50, 51), (50, 25, 101, 51)]
    with pytest.raises(ValueError):
        tiles.box(4, 2, 2, 100, 100)


def test_a_jpeg_grid_gives_jpeg_tiles_and_garbage_is_not_an_image():
    out = io.BytesIO()
    Image.open(io.BytesIO(grid_png(32, 32))).save(out, "JPEG", quality=95)
    [part] = tiles.cut(out.getvalue(), "image/jpeg", [(3, 2, 2)])
    with Image.open(io.BytesIO(part)) as image:  # lossy: its centre is the quadrant's colour, near enough
        assert (image.size, image.format) == ((32, 32), "JPEG")
        centre = image.convert("RGB").getpixel((16, 16))
    assert all(abs(a - b) < 12 for a, b in zip(centre, QUADRANT_COLOURS[3], strict=True)), centre
    with pytest.raises(UpstreamFailed) as raised:
        tiles.cut(b"\x89PNG\r\n\x1a\nnot really", "image/png", [(0, 2, 2)])
    assert raised.value.code == "not_an_image" and not raised.value.retriable


# -- through the real handlers --------------------------------------------------------------------------------

@pytest.fixture
def mj(inline_bus, providers_file, loopback_fetch, checks_at_once, simulators):
    """Start midjourney simulators routed (in order) as `midjourney`; checks are due at once."""

    def start(*behaviours, base_suffix="/mj", model="midjourney"):
        sims = [simulators.start(MidjourneySimulator(api_key=f"mj-secret-{i}", behaviour=b))
                for i, b in enumerate(behaviours or [Behaviour()])]
        providers_file({"providers": {f"mj{i}": {"dialect": "midjourney", "base_url": sim.base_url + base_suffix,
                                                 "api_key": sim.api_key, "auth": sim.behaviour.auth, "timeout_s": 2}
                                      for i, sim in enumerate(sims)},
                        "models": {model: [{"provider": f"mj{i}"} for i in range(len(sims))]}})
        return sims if len(sims) > 1 else sims[0]

    yield start
    inline_bus.drain()


def finish(task_id, inline_bus, rounds=20):
    """Poll the task (each read checks upstream) until it ends; the statuses and progress seen."""
    seen = []
    for _ in range(rounds):
        inline_bus.drain()
        task = get_task(task_id).json()
        seen.append((task["status"], task["progress"]))
        if task["status"] in ("succeeded", "failed", "cancelled"):
            return task, seen
    return task, seen


def stored_colours(answer):
    """(size, colours) of each image of a sync answer (b64_json) or of a task (read from the bucket)."""
    if "id" not in answer:
        return [colours(base64.b64decode(item["b64_json"]))[::2] for item in answer["data"]]
    bucket = os.environ["IMAGE_BUCKET"]
    return [colours(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())[::2]
            for key in s3_objects(f"images/{answer['id']}/")]


@pytest.mark.parametrize("auth, suffix", [("mj-api-secret", "/mj"), ("bearer", "")])
def test_n4_stores_the_four_quadrants_of_one_grid_download(mj, inline_bus, auth, suffix):
    sim = mj(Behaviour(auth=auth), base_suffix=suffix)
    accepted = generate({"model": "midjourney", "prompt": "a red fox", "n": 4, "size": "1792x1024",
                         "quality": "hd", "response_format": "b64_json"}, query={"async": "true"})
    assert accepted.status == 202, accepted.body
    task, seen = finish(accepted.json()["id"], inline_bus)
    assert task["status"] == "succeeded", task
    assert seen == [("in_progress", 5), ("in_progress", 25), ("in_progress", 50), ("in_progress", 90),
                    ("succeeded", 100)]
    # cells of 7:4 with a long side of 96: 96x55, each quadrant its own colour
    assert stored_colours(task) == [((96, 55), {colour}) for colour in QUADRANT_COLOURS]
    assert task["usage"] == {"images": 4} and sim.grid_downloads == 1
    assert s3_objects() == [f"images/{task['id']}/{i}.png" for i in range(4)]
    [submit] = sim.submits
    assert submit.body == {"prompt": "a red fox --ar 7:4"}
    header = ("mj-api-secret", sim.api_key) if auth == "mj-api-secret" else ("authorization", f"Bearer {sim.api_key}")
    assert all(r.headers.get(header[0]) == header[1] for r in sim.submits + sim.checks)
    assert {r.path for r in sim.checks} == {f"/mj/task/{submit_id(sim)}/fetch"} and len(sim.checks) == 4


def submit_id(sim):
    return next(iter(sim.tasks))


def test_n1_stores_the_grid_and_a_sync_request_gets_it(mj):
    sim = mj(Behaviour(checks_to_finish=2))
    answer = generate({"model": "midjourney", "prompt": "a blue whale", "response_format": "b64_json"},
                      headers={"Prefer": "wait=20"})
    assert answer.status == 200, answer.body
    [item] = answer.json()["data"]
    assert colours(base64.b64decode(item["b64_json"]))[::2] == ((192, 192), set(QUADRANT_COLOURS))
    assert sim.submits[0].body == {"prompt": "a blue whale"} and sim.grid_downloads == 1


def test_a_plain_sync_request_for_two_quadrants_is_answered_from_the_fetch_stage(mj):
    mj(Behaviour(checks_to_finish=2))
    started = time.monotonic()
    answer = generate({"model": "midjourney", "prompt": "a green field", "n": 2, "size": "1:1",
                       "response_format": "b64_json"})
    assert answer.status == 200, answer.body
    assert stored_colours(answer.json()) == [((96, 96), {QUADRANT_COLOURS[0]}), ((96, 96), {QUADRANT_COLOURS[1]})]
    assert time.monotonic() - started < 30


def test_an_existing_task_is_followed_not_submitted_again(mj, inline_bus):
    sim = mj(Behaviour(existing=True, checks_to_finish=2))
    first = generate({"model": "midjourney", "prompt": "a cat"}, query={"async": "true"}).json()["id"]
    inline_bus.drain()  # the first is submitted before the second comes (the bus runs them in parallel otherwise)
    second = generate({"model": "midjourney", "prompt": "a cat"}, query={"async": "true"}).json()["id"]
    inline_bus.drain()
    assert tasks.get(second).upstream["submit_code"] == "21"
    assert tasks.get(second).upstream["id"].split(";")[0] == tasks.get(first).upstream["id"].split(";")[0]
    assert len(sim.tasks) == 1


# -- the fault set --------------------------------------------------------------------------------------------

def run_to_end(inline_bus, fake_clock, task_id, rounds=80):
    """Drive the task with the gateway clock moved a minute per round: reads, the sweep, the bus."""
    for _ in range(rounds):
        inline_bus.drain()
        task = get_task(task_id).json()
        if task["status"] in ("succeeded", "failed", "cancelled"):
            return task
        fake_clock.advance(60_000)
        worker.sweep()
    return task


def always(status, body, headers=None):
    return lambda request: Answer(status, body, headers) if request.path.startswith("/mj/") else None


def hang(request):
    if request.path.startswith("/mj/"):
        time.sleep(3)
    return None


FAULTS = [  # (id, first simulator's intercept or behaviour, the task's end, whether the second route served)
    ("429 with Retry-After", always(429, {"error": "Too Many Requests"}, {"Retry-After": "1"}), "succeeded", True),
    ("5xx", always(502, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"}), "succeeded", True),
    ("timeout", hang, "succeeded", True),
    ("malformed JSON", always(200, b"{\"code\": 1, \"result\": ", {"Content-Type": "application/json"}),
     "succeeded", True),
    ("no account instance (code 3)", Behaviour(submit_code=3), "succeeded", True),
    ("queue full (code 23)", Behaviour(queue_full=True), "succeeded", True),
    ("banned prompt (code 24)", "nude", "content_policy_violation", False),
    ("task FAILURE", Behaviour(fail_reason="[Internal Server Error] Discord gateway lost"), "upstream_task_failed",
     False),
    ("task banned upstream", Behaviour(fail_reason="Banned prompt detected"), "content_policy_violation", False),
    ("task CANCEL", Behaviour(end_status="CANCEL"), "upstream_task_cancelled", False),
    ("task MODAL", Behaviour(end_status="MODAL"), "upstream_task_needs_action", False),
    ("expired grid URL", Behaviour(expired_urls=True), "upstream_error", False),
    ("a task that never finishes", Behaviour(never_finish=True), "upstream_timeout", False),
]


@pytest.mark.parametrize("fault, end, second_served", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_each_fault_ends_the_task_clearly_falling_back_only_when_retriable(
        mj, inline_bus, fake_clock, monkeypatch, caplog, fault, end, second_served):
    monkeypatch.setenv("TASK_DEADLINE_S", "1800")
    caplog.set_level("INFO")
    first = fault if isinstance(fault, Behaviour) else Behaviour()
    bad, good = mj(first, Behaviour(checks_to_finish=2))
    if callable(fault):
        bad.intercept = fault
    prompt = "a nude statue" if fault == "nude" else "a quiet harbour"
    accepted = generate({"model": "midjourney", "prompt": prompt, "n": 4}, query={"async": "true"})
    task = run_to_end(inline_bus, fake_clock, accepted.json()["id"])
    if end == "succeeded":
        assert task["status"] == "succeeded" and len(task["data"]) == 4, task
    else:
        assert task["status"] == "failed" and task["error"]["code"] == end, task
        assert s3_objects() == []
    assert bad.submits and bool(good.requests) is second_served
    if fault == "nude":
        assert "nude" in task["error"]["message"] and task["error"]["type"] == "invalid_request_error"
    if end == "upstream_error":
        assert "404" in task["error"]["message"]
    stored = json.dumps(tasks.get(task["id"]).__dict__, default=str)
    logs = [json.dumps(vars(record), default=str) for record in caplog.records]
    for text in [stored, json.dumps(task), *logs]:
        assert bad.api_key not in text and good.api_key not in text


def test_a_single_route_answering_429_waits_then_ends_rate_limited(mj, inline_bus, fake_clock, monkeypatch):
    monkeypatch.setenv("TASK_DEADLINE_S", "240")
    sim = mj()
    sim.intercept = always(429, {"error": "Too Many Requests"}, {"Retry-After": "1"})
    task_id = generate({"model": "midjourney", "prompt": "a quiet harbour"}, query={"async": "true"}).json()["id"]
    inline_bus.drain()
    waiting = get_task(task_id).json()
    assert waiting["status"] == "queued" and waiting["waiting_for"] == "rate_limit", waiting
    task = run_to_end(inline_bus, fake_clock, task_id, rounds=10)
    assert task["status"] == "failed" and task["error"]["code"] == "upstream_rate_limited", task
    assert len(sim.submits) >= 2 and sim.checks == [] and s3_objects() == []


@pytest.mark.parametrize("grid, code", [
    (Answer(200, bomb_png(), {"Content-Type": "image/png"}), "upstream_invalid_image"),
    (Answer(200, b"<html>not here</html>", {"Content-Type": "text/html"}), "not_an_image"),
], ids=["decompression bomb", "not an image"])
def test_a_grid_the_gateway_will_not_decode_fails_before_any_tile_is_stored(mj, inline_bus, grid, code):
    sim = mj(Behaviour(checks_to_finish=1))
    sim.intercept = lambda request: grid if request.path.startswith("/grid/") else None
    accepted = generate({"model": "midjourney", "prompt": "a harbour", "n": 4}, query={"async": "true"})
    task, _ = finish(accepted.json()["id"], inline_bus)
    assert task["status"] == "failed" and task["error"]["code"] == code, task
    assert s3_objects() == [] and len([r for r in sim.requests if r.path.startswith("/grid/")]) == 1
