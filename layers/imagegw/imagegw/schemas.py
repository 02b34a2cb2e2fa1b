"""The response bodies of the HTTP API as pydantic models, for the OpenAPI document only.

views.py and errors.py build the real bodies; tests/unit/test_openapi.py validates real answers against these
models (extra fields forbidden), so the document cannot drift from what the API sends. `RESPONSES` gives each
route's `responses=` for Powertools: every status it answers, with examples, and never Powertools' 422.
"""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseHeader
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built by the OpenAPI document, not at import


class ErrorDetail(_Strict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Strict):
    """Every error the API answers: OpenAI's shape, so SDKs raise their typed exceptions."""

    error: ErrorDetail


class ImageData(_Strict):
    url: str = Field(description="A presigned URL of the stored image")
    b64_json: str | None = Field(default=None, description="The stored image's bytes, with response_format=b64_json")
    revised_prompt: str | None = None


class ImagesResponse(_Strict):
    """OpenAI's Images response."""

    created: int
    data: list[ImageData]
    usage: dict[str, Any] | None = None


class TaskImage(_Strict):
    url: str
    revised_prompt: str | None = None


class TaskError(_Strict):
    code: str
    message: str
    type: str


class WebhookState(_Strict):
    url: str
    status: Literal["waiting", "pending", "delivered", "failed", "skipped"]
    attempts: int = Field(ge=0)
    last_error: str | None


class Task(_Strict):
    """An image task: what a 202 carries, and what the task routes answer."""

    id: str
    task_id: str
    object: Literal["image.task"]
    status: Literal["queued", "in_progress", "succeeded", "failed", "cancelled"]
    progress: int = Field(ge=0, le=100)
    model: str
    created_at: int
    updated_at: int
    completed_at: int | None = None
    waiting_for: Literal["capacity", "rate_limit"] | None = Field(
        default=None, description="A queued task waiting for its provider: its limits are reached (`capacity`), or it "
                                  "answered 429 (`rate_limit`); the task is tried again, until its deadline")
    queue_position: int | None = Field(default=None, ge=1, description="Its place in its provider's line (1 = next)")
    next_attempt_at: int | None = Field(default=None, description="When a task answered 429 is tried again (epoch s)")
    data: list[TaskImage] | None = Field(default=None, description="The images, once the task succeeded")
    usage: dict[str, Any] | None = None
    error: TaskError | None = Field(default=None, description="Why the task failed")
    reference: str | None = Field(default=None, description="The caller's id, for tasks requested by bus events")
    request_id: str | None = Field(default=None, description="The request (x-request-id) or event that created "
                                                             "it: the correlation id of its log lines")
    webhook: WebhookState | None = None


class TaskList(_Strict):
    object: Literal["list"]
    data: list[Task]
    has_more: bool
    last_id: str | None = Field(description="Pass it as `after` for the next page")


class Model(_Strict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Strict):
    object: Literal["list"]
    data: list[Model]


# -- examples -----------------------------------------------------------------------------------------------

TASK_ID = "imgtask_9f2c1e7a4b5d4f0e8a6b3c2d1e0f9a8b"
URL = "https://imagegw-images.s3.amazonaws.com/images/imgtask_9f2c/0.png?X-Amz-Signature=..."
TASK_QUEUED = {"id": TASK_ID, "task_id": TASK_ID, "object": "image.task", "status": "queued", "progress": 0,
               "model": "gpt-image-1", "created_at": 1764600000, "updated_at": 1764600000}
TASK_SUCCEEDED = {**TASK_QUEUED, "status": "succeeded", "progress": 100, "updated_at": 1764600012,
                  "completed_at": 1764600012, "data": [{"url": URL}]}
TASK_FAILED = {**TASK_QUEUED, "status": "failed", "updated_at": 1764600030, "completed_at": 1764600030,
               "error": {"code": "upstream_timeout", "message": "The provider did not answer in time.",
                         "type": "upstream_error"}}
IMAGES = {"created": 1764600000, "data": [{"url": URL, "revised_prompt": "A watercolour fox in the snow"}]}


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _examples(**values: dict[str, Any]) -> dict[str, Any]:
    return {name: {"value": value} for name, value in values.items()}


def _json(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"model": model, "examples": examples}}


def _header(description: str) -> OpenAPIResponseHeader:
    return {"description": description, "schema": {"type": "string"}}


ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Bad input (never a 422): `param` names the field", _examples(
        invalid_value=_error("Invalid value for 'n': 0. Input should be greater than or equal to 1.",
                             "invalid_request_error", "invalid_value", "n"),
        unknown_parameter=_error("Unknown parameter: 'colour'.", "invalid_request_error", "unknown_parameter",
                                 "colour"))),
    401: ("Missing or wrong API key", _examples(
        invalid_api_key=_error("Incorrect API key provided.", "authentication_error", "invalid_api_key"))),
    404: ("No such task (or another key's)", _examples(
        not_found=_error(f"No task found with id '{TASK_ID}'.", "not_found_error", "not_found", "id"))),
    409: ("The task is in the wrong state (or an Idempotency-Key repeat arrived while the first is in progress)",
          _examples(task_not_cancellable=_error(f"Task '{TASK_ID}' is already succeeded and cannot be cancelled.",
                                                "invalid_request_error", "task_not_cancellable"))),
    413: ("The request body is larger than 64 KiB", _examples(
        payload_too_large=_error("The request body is larger than 64 KiB.", "invalid_request_error",
                                 "payload_too_large"))),
    422: ("This Idempotency-Key was already used with a different request body", _examples(
        idempotency_key_reused=_error("This 'Idempotency-Key' was already used with a different request body: "
                                      "send a new key for a new request.", "invalid_request_error",
                                      "idempotency_key_reused"))),
    429: ("The provider is rate limiting", _examples(
        rate_limit_exceeded=_error("The provider is rate limiting this gateway.", "rate_limit_error",
                                   "rate_limit_exceeded"))),
    500: ("The gateway failed unexpectedly (the error was logged)", _examples(
        internal_error=_error("The gateway failed unexpectedly; the error was logged.", "server_error",
                              "internal_error"))),
    502: ("The provider failed (also: it rejected the gateway's credentials, or sent an image URL the gateway "
          "will not fetch)", _examples(
        upstream_error=_error("The provider answered 500.", "upstream_error", "upstream_error"))),
    503: ("No provider configuration, or an invalid one", _examples(
        provider_config_invalid=_error("The gateway's provider configuration is invalid. An operator must "
                                       "correct it.", "server_error", "provider_config_invalid"))),
    504: ("The provider timed out, or (sync requests) `generation_in_progress`: send the same request again, as "
          "OpenAI SDKs do by themselves, to receive the images", _examples(
        generation_in_progress=_error(f"The images are still being generated by task {TASK_ID}. Send the same "
                                      f"request again to receive them (OpenAI SDKs do so by themselves), or read "
                                      f"the task: GET /v1/images/tasks/{TASK_ID}", "server_error",
                                      "generation_in_progress"),
        upstream_timeout=_error("The provider did not answer in time.", "upstream_error", "upstream_timeout"))),
}
RETRY_HEADERS = {"x-should-retry": _header("`true` on `generation_in_progress`"),
                 "retry-after-ms": _header("Milliseconds to wait before retrying"),
                 "Retry-After": _header("Seconds to wait before retrying")}
REPLAYED = {"Idempotent-Replayed": _header("`true` when an Idempotency-Key repeat answers with the first task")}


def _errors(*statuses: int) -> dict[int, OpenAPIResponse]:
    out: dict[int, OpenAPIResponse] = {}
    for status in (*statuses, 401, 500):
        description, examples = ERRORS[status]
        out[status] = {"description": description, "content": _json(ErrorResponse, examples)}
    if 504 in out:
        out[504]["headers"] = RETRY_HEADERS
    return out


def _ok(description: str, model: type[BaseModel], examples: dict[str, Any],
        **headers: OpenAPIResponseHeader) -> OpenAPIResponse:
    answer: OpenAPIResponse = {"description": description, "content": _json(model, examples)}
    if headers:
        answer["headers"] = headers
    return answer


#: `responses=` of each route (by the route function's name)
RESPONSES: dict[str, dict[int, OpenAPIResponse]] = {
    "create_images": {
        200: {**_ok("The images, once stored (sync)", ImagesResponse, _examples(images=IMAGES)), "headers": REPLAYED},
        202: _ok("The task (async, or past `Prefer: wait=N`); the work goes on", Task, _examples(queued=TASK_QUEUED),
                 Location=_header("The task's URL: /v1/images/tasks/{id}"), **REPLAYED),
        **_errors(400, 409, 413, 422, 429, 502, 503, 504),
    },
    "list_tasks": {200: _ok("Your tasks, newest first", TaskList, _examples(
        page={"object": "list", "data": [TASK_SUCCEEDED, TASK_QUEUED], "has_more": True, "last_id": TASK_ID})),
        **_errors(400)},
    "get_task": {200: _ok("The task", Task, _examples(succeeded=TASK_SUCCEEDED, failed=TASK_FAILED)),
                 **_errors(400, 404)},
    "cancel_task": {200: _ok("The cancelled task", Task, _examples(cancelled={
        **TASK_QUEUED, "status": "cancelled", "completed_at": 1764600005, "updated_at": 1764600005})),
        **_errors(400, 404, 409, 413)},
    "get_image": {302: {"description": "Redirect to a fresh presigned URL of the image",
                        "headers": {"Location": _header("The presigned URL"), "Cache-Control": _header("no-store")}},
                  **_errors(400, 404, 409)},
    "list_models": {200: _ok("The routable public model names", ModelList, _examples(models={
        "object": "list", "data": [{"id": "gpt-image-1", "object": "model", "created": 0, "owned_by": "openai"}]})),
        **_errors(503)},
}


def _form(required: list[str], fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": required, "properties": fields}}}}


_FILE = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}
_COUNT = {"type": "integer", "minimum": 1, "maximum": 10}
#: the multipart request bodies of the routes that take files (Powertools only describes JSON bodies)
MULTIPART_BODIES: dict[str, dict[str, Any]] = {
    "/v1/images/edits": _form(["image", "prompt"], {
        "image": {**_FILE, "description": "The image to edit (PNG, JPEG or WebP); `image[]` for several (up to 16)"},
        "mask": {**_FILE, "description": "A PNG with an alpha channel: its transparent pixels mark where to edit"},
        "prompt": _TEXT, "model": _TEXT, "n": _COUNT, "size": _TEXT, "quality": _TEXT, "background": _TEXT,
        "input_fidelity": {"type": "string", "enum": ["high", "low"]}, "output_format": _TEXT,
        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]}, "user": _TEXT, "webhook": _TEXT}),
    "/v1/images/variations": _form(["image"], {
        "image": {**_FILE, "description": "A square PNG under 4 MB"}, "model": _TEXT, "n": _COUNT, "size": _TEXT,
        "response_format": {"type": "string", "enum": ["url", "b64_json"]}, "user": _TEXT, "webhook": _TEXT}),
}
RESPONSES["edit_images"] = RESPONSES["create_images"]  # the same answers: images, a task, or an error
RESPONSES["create_variations"] = RESPONSES["create_images"]
