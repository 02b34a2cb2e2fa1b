"""An adversary's table: hostile bodies, headers, paths, query strings and methods, through the real handlers.

Every request here must be refused with an OpenAI-shaped 4xx (never a 5xx, never a silent success) whose body
is valid UTF-8 JSON naming the parameter where there is one, with no control or surrogate characters echoed
back, and no task may exist because of it.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

import fetch_handler
import poll_handler
import submit_handler
from imagegw import table, tasks
from tests.apiclient import FakeContext, api_event, call
from tests.conftest import API_KEY

GEN = "/v1/images/generations"
TASKS = "/v1/images/tasks"
ANY = object()  # the param is not checked (the case has no single right name for it)
UNSENT = object()  # the default header is left out

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
MULTIPART = ("--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na lighthouse\r\n"
             "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-1\r\n--XyZ--\r\n")
DIGITS = "9" * 5000  # more than Python's int() accepts (4300)
CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the answer it must get. `body`: str is sent as text, bytes base64-encoded
    (API Gateway's binary mode); `b64` overrides the isBase64Encoded flag. `{done}` in the path stands for
    the id of a task that succeeded with one image."""

    name: str
    method: str
    path: str
    body: str | bytes | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    query: dict[str, str] | None = None
    status: int = 400
    param: Any = None
    code: str | None = None
    b64: bool | None = None


def gen(name: str, body: Any, **kwargs: Any) -> Hostile:
    return Hostile(name, "POST", GEN, body if isinstance(body, (str, bytes)) else json.dumps(body), **kwargs)


def ok_body(**fields: Any) -> str:
    return json.dumps({"model": "gpt-image-1", "prompt": "a lighthouse", **fields})


BODIES = [
    # JSON that breaks the parser
    gen("array-nested-20000-deep", '{"prompt": "x", "user": ' + "[" * 20000 + "]" * 20000 + "}",
        code="invalid_json"),
    gen("object-nested-10000-deep", '{"a":' * 10000 + "1" + "}" * 10000, code="invalid_json"),
    gen("nested-40-deep-in-a-field", '{"prompt": "x", "user": ' + "[" * 40 + "]" * 40 + "}", param="user",
        code="invalid_json"),
    gen("not-utf8-bytes", b'{"prompt": "caf\xe9 au lait"}', code="invalid_json"),
    gen("binary-garbage", bytes(range(256)), code="invalid_json"),
    gen("not-base64-although-flagged", "!!! not base64 !!!", b64=True, code="invalid_json"),
    gen("seed-with-5000-digits", '{"prompt": "x", "seed": ' + DIGITS + "}", param="seed", code="invalid_value"),
    gen("negative-seed-with-5000-digits", '{"prompt": "x", "seed": -' + DIGITS + "}", param="seed",
        code="invalid_value"),
    gen("n-with-5000-digits", '{"prompt": "x", "n": ' + DIGITS + "}", param="n", code="invalid_value"),
    gen("prompt-a-5000-digit-number", '{"prompt": ' + DIGITS + "}", param="prompt", code="invalid_value"),
    gen("seed-1e400", '{"prompt": "x", "seed": 1e400}', param="seed", code="invalid_value"),
    gen("seed-NaN", '{"prompt": "x", "seed": NaN}', code="invalid_json"),
    gen("n-Infinity", '{"prompt": "x", "n": -Infinity}', code="invalid_json"),
    gen("lone-high-surrogate-in-prompt", '{"prompt": "\\ud800"}', param="prompt", code="invalid_value"),
    gen("lone-low-surrogate-in-prompt", '{"prompt": "a\\udfffb"}', param="prompt", code="invalid_value"),
    gen("lone-surrogate-in-model", '{"prompt": "x", "model": "gpt-image-1\\udc00"}', param="model",
        code="invalid_value"),
    gen("lone-surrogate-in-a-key", '{"prompt": "x", "\\ud800": 1}', param=ANY, code="invalid_value"),
    gen("lone-surrogate-deep-in-a-field", '{"prompt": "x", "user": {"a": ["ok", "\\udbff"]}}', param="user.a.1",
        code="invalid_value"),
    gen("lone-surrogate-sent-raw-as-text", '{"prompt": "\ud800"}', param="prompt", code="invalid_value"),
    gen("lone-surrogate-raw-outside-a-string", '{"prompt": "x"}\udc00', code="invalid_json"),
    # not a single JSON object
    gen("array-of-two-requests", '[{"prompt": "a"}, {"prompt": "b"}]', code="invalid_json"),
    gen("array-of-one-request", '[{"prompt": "a"}]', code="invalid_json"),
    gen("a-string", '"a lighthouse"', code="invalid_json"),
    gen("a-number", "42", code="invalid_json"),
    gen("null", "null", code="invalid_json"),
    gen("true", "true", code="invalid_json"),
    gen("whitespace", "   \n", code="invalid_json"),
    gen("two-objects", '{"prompt": "a"} {"prompt": "b"}', code="invalid_json"),
    gen("truncated", '{"prompt": "a', code="invalid_json"),
    gen("empty-object", "{}", param="prompt", code="missing_required_parameter"),
    # media types that are not JSON, on the JSON route
    gen("text-plain", ok_body(), headers={"Content-Type": "text/plain"}, param="Content-Type",
        code="unsupported_content_type"),
    gen("text-plain-utf8", ok_body(), headers={"Content-Type": "text/plain;charset=UTF-8"}, param="Content-Type",
        code="unsupported_content_type"),
    gen("image-png", PNG, headers={"Content-Type": "image/png"}, param="Content-Type",
        code="unsupported_content_type"),
    gen("multipart-form", MULTIPART, headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        param="Content-Type", code="unsupported_content_type"),
    gen("multipart-form-base64", MULTIPART.encode(), headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        param="Content-Type", code="unsupported_content_type"),
    gen("form-urlencoded", "prompt=a+lighthouse&model=gpt-image-1",
        headers={"Content-Type": "application/x-www-form-urlencoded"}, param="Content-Type",
        code="unsupported_content_type"),
    gen("json-in-latin-1", ok_body(), headers={"Content-Type": "application/json; charset=latin-1"},
        param="Content-Type", code="unsupported_content_type"),
    gen("application-jsonp", ok_body(), headers={"Content-Type": "application/jsonp"}, param="Content-Type",
        code="unsupported_content_type"),
    gen("content-type-garbage", ok_body(), headers={"Content-Type": ";;;\x00"}, param="Content-Type",
        code="unsupported_content_type"),
    # values the model cannot serve (the wildcard route's model takes any size within bounds)
    gen("ratio-size-with-21-digits", {"model": "some-model", "prompt": "x", "size": "100000000000000000000:1"},
        param="size", code="invalid_size"),
    gen("aspect-ratio-1:0", {"model": "some-model", "prompt": "x", "aspect_ratio": "1:0"}, param="aspect_ratio",
        code="invalid_value"),
    gen("aspect-ratio-0:0", {"model": "some-model", "prompt": "x", "aspect_ratio": "0:0"}, param="aspect_ratio",
        code="invalid_value"),
    gen("aspect-ratio-22:1", {"model": "some-model", "prompt": "x", "aspect_ratio": "22:1"}, param="aspect_ratio",
        code="invalid_value"),
    gen("aspect-ratio-0.0001:1", {"model": "some-model", "prompt": "x", "aspect_ratio": "0.0001:1"},
        param="aspect_ratio", code="invalid_value"),
    gen("aspect-ratio-1e400:1", {"model": "some-model", "prompt": "x", "aspect_ratio": "1e400:1"},
        param="aspect_ratio", code="invalid_value"),
    gen("aspect-ratio-1.5.5:1", {"model": "some-model", "prompt": "x", "aspect_ratio": "1.5.5:1"},
        param="aspect_ratio", code="invalid_value"),
    gen("aspect-ratio-1:0-for-jimeng", {"model": "jimeng-4.0", "prompt": "x", "aspect_ratio": "1:0"},
        param="aspect_ratio", code="invalid_value"),
    gen("size-1:22", {"model": "some-model", "prompt": "x", "size": "1:22"}, param="size", code="invalid_size"),
    gen("size-0:1", {"model": "some-model", "prompt": "x", "size": "0:1"}, param="size", code="invalid_size"),
    gen("size-0x0", {"model": "some-model", "prompt": "x", "size": "0x0"}, param="size", code="invalid_size"),
    gen("size-99999x99999", {"model": "some-model", "prompt": "x", "size": "99999x99999"}, param="size",
        code="invalid_size"),
    gen("size-99999x99999-for-grok", {"model": "grok-2-image", "prompt": "x", "size": "99999x99999"},
        param="size", code="invalid_size"),
    gen("size-4096x64", {"model": "some-model", "prompt": "x", "size": "4096x64"}, param="size",
        code="invalid_size"),
    gen("size-64x4096-for-jimeng", {"model": "jimeng-4.0", "prompt": "x", "size": "64x4096"}, param="size",
        code="invalid_size"),
    gen("size-1024x1024x1", {"model": "some-model", "prompt": "x", "size": "1024x1024x1"}, param="size",
        code="invalid_size"),
    gen("size-negative", {"model": "some-model", "prompt": "x", "size": "-1024x1024"}, param="size",
        code="invalid_size"),
    # hostile values echoed in the error message
    gen("model-of-10k-chars", {"prompt": "x", "model": "m" * 10_000}, param="model", code="invalid_value"),
    gen("model-with-terminal-escapes", {"prompt": "x", "model": "gpt\x1b[2J\x00"}, param="model",
        code="invalid_value"),
    gen("unknown-key-of-10k-chars", {"prompt": "x", "k" * 10_000: 1}, param=ANY, code="unknown_parameter"),
    gen("unknown-key-with-terminal-escapes", {"prompt": "x", "\x1b[31mred\x00": 1}, param=ANY,
        code="unknown_parameter"),
    gen("prompt-an-object", {"prompt": {"text": "x"}}, param="prompt", code="invalid_value"),
    gen("prompt-a-list", {"prompt": ["a", "b"]}, param="prompt", code="invalid_value"),
    gen("n-true", {"prompt": "x", "n": True}, param="n", code="invalid_value"),
    gen("user-with-control-characters-too-long", {"prompt": "x", "user": "\x07" * 300}, param="user",
        code="invalid_value"),
    gen("oversized-body", {"prompt": "x" * 70_000}, status=413, code="payload_too_large"),
]

QUERIES_AND_HEADERS = [
    gen("async-maybe", ok_body(), query={"async": "maybe"}, param="async", code="invalid_value"),
    gen("async-5000-chars", ok_body(), query={"async": "t" * 5000}, param="async", code="invalid_value"),
    gen("async-lone-surrogate", ok_body(), query={"async": "true\ud800"}, param="async", code="invalid_value"),
    gen("webhook-lone-surrogate", ok_body(), query={"webhook": "https://example.com/\udc00"}, param="webhook",
        code="invalid_value"),
    gen("idempotency-key-lone-surrogate", ok_body(), headers={"Idempotency-Key": "k\ud800"},
        param="Idempotency-Key", code="invalid_value"),
    gen("webhook-javascript", ok_body(), query={"webhook": "javascript:alert(1)"}, param="webhook",
        code="invalid_value"),
    gen("webhook-3000-chars", ok_body(), query={"webhook": "https://" + "h" * 3000}, param="webhook",
        code="invalid_value"),
    gen("idempotency-key-10kb", ok_body(), headers={"Idempotency-Key": "k" * 10_240}, param="Idempotency-Key",
        code="invalid_value"),
    gen("idempotency-key-control-chars", ok_body(), headers={"Idempotency-Key": "abc\x00\r\ndef"},
        param="Idempotency-Key", code="invalid_value"),
    gen("idempotency-key-non-ascii", ok_body(), headers={"Idempotency-Key": "ключ"}, param="Idempotency-Key",
        code="invalid_value"),
    Hostile("list-limit-abc", "GET", TASKS, query={"limit": "abc"}, param="limit", code="invalid_value"),
    Hostile("list-limit-minus-1", "GET", TASKS, query={"limit": "-1"}, param="limit", code="invalid_value"),
    Hostile("list-limit-0", "GET", TASKS, query={"limit": "0"}, param="limit", code="invalid_value"),
    Hostile("list-limit-101", "GET", TASKS, query={"limit": "101"}, param="limit", code="invalid_value"),
    Hostile("list-limit-20-digits", "GET", TASKS, query={"limit": "99999999999999999999"}, param="limit",
            code="invalid_value"),
    Hostile("list-limit-5000-digits", "GET", TASKS, query={"limit": DIGITS}, param="limit", code="invalid_value"),
    Hostile("list-limit-1.5", "GET", TASKS, query={"limit": "1.5"}, param="limit", code="invalid_value"),
    Hostile("list-after-2000-chars", "GET", TASKS, query={"after": "a" * 2000}, param="after",
            code="invalid_value"),
    Hostile("list-after-1mb", "GET", TASKS, query={"after": "imgtask_" + "f" * 1_048_576}, param="after",
            code="invalid_value"),
    Hostile("list-after-control-chars", "GET", TASKS, query={"after": "imgtask_\x00\x1b"}, param="after",
            code="invalid_value"),
    Hostile("list-after-lone-surrogate", "GET", TASKS, query={"after": "imgtask_\udfff"}, param="after",
            code="invalid_value"),
    Hostile("list-limit-lone-surrogate", "GET", TASKS, query={"limit": "1\ud800"}, param="limit",
            code="invalid_value"),
    Hostile("list-after-unknown-task", "GET", TASKS, query={"after": "imgtask_0000"}, param="after"),
]

AUTH = [
    gen(f"authorization-{name}", "{not even json", headers={"Authorization": value}, status=401,
        code=code)
    for name, value, code in [
        ("missing", UNSENT, "missing_api_key"),
        ("empty", "", "missing_api_key"),
        ("bearer-alone", "Bearer", "invalid_api_key"),
        ("bearer-space", "Bearer   ", "invalid_api_key"),
        ("basic", "Basic c2stdGVzdDo=", "invalid_api_key"),
        ("token-10kb", "Bearer " + "a" * 10_240, "invalid_api_key"),
        ("non-ascii", "Bearer sk-tést", "invalid_api_key"),
        ("lone-surrogate", "Bearer sk-test\udc80", "invalid_api_key"),
        ("control-chars", "Bearer sk-test\x00", "invalid_api_key"),
    ]
]

LONG_ID = "imgtask_" + "a" * 2000
PATHS_AND_METHODS = [
    Hostile("get-task-id-2000-chars", "GET", f"{TASKS}/{LONG_ID}", param="task_id", code="invalid_value"),
    Hostile("cancel-task-id-2000-chars", "POST", f"{TASKS}/{LONG_ID}/cancel", param="task_id",
            code="invalid_value"),
    Hostile("image-of-task-id-2000-chars", "GET", f"{TASKS}/{LONG_ID}/images/0", param="task_id",
            code="invalid_value"),
    Hostile("get-task-id-odd-characters", "GET", f"{TASKS}/imgtask_$(rm -rf)&x=<1>", param="task_id",
            code="invalid_value"),
    Hostile("get-task-id-superscript", "GET", f"{TASKS}/imgtask_²", param="task_id", code="invalid_value"),
    Hostile("get-task-id-nul", "GET", f"{TASKS}/imgtask_\x00", status=404, code="unknown_route"),
    Hostile("get-task-id-lone-surrogate", "GET", f"{TASKS}/imgtask_\ud800", status=404, code="unknown_route"),
    Hostile("get-task-missing", "GET", f"{TASKS}/imgtask_0000", status=404, param="id", code="not_found"),
    Hostile("cancel-missing-with-a-png-body", "POST", f"{TASKS}/imgtask_0000/cancel", body=PNG,
            headers={"Content-Type": "image/png"}, status=404, param="id", code="not_found"),
    Hostile("image-index-superscript-two", "GET", f"{TASKS}/{{done}}/images/²", param="index",
            code="invalid_value"),
    Hostile("image-index-arabic-indic-one", "GET", f"{TASKS}/{{done}}/images/١", param="index",
            code="invalid_value"),
    Hostile("image-index-minus-1", "GET", f"{TASKS}/{{done}}/images/-1", param="index", code="invalid_value"),
    Hostile("image-index-01", "GET", f"{TASKS}/{{done}}/images/01", param="index", code="invalid_value"),
    Hostile("image-index-20-digits", "GET", f"{TASKS}/{{done}}/images/99999999999999999999", param="index",
            code="invalid_value"),
    Hostile("image-index-5000-digits", "GET", f"{TASKS}/{{done}}/images/{DIGITS}", param="index",
            code="invalid_value"),
    Hostile("image-index-past-the-end", "GET", f"{TASKS}/{{done}}/images/1", status=404, param="index"),
    Hostile("image-index-superscript-of-missing-task", "GET", f"{TASKS}/imgtask_0000/images/²", param="index",
            code="invalid_value"),
    Hostile("put-generations", "PUT", GEN, ok_body(), status=404, code="unknown_route"),
    Hostile("delete-generations", "DELETE", GEN, status=404, code="unknown_route"),
    Hostile("get-generations", "GET", GEN, status=404, code="unknown_route"),
    Hostile("text-plain-with-trailing-slashes", "POST", GEN + "//", ok_body(), headers={"Content-Type": "text/plain"},
            param="Content-Type", code="unsupported_content_type"),
    Hostile("seed-with-5000-digits-with-trailing-slash", "POST", GEN + "/", '{"prompt": "x", "seed": ' + DIGITS + "}",
            param="seed", code="invalid_value"),
    Hostile("path-of-10k-chars", "GET", "/v1/" + "a" * 10_240, status=404, code="unknown_route"),
    Hostile("path-with-terminal-escapes", "GET", "/v1/\x1b[2J\x00", status=404, code="unknown_route"),
    Hostile("delete-task", "DELETE", f"{TASKS}/imgtask_0000", status=404, code="unknown_route"),
]

CASES = BODIES + QUERIES_AND_HEADERS + AUTH + PATHS_AND_METHODS


def handler_for(path: str):
    if re.search(r"/tasks/[^/]*/images/", path):
        return fetch_handler.lambda_handler
    return poll_handler.lambda_handler if path.startswith(TASKS) else submit_handler.lambda_handler


def hostile_event(case: Hostile, path: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if case.body is not None:
        headers["Content-Type"] = "application/json"
    headers.update(case.headers)
    headers = {k: v for k, v in headers.items() if v is not UNSENT}
    event = api_event(case.method, path, headers=headers, query=case.query)
    if isinstance(case.body, bytes):
        event.update(body=base64.b64encode(case.body).decode(), isBase64Encoded=True)
    elif isinstance(case.body, str):
        event.update(body=case.body, isBase64Encoded=False)
    if case.b64 is not None:
        event["isBase64Encoded"] = case.b64
    return event


def task_count() -> int:
    return table.task_table().scan(Select="COUNT")["Count"]


@pytest.fixture
def done_task(inline_bus) -> str:
    reply = call(submit_handler.lambda_handler, "POST", GEN, key=API_KEY, query={"async": "true"},
                 body={"model": "gpt-image-1", "prompt": "a lighthouse"})
    assert reply.status == 202, reply.body
    inline_bus.drain()
    return reply.json()["id"]


def assert_openai_refusal(out: dict[str, Any], case: Hostile) -> dict[str, Any]:
    assert out["statusCode"] < 500, f"5xx for {case.name}: {out.get('body', '')[:300]!r}"
    assert out["statusCode"] == case.status, out.get("body", "")[:300]
    raw = out["body"].encode("utf-8")  # a lone surrogate anywhere in the answer fails here
    json.dumps(out).encode("utf-8")  # what the Lambda runtime hands API Gateway
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in ("invalid_request_error", "authentication_error", "not_found_error")
    assert isinstance(error["message"], str) and 0 < len(error["message"]) <= 600, error["message"][:300]
    for text in (error["message"], error["param"] or ""):
        assert not CONTROL_OR_SURROGATE.search(text), text[:300]
    assert error["param"] is None or len(error["param"]) <= 128
    if case.param is not ANY:
        assert error["param"] == case.param, error
    if case.code is not None:
        assert error["code"] == case.code, error
    return error


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_request_is_an_openai_shaped_4xx_and_creates_no_task(case, inline_bus, request):
    path = case.path.replace("{done}", request.getfixturevalue("done_task")) if "{done}" in case.path \
        else case.path
    before = task_count()
    published = len(inline_bus.published)
    out = handler_for(path)(hostile_event(case, path), FakeContext())
    assert_openai_refusal(out, case)
    assert task_count() == before and len(inline_bus.published) == published


@pytest.mark.parametrize("headers, body, query", [
    ({"Content-Type": "application/json; charset=utf-8"}, ok_body(), None),
    ({"Content-Type": "Application/JSON; Charset=\"UTF-8\""}, ok_body(), None),
    ({"Content-Type": UNSENT}, ok_body(), None),  # curl users forget it
    ({}, '{"prompt": "first", "prompt": "a lighthouse", "model": "gpt-image-1"}', None),  # the last one wins
    ({}, "\ufeff" + ok_body(), None),  # a UTF-8 byte order mark, as some Windows tools send
    ({}, ok_body().encode(), None),  # binary mode (base64) with UTF-8 inside
    ({}, ok_body(prompt="a lighthouse \ud83d\udca1"), None),  # a surrogate pair is one character: fine
    ({}, ok_body(model="some-model", size="21:9"), None),
    ({}, ok_body(model="some-model", aspect_ratio="1:21"), None),
    ({}, ok_body(seed=4294967295), None),
    ({"Prefer": "respond-async, wait=99999999999999999999"}, ok_body(), {"async": " FALSE "}),
], ids=["charset-utf-8", "mixed-case", "no-content-type", "duplicated-keys", "bom", "base64", "emoji",
        "size-21:9", "aspect-ratio-1:21", "largest-seed", "absurd-prefer-wait"])
def test_what_is_well_formed_is_still_accepted(inline_bus, headers, body, query):
    case = Hostile("accepted", "POST", GEN, body, headers=headers, query=query or {"async": "true"})
    out = submit_handler.lambda_handler(hostile_event(case, GEN), FakeContext())
    assert out["statusCode"] == 202, out["body"]
    sent = json.loads((body.decode() if isinstance(body, bytes) else body).removeprefix("\ufeff"))
    stored = tasks.get(json.loads(out["body"])["id"]).request
    assert {k: stored[k] for k in sent} == sent


def test_unknown_query_parameters_are_ignored(inline_bus):
    reply = call(poll_handler.lambda_handler, "GET", TASKS, key=API_KEY, query={"colour": "red", "limit": "5"})
    assert reply.status == 200 and reply.json()["data"] == []



# -- the pure pieces, directly --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, param", [
    ({"prompt": "\ud800"}, "prompt"),  # a bus event or a batch line is checked as an HTTP body is
    ({"prompt": "x", "user": json.loads("[" * 40 + "]" * 40)}, "user"),
    (b'{"prompt": "\\udfff"}', "prompt"),
    ('{"prompt": "x", "seed": ' + DIGITS + "}", "seed"),
])
def test_parse_request_refuses_what_cannot_be_stored_naming_the_field(raw, param):
    from imagegw.errors import BadRequest
    from imagegw.request import parse_request

    with pytest.raises(BadRequest) as refused:
        parse_request(raw)
    assert refused.value.param == param
    json.dumps(refused.value.body()).encode("utf-8")


def test_an_echoed_value_is_short_and_printable():
    from imagegw.request import echo, printable

    assert printable("ok\x00\x1b[31m\u2028\ud800\u200b") == "ok\\u0000\\u001b[31m\\u2028\\ud800\\u200b"
    assert printable("a" * 500) == "a" * 100 + "…"
    assert echo("x" * 10_000).startswith('"xxx') and len(echo("x" * 10_000)) == 101
    assert echo(["\ud800"]) == "an array" and echo({"a": 1}) == "an object" and echo(float("inf")) == "Infinity"
    assert echo("漢字 café") == '"漢字 café"'  # readable text stays readable


@pytest.mark.parametrize("ratio, parsed", [
    ("16:9", (16.0, 9.0)), ("9:19.5", (9.0, 19.5)), ("21:1", (21.0, 1.0)), ("1:21", (1.0, 21.0)),
    ("1:0", None), ("0:0", None), ("0:1", None), ("22:1", None), ("1:21.5", None), ("100000000000000000000:1", None),
    ("1.5.5:1", None), ("1e4:1", None), ("-1:1", None), ("1:1:1", None), ("auto", None),
])
def test_parse_ratio_bounds_both_sides(ratio, parsed):
    from imagegw.capabilities import parse_ratio

    assert parse_ratio(ratio) == parsed


@pytest.mark.parametrize("content_type", [None, "", "application/json", "APPLICATION/JSON ; charset=utf8",
                                          'application/json; charset="UTF-8"', "application/json;"])
def test_json_media_types_accepted(content_type):
    from imagegw.request import json_text

    assert json_text('{"a": 1}', base64_encoded=False, content_type=content_type) == '{"a": 1}'
