"""Hostile requests over real HTTP to the local stack (`python -m local`): each gets an answer, an OpenAI-shaped
4xx in valid UTF-8 JSON. The in-process table (tests/unit/test_hostile_inputs.py) covers the many kinds; this
checks the bytes path end to end: raw bytes on the socket, the local API Gateway's base64 for non-UTF-8 bodies,
percent-encoded paths."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.integration.test_local_stack_smoke import _local_stack

KEY = {"Authorization": "Bearer sk-local"}
JSON = {**KEY, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with _local_stack() as url:
        yield url


@pytest.mark.parametrize("method, path, headers, body, status, param", [
    ("POST", "/v1/images/generations", JSON, b'{"prompt": "\\ud800"}', 400, "prompt"),
    ("POST", "/v1/images/generations", JSON, b'{"prompt": "caf\xe9"}', 400, None),
    ("POST", "/v1/images/generations", JSON, b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", 400, "seed"),
    ("POST", "/v1/images/generations", JSON, b"[" * 20000 + b"]" * 20000, 400, None),
    ("POST", "/v1/images/generations", JSON, b'[{"prompt": "a"}, {"prompt": "b"}]', 400, None),
    ("POST", "/v1/images/generations", {**KEY, "Content-Type": "text/plain"}, b'{"prompt": "a"}', 400,
     "Content-Type"),
    ("POST", "/v1/images/generations", JSON, b'{"prompt": "x", "aspect_ratio": "1:0"}', 400, "aspect_ratio"),
    ("GET", "/v1/images/tasks/imgtask_0000/images/%C2%B2", KEY, None, 400, "index"),
    ("GET", "/v1/images/tasks/" + "a" * 2000, KEY, None, 400, "task_id"),
    ("GET", "/v1/images/tasks?limit=99999999999999999999", KEY, None, 400, "limit"),
], ids=["lone-surrogate", "latin-1-bytes", "seed-5000-digits", "nested-20000-deep", "array", "text-plain",
        "ratio-1:0", "index-superscript-two", "task-id-2000-chars", "limit-20-digits"])
def test_a_hostile_request_over_http_gets_an_openai_shaped_4xx(api, method, path, headers, body, status, param):
    resp = requests.request(method, api + path, headers=headers, data=body, timeout=30)
    assert resp.status_code == status, resp.text[:300]
    error = json.loads(resp.content.decode("utf-8"))["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param
