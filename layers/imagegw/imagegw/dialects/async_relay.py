"""`async-relay`: an OpenAI-compatible relay with an asynchronous mode, new-api style: the submit answers a
task id at once, and the task is then checked until it succeeds or fails.

Why it is its own dialect: generation on such relays takes longer than an API call may wait, so the job is
tracked as the relay's task (progress, then images or a failure reason) instead of one long request. The body
is OpenAI's, with `size` and `n` always sent (the relay requires them) and a ratio turned into pixels, and
without `response_format` (the result sits in the relay's task record, where URLs are lighter than base64;
the gateway answers b64_json from its stored copy anyway). Relays differ in how they wrap the task id and the
task, so every documented wrapping is read. The README's "Dialects" table lists the fields and answers.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import quote

from ..capabilities import capability_for, nearest_size, parse_pixels, parse_ratio
from ..errors import GatewayError, UpstreamFailed, policy_violation
from ..inputs import Inputs
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from .base import EDIT, GENERATE, Dialect, Done, Failed, HttpCall, HttpReply, ImageOut, Outcome, Pending, bearer, \
    translatable_fields
from .openai_shaped import GENERATIONS_PATH, edit_call, error_message, fields, image_items, usage

CHECK_PATH = "/v1/images/tasks/"
DEFAULT_SIZE = "1024x1024"  # OpenAI's
CHECK_TIMEOUT_S = 30.0
_LONG_SIDE = {"1k": 1024, "2k": 2048, "4k": 4096}
#: sent by this dialect's own rules, whatever the family: always `n` and `size`, never `response_format`
_OWN_RULES = frozenset({"n", "size", "response_format"})
_SUCCESS = {"SUCCESS", "SUCCEEDED", "SUCCEED", "COMPLETED", "DONE"}
_FAILURE = {"FAILURE", "FAILED", "FAIL", "ERROR", "CANCELLED", "CANCELED"}
_OK_CODES = {None, "", "success", "ok", 0, 200, "0", "200"}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


# -- submit ---------------------------------------------------------------------------------------------------

def carried(upstream_model: str) -> frozenset[str]:
    """The fields a submit carries: the family's OpenAI fields as given, `n` and `size` always, a ratio in
    `aspect_ratio` into `size`, and `resolution` too when the model lists no sizes to map the ratio onto."""
    ratio_fields = {"aspect_ratio"} | (set() if _listed_sizes(upstream_model) else {"resolution"})
    return (fields(upstream_model) - _OWN_RULES) | {"n", "size"} | ratio_fields


def upstream_size(req: ImageRequest, upstream_model: str) -> str:
    """`size` as the relay requires it: a `WxH` or `auto` as given; a ratio (in `size`, else `aspect_ratio`) as
    the listed size nearest it when the model lists sizes (dall-e-3: 16:9 -> 1792x1024), otherwise a `WxH` in
    multiples of 16 whose long side is 1024, 2048 or 4096 by `resolution` (16:9 -> 1024x576); else 1024x1024."""
    if req.size and (req.size == "auto" or parse_pixels(req.size)):
        return req.size
    ratio = parse_ratio(req.size or "") or parse_ratio(req.aspect_ratio or "")
    if ratio is None:
        return DEFAULT_SIZE
    listed = _listed_sizes(upstream_model)
    if listed:
        return nearest_size(*ratio, listed)
    long_side = _LONG_SIDE.get(req.resolution or "", 1024)
    w, h = ratio
    scale = long_side / max(w, h)
    return f"{max(16, round(w * scale / 16) * 16)}x{max(16, round(h * scale / 16) * 16)}"


def _listed_sizes(upstream_model: str) -> set[str]:
    return {s for s in capability_for(upstream_model, "async-relay").sizes or () if parse_pixels(s)}


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": upstream_model, "size": upstream_size(req, upstream_model), "n": req.n,
                            "prompt": req.prompt}
    body.update(translatable_fields(req, fields(upstream_model) - _OWN_RULES))
    return body


def task_id_of(payload: Any) -> str | None:
    """The task id in any of the relay's submit answers: `{"task_id": id}`, `{"id": id}`, `{"code": "success",
    "data": id}` or `{"data": {"task_id" | "id": id}}`; None when there is none."""
    if not isinstance(payload, dict):
        return None
    for key in ("task_id", "id"):
        if _is_id(payload.get(key)):
            return str(payload[key])
    data = payload.get("data")
    if _is_id(data):
        return str(data)
    if isinstance(data, dict):
        for key in ("task_id", "id"):
            if _is_id(data.get(key)):
                return str(data[key])
    return None


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and bool(value.strip())) or (isinstance(value, int) and not isinstance(value, bool))


# -- check ----------------------------------------------------------------------------------------------------

def task_object(payload: Any) -> dict[str, Any] | None:
    """The task inside new-api's envelope `{code, message, data: {task_id, status, progress, fail_reason, data}}`,
    or the same task flat at the top level; None when there is no task."""
    if not isinstance(payload, dict):
        return None
    inner = payload.get("data")
    if isinstance(inner, dict) and "status" in inner:
        return inner
    if "status" in payload:
        return payload
    return None


def status_of(task: dict[str, Any]) -> str:
    """The status read case- and separator-insensitively: SUCCESS, success and Success are one; so are
    IN_PROGRESS and InProgress."""
    return re.sub(r"[^A-Z]", "", str(task.get("status") or "").upper())


def parse_progress(value: Any) -> int:
    """0-100 from "45%", "45", 45 or 45.5; anything unreadable is 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and (match := _NUMBER.match(value)):
        number = float(match[1])
    else:
        return 0
    if math.isnan(number):
        return 0
    return int(min(100.0, max(0.0, number)))


def result_images(task: dict[str, Any]) -> list[ImageOut]:
    """A finished task's images: its result may be `{data: [...]}`, the list itself, that JSON as a string, or
    a `result_url`/`url`/`image_url` on the task."""
    result = task.get("data")
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            result = None
    items = result.get("data") if isinstance(result, dict) else result
    images = image_items(items if isinstance(items, list) else [])
    if not images:
        for key in ("result_url", "url", "image_url"):
            if isinstance(task.get(key), str) and task[key].strip():
                images.append(ImageOut(url=task[key].strip()))
                break
    return images


def _message(payload: Any) -> str:
    """The relay's message (scrubbed: upstream text), or ""; on a task, its `fail_reason` first."""
    return fragment(error_message(payload, ("fail_reason", "message", "msg", "error")))


def task_failure(reason: str) -> GatewayError:
    """A failed task: a refusal when the reason has content-policy wording, otherwise a non-retriable 502 (the
    job ran upstream: never re-run on another route)."""
    return policy_violation(reason) or UpstreamFailed(
        f"The provider's task failed: {reason or 'no reason given'}", code="upstream_task_failed", retriable=False)


class AsyncRelayDialect(Dialect):
    name = "async-relay"
    operations = frozenset({GENERATE, EDIT})  # the relay documents no variations

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return fields(model, EDIT) if operation == EDIT else carried(model)

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        return [HttpCall("POST", route.config.root_url + GENERATIONS_PATH, headers=bearer(route),
                         json=request_body(req, route.upstream_model), params={"async": "true"},
                         timeout_s=route.config.timeout_s)]

    def build_edit(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        """The relay's image-edit endpoint with `?async=true`, multipart as OpenAI takes an edit; the answer is
        read as a submit's, and the task checked at the same task query."""
        return [edit_call(req, route, inputs, params={"async": "true"})]

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Outcome:
        """Pending with the task id; Done when the relay answered synchronously anyway; a failure when it did
        not take the job (retriable 502, so the next route may be tried; a refusal by its wording)."""
        payload = replies[0].json()
        if isinstance(payload, dict) and isinstance(payload.get("data"), list):  # answered synchronously
            images = image_items(payload["data"])[: req.n]
            if images:
                return Done(images=images, usage=usage(len(images), payload.get("usage")))
        if isinstance(payload, dict) and payload.get("code") not in _OK_CODES:
            message = _message(payload) or f"code {fragment(payload.get('code'))}"
            raise policy_violation(message) or UpstreamFailed(f"The provider did not take the task: {message}",
                                                             code="upstream_rejected_task")
        upstream_id = task_id_of(payload)
        if upstream_id is None:
            message = _message(payload)
            raise policy_violation(message) or UpstreamFailed(
                "The provider answered without a task id or images" + (f": {message}" if message else "."),
                code="bad_upstream_response")
        return Pending(upstream_id=upstream_id)

    def build_check(self, upstream_id: str, route: Route) -> HttpCall:
        return HttpCall("GET", route.config.root_url + CHECK_PATH + quote(upstream_id, safe=""),
                        headers=bearer(route, json_body=False), timeout_s=min(CHECK_TIMEOUT_S, route.config.timeout_s))

    def parse_check(self, reply: HttpReply) -> Outcome:
        """Success stores the images (none fails the task); a failure status ends it with the relay's reason;
        any other status (NOT_START, QUEUED, IN_PROGRESS, unknown ones) is Pending with its progress. An
        answer with no task fails the check: for good when the relay says the task does not exist, otherwise
        retried at the next check. The id we submitted with stays authoritative: a check never replaces it."""
        payload = reply.json()
        task = task_object(payload)
        if task is None:
            message = _message(payload) or "no task in the answer"
            lost = any(word in message.lower() for word in ("not exist", "not_exist", "not found", "not_found"))
            return Failed(UpstreamFailed(f"The provider could not report on the task: {message}",
                                         code="upstream_task_lost" if lost else "bad_upstream_response",
                                         retriable=not lost))
        status = status_of(task)
        if status in _SUCCESS:
            images = result_images(task)
            if not images:
                return Failed(UpstreamFailed("The provider's task succeeded without any image.", code="no_image",
                                             retriable=False))
            raw = task.get("data")
            result: dict[str, Any] = raw if isinstance(raw, dict) else {}
            return Done(images=images, usage=usage(len(images), result.get("usage")))
        if status in _FAILURE:
            return Failed(task_failure(_message(task)))
        return Pending(upstream_id="", progress=parse_progress(task.get("progress")))
