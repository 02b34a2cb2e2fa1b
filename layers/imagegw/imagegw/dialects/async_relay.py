"""`async-relay` (seed 004): an OpenAI-compatible relay with an async mode (new-api style task envelope).

Submit: `POST {root}/v1/images/generations?async=true`, Bearer key, body `{model, size, n, prompt, ...}`.
- `model` is the route's upstream model; `prompt` as given; `n` always sent (the seed marks it required).
- `size` is always sent (required): a `WxH` or `auto` as given; a ratio in `size`, or `aspect_ratio` when
  there is no `size`, becomes pixels: the listed size nearest that ratio when the upstream model has a size
  list (dall-e-3: 16:9 -> 1792x1024), otherwise a `WxH` whose long side is 1024 (2048 for resolution 2k,
  4096 for 4k) in multiples of 16 (16:9 -> 1024x576); with neither, `1024x1024` (the OpenAI default).
- Passed on, as the relay hands OpenAI fields to its model, by the openai dialect's model families:
  dall-e-2: user; dall-e-3: quality, style, user; gpt-image-*: quality, background, output_format,
  output_compression, moderation, user; any other model: quality, style, user.
- Dropped: `response_format` (the relay keeps the result in its task record, where URLs are lighter than
  base64, and the gateway stores its own copy and answers b64_json from it anyway), `aspect_ratio` and
  `resolution` (only used to size a ratio as above), `seed`, `partial_images` and `stream` (the gateway does
  not stream: progress comes from the task checks), `input_fidelity` (edits only), and the gateway's own
  `webhook`.
- The submit answer is read as a task id from any of `{"task_id": id}`, `{"id": id}`,
  `{"code": "success", "data": "<id>"}`, `{"data": {"task_id" | "id": id}}` -> Pending(id). A relay that
  answers synchronously anyway (`{created, data: [{url | b64_json}]}`) -> Done. Anything else is a failure:
  a content-policy refusal (400) when its message says so, else a retriable 502 (the relay did not take the
  job, so the next route may be tried).

Edit: `POST {root}/v1/images/edits?async=true` (the relay's documented image-edit endpoint), multipart as the
`openai` dialect sends an edit, answered and checked as a submit is. The relay documents no variations.

Check: `GET {root}/v1/images/tasks/{id}`, Bearer key. The answer is new-api's task envelope
`{code, message, data: {task_id, status, progress, fail_reason, data: {created, data: [{url | b64_json}]}}}`
or the same task object flat at the top level. Statuses are read case- and separator-insensitively
(`SUCCESS`, `success`, `IN_PROGRESS`, `InProgress`):
- SUCCESS -> Done(images); the result may be `{data: [...]}`, the list itself, that JSON as a string, or a
  `result_url`/`url`. A SUCCESS without images fails the task (502 `no_image`).
- FAILURE (also FAILED/ERROR/CANCELLED) -> Failed: the relay's `fail_reason` as a 400
  `content_policy_violation` when it has content-policy wording, otherwise a non-retriable 502
  `upstream_task_failed` (the job ran upstream: never re-run on another route).
- NOT_START, SUBMITTED, QUEUED, IN_PROGRESS, UNKNOWN and anything else -> Pending with the progress.
- `progress` is read from "45%", "45", 45 or 45.5 and clamped to 0-100 (the worker keeps it monotonic).
- An envelope whose `code` is an error and that carries no task -> Failed with its message (non-retriable
  when the relay says the task does not exist, otherwise retried at the next check).
The upstream id we submitted with stays authoritative: a check never replaces it.
Usage, when an answer carries one, is normalised to `{images, input_tokens?, output_tokens?, total_tokens?}`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import quote

from ..capabilities import capability_for, nearest_size, parse_pixels, parse_ratio
from ..errors import GatewayError, UpstreamFailed, policy_violation
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from .base import Dialect, Done, Failed, HttpCall, HttpReply, ImageOut, Outcome, Pending, bearer, image_items, \
    translatable_fields
from ..inputs import Inputs
from .base import EDIT, GENERATE
from .openai import EDIT_PATH, edit_form, family, multipart_call

SUBMIT_PATH = "/v1/images/generations"
CHECK_PATH = "/v1/images/tasks/"
DEFAULT_SIZE = "1024x1024"
CHECK_TIMEOUT_S = 30.0
_LONG_SIDE = {"1k": 1024, "2k": 2048, "4k": 4096}
_PASSED_ON = {
    "dall-e-2": frozenset({"user"}),
    "dall-e-3": frozenset({"quality", "style", "user"}),
    "gpt-image": frozenset({"quality", "background", "output_format", "output_compression", "moderation", "user"}),
    "other": frozenset({"quality", "style", "user"}),
}
_SUCCESS = {"SUCCESS", "SUCCEEDED", "SUCCEED", "COMPLETED", "DONE"}
_FAILURE = {"FAILURE", "FAILED", "FAIL", "ERROR", "CANCELLED", "CANCELED"}
_OK_CODES = {None, "", "success", "ok", 0, 200, "0", "200"}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


# -- submit ---------------------------------------------------------------------------------------------------

def upstream_size(req: ImageRequest, upstream_model: str) -> str:
    if req.size and (req.size == "auto" or parse_pixels(req.size)):
        return req.size
    ratio = parse_ratio(req.size or "") or parse_ratio(req.aspect_ratio or "")
    if ratio is None:
        return DEFAULT_SIZE
    listed = {s for s in capability_for(upstream_model, "async-relay").sizes or () if parse_pixels(s)}
    if listed:
        return nearest_size(*ratio, listed)
    long_side = _LONG_SIDE.get(req.resolution or "", 1024)
    w, h = ratio
    scale = long_side / max(w, h)
    return f"{max(16, round(w * scale / 16) * 16)}x{max(16, round(h * scale / 16) * 16)}"


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": upstream_model, "size": upstream_size(req, upstream_model), "n": req.n,
                            "prompt": req.prompt}
    body.update(translatable_fields(req, _PASSED_ON[family(upstream_model)]))
    return body


def task_id_of(payload: Any) -> str | None:
    """The task id in any of the relay's submit answers, or None."""
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
    """The task inside new-api's envelope, or the flat task itself; None when there is no task."""
    if not isinstance(payload, dict):
        return None
    inner = payload.get("data")
    if isinstance(inner, dict) and "status" in inner:
        return inner
    if "status" in payload:
        return payload
    return None


def status_of(task: dict[str, Any]) -> str:
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


def normalise_usage(usage: Any, images: int) -> dict[str, int]:
    out = {"images": images}
    if isinstance(usage, dict):
        for key in ("input_tokens", "output_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                out[key] = usage[key]
    return out


def _message(payload: Any) -> str:
    """The relay's message (scrubbed: upstream text), or ""."""
    if not isinstance(payload, dict):
        return ""
    err = payload.get("error")
    if isinstance(err, dict) and err.get("message"):
        return fragment(err["message"])
    for key in ("fail_reason", "message", "msg", "error"):
        if isinstance(payload.get(key), str) and payload[key].strip():
            return fragment(payload[key])
    return ""


def task_failure(reason: str) -> GatewayError:
    return policy_violation(reason) or UpstreamFailed(
        f"The provider's task failed: {reason or 'no reason given'}", code="upstream_task_failed", retriable=False)


class AsyncRelayDialect(Dialect):
    name = "async-relay"
    operations = frozenset({GENERATE, EDIT})

    def build_edit(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        """`POST {root}/v1/images/edits?async=true`, multipart as the openai dialect sends an edit; the answer
        is a task id (or images) read as a submit's, and the task is checked at the same task query."""
        return [multipart_call(route, EDIT_PATH, edit_form(req, route.upstream_model), inputs,
                               params={"async": "true"})]
    supported_params = frozenset({"size", "n"} | set().union(*_PASSED_ON.values()))

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        return [HttpCall("POST", route.config.root_url + SUBMIT_PATH, headers=bearer(route),
                         json=request_body(req, route.upstream_model), params={"async": "true"},
                         timeout_s=route.config.timeout_s)]

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Outcome:
        payload = replies[0].json()
        if isinstance(payload, dict) and isinstance(payload.get("data"), list):  # answered synchronously
            images = image_items(payload["data"])[: req.n]
            if images:
                return Done(images=images, usage=normalise_usage(payload.get("usage"), len(images)))
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
        headers = {k: v for k, v in bearer(route).items() if k != "Content-Type"}
        return HttpCall("GET", route.config.root_url + CHECK_PATH + quote(upstream_id, safe=""), headers=headers,
                        timeout_s=min(CHECK_TIMEOUT_S, route.config.timeout_s))

    def parse_check(self, reply: HttpReply) -> Outcome:
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
            result = task.get("data") if isinstance(task.get("data"), dict) else {}
            return Done(images=images, usage=normalise_usage(result.get("usage"), len(images)))
        if status in _FAILURE:
            return Failed(task_failure(_message(task)))
        return Pending(upstream_id="", progress=parse_progress(task.get("progress")))
