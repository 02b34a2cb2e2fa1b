"""The HTTP API on Powertools' REST resolver (validation and OpenAPI generated from these signatures).

Every function serves its own routes from this one resolver (template.yaml decides which routes reach
which function). Before routing, `handle` enforces the body cap and authenticates, so a bad key is a 401
whatever the body, then hands a JSON route's body to Powertools as checked UTF-8 text (request.json_text),
which Powertools parses with request.load_json_object. Every error leaves as an OpenAI-shaped body with the
matching status: bad input is always a 4xx.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query

from . import bus, correlation, idempotency, inputs, keys, lifecycle, settings, storage, sync, tasks, views, worker
from .capabilities import validate_routable
from .errors import (AuthenticationFailed, BadRequest, Conflict, GatewayError, GenerationInProgress, NotFound,
                     PayloadTooLarge, ServerError, from_task_error)
from .dialects import EDIT, GENERATE, VARIATION
from .request import (MAX_BODY_BYTES, ImageRequest, bad_request_from_errors, echo, json_text, load_json_object,
                      parse_form_fields, parse_request, printable)
from .routing import public_models
from .schemas import MULTIPART_BODIES, RESPONSES

logger = Logger(child=True)

MAX_WAIT_S = 25
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.I)
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")
_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})

GENERATIONS = "/v1/images/generations"
#: (method, path) of the routes that read a JSON body: `handle` checks and decodes it before Powertools reads it
JSON_ROUTES = frozenset({("POST", GENERATIONS)})
EDITS, VARIATIONS = "/v1/images/edits", "/v1/images/variations"
#: the routes that read multipart/form-data (the input images): up to API Gateway's 10 MB, not 64 KiB
MULTIPART_ROUTES = frozenset({("POST", EDITS), ("POST", VARIATIONS)})
# Task ids are `imgtask_<hex>`; anything else cannot name a task (and a DynamoDB key has a size limit).
TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class _Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver whose OpenAPI document declares only what the API answers: Powertools adds a
    422 "Validation Error" to every route, but this API answers bad input with a 400 (`_validation_error`)."""

    _POWERTOOLS_SCHEMAS = ("HTTPValidationError", "ResponseValidationError", "ValidationError")

    def get_openapi_schema(self, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(**kwargs)
        declared = {(route.openapi_path, route.method.lower()): route.responses or {}
                    for route in self._static_routes + self._dynamic_routes}
        for path, item in (schema.paths or {}).items():
            for method in ("get", "put", "post", "delete", "patch"):
                operation = getattr(item, method)
                if operation is None or not operation.responses:
                    continue
                responses = declared.get((path, method), {})
                if 422 not in responses:
                    operation.responses.pop(422, None)
                for status, response in responses.items():  # no body (a redirect): Powertools adds one
                    if "content" not in response:
                        operation.responses[status].content = None
        for path, body in MULTIPART_BODIES.items():  # file uploads, which Powertools does not describe
            item = (schema.paths or {}).get(path)
            if item is not None and item.post is not None:
                from aws_lambda_powertools.event_handler.openapi.models import RequestBody
                item.post.requestBody = RequestBody.model_validate(body)
        schemas = (schema.components.schemas if schema.components else None) or {}
        for name in self._POWERTOOLS_SCHEMAS:  # the last is what the others refer to
            definition = schemas.pop(name, None)
            if definition is not None and f'schemas/{name}"' in schema.model_dump_json(by_alias=True):
                schemas[name] = definition  # still referred to
        return schema


app = _Resolver(enable_validation=True, json_body_deserializer=load_json_object)

DOCS_PATHS = ("/docs", "/openapi.json")
_DOCS_LOCK = threading.Lock()


def openapi_info() -> dict[str, Any]:
    """The document's title, security and tags. Its OpenAPI models (and the `/docs` page, registered here) load on
    the first documentation request: no other route needs them, and they are a tenth of a cold start."""
    with _DOCS_LOCK:
        return _openapi_info()


@functools.cache
def _openapi_info() -> dict[str, Any]:
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Tag

    info: dict[str, Any] = {
        "title": "imagegw",
        "version": "1.0.0",
        "description": "One OpenAI-compatible image endpoint in front of many providers; every image is kept in "
                       "your S3 bucket. Errors are OpenAI-shaped: {error: {message, type, param, code}}.",
        "security_schemes": {"bearer": HTTPBearer(description="Authorization: Bearer <API key>")},
        "security": [{"bearer": []}],
        "tags": [Tag(name="images", description="Create images (sync, or as a task)"),
                 Tag(name="tasks", description="Read, list and cancel image tasks, and fetch their images"),
                 Tag(name="models", description="The model names this gateway routes")],
    }
    app.enable_swagger(path="/docs", **info)
    return info


def docs_enabled() -> bool:
    """`GET /openapi.json` and `/docs` can be switched off by the template's EnableApiDocs parameter."""
    return settings.current().api_docs


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Entry point for an API Gateway REST proxy event: every answer carries the request's id (`x-request-id`,
    the correlation id of its log lines)."""
    answer = _handle(event, context)
    request_id = correlation.of(event)
    if request_id:
        answer["headers"] = {**(answer.get("headers") or {}), "x-request-id": request_id}
        if answer.get("multiValueHeaders"):
            answer["multiValueHeaders"] = {**answer["multiValueHeaders"], "x-request-id": [request_id]}
    return answer


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        body = event.get("body") or ""
        size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode(errors="surrogatepass"))
        route = (str(event.get("httpMethod")).upper(), str(event.get("path")).rstrip("/"))
        cap = inputs.MAX_MULTIPART_BYTES if route in MULTIPART_ROUTES else MAX_BODY_BYTES
        if size > cap:
            raise PayloadTooLarge(f"The request body is larger than {cap // 1024} KiB"
                                  + (" (API Gateway's limit)." if route in MULTIPART_ROUTES else "."))
        if event.get("path") in DOCS_PATHS and event.get("httpMethod") == "GET":
            if not docs_enabled():
                raise NotFound("The API documentation is switched off for this deployment.", code="unknown_route")
            openapi_info()  # registers /docs
            return app.resolve(event, context)  # the documentation needs no key
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
        authorization = headers.get("authorization")
        if authorization and not _VISIBLE_ASCII.fullmatch(authorization):
            raise AuthenticationFailed("Incorrect API key provided.")  # keys are ASCII, as header values are
        owner = keys.authenticate(authorization)
        # Powertools' REST resolver matches `^<route>/*$`: a trailing slash reaches the same route.
        if route in JSON_ROUTES:
            event = _json_event(event, headers.get("content-type"))
        app.append_context(owner=owner)
    except GatewayError as exc:
        return {"statusCode": exc.status, "headers": {"Content-Type": content_types.APPLICATION_JSON},
                "body": json.dumps(exc.body()), "isBase64Encoded": False}
    return app.resolve(event, context)


def _json_event(event: dict[str, Any], content_type: str | None) -> dict[str, Any]:
    """The event as Powertools must read it on a JSON route: the body checked and decoded to text (a 400
    otherwise), and the one media type Powertools parses as JSON, with `load_json_object`."""
    text = json_text(event.get("body"), base64_encoded=bool(event.get("isBase64Encoded")),
                     content_type=content_type)
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "content-type"}
    multi = {k: v for k, v in (event.get("multiValueHeaders") or {}).items() if k.lower() != "content-type"}
    return {**event, "body": text or None, "isBase64Encoded": False,
            "headers": {**headers, "Content-Type": content_types.APPLICATION_JSON},
            "multiValueHeaders": {**multi, "Content-Type": [content_types.APPLICATION_JSON]}}


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise BadRequest(f"Invalid '{name}': {echo(value)}. Send true or false.", param=name, code="invalid_value")


# -- routes -------------------------------------------------------------------------------------------------

@app.post(GENERATIONS, summary="Create images (sync by default, async on request)", tags=["images"],
          responses=RESPONSES["create_images"])
def create_images(request: Annotated[ImageRequest, Body(embed=False)],
                  async_: Annotated[str | None, Query(alias="async", description="true or false (also 1/0, yes/no, "
                                                      "on/off); anything else is a 400")] = None,
                  webhook: Annotated[str | None, Query(description="Where to POST the task when it ends "
                                                       "(as the `webhook` body field; relays' convention)")] = None,
                  idempotency_key: Annotated[str | None, Header(
                      alias=idempotency.HEADER,
                      description="Create the task once: a repeat within 24 h (same API key, same body) answers "
                                  "with the same task; a different body is a 422, a concurrent repeat a 409.",
                  )] = None):
    if webhook and not request.webhook:
        request = parse_request({**request.upstream_fields(), "webhook": webhook})
    validate_routable(request)
    return _create(request, async_=async_, idempotency_key=idempotency_key)


@app.post(EDITS, summary="Edit images (multipart/form-data; sync by default, async on request)", tags=["images"],
          responses=RESPONSES["edit_images"])
def edit_images(async_: Annotated[str | None, Query(alias="async")] = None,
                webhook: Annotated[str | None, Query()] = None,
                idempotency_key: Annotated[str | None, Header(alias=idempotency.HEADER)] = None):
    return _create_from_form(EDIT, async_=async_, webhook=webhook, idempotency_key=idempotency_key)


@app.post(VARIATIONS, summary="Create variations of an image (multipart/form-data; dall-e-2)", tags=["images"],
          responses=RESPONSES["create_variations"])
def create_variations(async_: Annotated[str | None, Query(alias="async")] = None,
                      webhook: Annotated[str | None, Query()] = None,
                      idempotency_key: Annotated[str | None, Header(alias=idempotency.HEADER)] = None):
    return _create_from_form(VARIATION, async_=async_, webhook=webhook, idempotency_key=idempotency_key)


def _create_from_form(operation: str, **kwargs: Any) -> Response:
    """An edit or a variation: its form read and checked (fields, then the model's input rules) before any
    task, any upload or any upstream call."""
    event = app.current_event
    form = inputs.parse_form(inputs.body_bytes(event.body, base64_encoded=bool(event.is_base64_encoded)),
                             event.headers.get("content-type"))  # Powertools' headers ignore case
    webhook = kwargs.pop("webhook")
    fields = {**form.fields, **({"webhook": webhook} if webhook and "webhook" not in form.fields else {})}
    if operation == VARIATION:
        fields.setdefault("model", "dall-e-2")  # variations are dall-e-2's
    request = parse_form_fields(fields, operation)
    rules = validate_routable(request, operation)
    inputs.check_files(form, rules or inputs.InputRules(), model=request.model, mask_allowed=operation == EDIT)
    return _create(request, operation=operation, form=form, **kwargs)


def _create(request: ImageRequest, *, async_: str | None, idempotency_key: str | None, operation: str = GENERATE,
            form: inputs.Form | None = None) -> Response:
    """A validated request (a generation, or an edit or variation with its files): the task, then the answer
    its client asked for (the sync contract, a 202, or the wait of `Prefer: wait=N`)."""
    started = time.monotonic()
    owner = app.context["owner"]
    prefer = app.current_event.headers.get("prefer") or ""
    respond_async = _flag(async_, "async") or "respond-async" in prefer.lower()
    asked_for_a_task = respond_async or _WAIT.search(prefer) is not None  # else: plain sync (see `sync`)
    key = idempotency.validate_key(idempotency_key)
    if not asked_for_a_task and key is None:  # the fast path: this invocation runs the task
        task = sync.run(owner, request, request_context=app.current_event.raw_event.get("requestContext") or {},
                        retried=sync.is_retry(app.current_event.headers), wait_until=started + _wait_bound(prefer),
                        operation=operation, form=form)
        return _sync_answer(task, request)
    replayed = False
    if key is None:
        task = _queue(owner, request, operation, form)
    else:
        fingerprint = request.model_dump(mode="json") if operation == GENERATE else {
            "request": request.model_dump(mode="json"), "operation": operation, "files": sync.file_digests(form)}
        task_id, replayed = idempotency.once(owner, key, fingerprint,
                                             lambda: _queue(owner, request, operation, form).id, app.lambda_context)
        task = tasks.get(task_id, owner)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    if respond_async:
        return _accepted(task, headers)
    task = sync.wait_for(task.id, started + _wait_bound(prefer))
    if not task.terminal and asked_for_a_task:  # `Prefer: wait=N` asked for the task protocol
        return _accepted(task, headers)
    return _sync_answer(task, request, headers)


def _sync_answer(task: tasks.Task, request: ImageRequest, headers: dict[str, str] | None = None) -> Response:
    """What a sync request gets for its task: the images, the task's error, or 504 `generation_in_progress`
    (SDKs retry it by themselves), never a body an OpenAI SDK would misread as images."""
    if task.status == "succeeded":
        return _json(200, views.images_response(task, request.response_format), headers)
    if task.status == "failed":
        raise from_task_error(task.error or {})
    if task.status == "cancelled":
        raise Conflict(f"Task '{task.id}' was cancelled.", code="task_cancelled")
    raise GenerationInProgress(task.id)


@app.get("/v1/images/tasks", summary="List your tasks, newest first", tags=["tasks"],
         responses=RESPONSES["list_tasks"])
def list_tasks(limit: Annotated[int, Query(ge=1, le=100)] = 20,
               after: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None):
    found, has_more = tasks.list_for(app.context["owner"], limit=limit, after=after)
    return _json(200, {"object": "list", "data": [views.task_object(t) for t in found], "has_more": has_more,
                       "last_id": found[-1].id if found else None})


@app.get("/v1/images/tasks/<task_id>", summary="Get a task (checks an async upstream when a check is due)",
         tags=["tasks"], responses=RESPONSES["get_task"])
def get_task(task_id: TaskId):
    task = worker.poll_through(tasks.get(task_id, app.context["owner"]))
    return _json(200, views.task_object(worker.with_queue_position(task)))


@app.post("/v1/images/tasks/<task_id>/cancel", summary="Cancel a task that is not finished", tags=["tasks"],
          responses=RESPONSES["cancel_task"])
def cancel_task(task_id: TaskId):
    task = tasks.cancel(task_id, app.context["owner"])
    lifecycle.ended(task)  # a batch counts its cancelled tasks too
    worker.cancel_upstream(task)  # best effort, after the cancel: never fails it
    return _json(200, views.task_object(task))


@app.get("/v1/images/tasks/<task_id>/images/<index>", summary="Redirect to a fresh URL of one stored image",
         tags=["tasks"], responses=RESPONSES["get_image"])
def get_image(task_id: TaskId, index: Annotated[str, Path(pattern=r"^(0|[1-9][0-9]{0,3})$")]):
    task = tasks.get(task_id, app.context["owner"])
    if task.status != "succeeded":
        raise Conflict(f"Task '{task_id}' is {task.status}: it has no images yet.", code="task_not_succeeded")
    position = int(index)  # ASCII digits without a leading zero: "²" and "01" are refused above
    if position >= len(task.images):
        raise NotFound(f"Task '{task_id}' has no image {index} (it has {len(task.images)}).", param="index")
    url = storage.presigned_url(task.images[position]["key"])
    return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"}, body="")


@app.get("/openapi.json", include_in_schema=False)
def openapi_document():
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON,
                    body=app.get_openapi_json_schema(**openapi_info()))


@app.get("/v1/models", summary="List the public model names this gateway routes", tags=["models"],
         responses=RESPONSES["list_models"])
def list_models():
    data = [{"id": name, "object": "model", "created": 0, "owned_by": provider}
            for name, provider in public_models()]
    return _json(200, {"object": "list", "data": data})


# -- errors -------------------------------------------------------------------------------------------------

@app.exception_handler(GatewayError)
def _gateway_error(exc: GatewayError) -> Response:
    return error_response(exc)


@app.exception_handler(RequestValidationError)
def _validation_error(exc: RequestValidationError) -> Response:
    # Powertools would answer 422; OpenAI clients expect 400 naming the parameter.
    return error_response(bad_request_from_errors(exc.errors(), strip=("body", "query", "path")))


@app.not_found
def _not_found(_exc: Exception) -> Response:
    event = app.current_event
    return error_response(NotFound(f"Unknown route: {printable(event.http_method, 16)} {printable(event.path)}.",
                                   code="unknown_route"))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return error_response(ServerError("The gateway failed unexpectedly; the error was logged."))


def error_response(exc: GatewayError) -> Response:
    return _json(exc.status, exc.body(), exc.headers or None)


# -- helpers ------------------------------------------------------------------------------------------------

def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON,
                    body=json.dumps(body, ensure_ascii=False), headers=headers)


def _queue(owner: str, request: ImageRequest, operation: str = GENERATE, form: inputs.Form | None = None
           ) -> tasks.Task:
    """Store the task (and an edit's or a variation's files first) and announce it (the step an
    Idempotency-Key makes happen once)."""
    task_id = tasks.new_task_id()
    job = sync.job_fields(task_id, operation, form)
    task = tasks.create(owner, request.model, request.upstream_fields(), webhook=request.webhook, task_id=task_id,
                        **job)
    if task is None:  # only a replayed id is ever taken, and this one is new
        raise ServerError("The task could not be stored.")
    try:
        bus.publish(bus.TASK_QUEUED, task.id)
    except Exception:  # noqa: BLE001 - the task is stored: the sweep re-publishes it, nothing is lost
        logger.exception("could not publish Task Queued; the sweep will", extra={"task_id": task.id})
    return task


def _accepted(task: tasks.Task, headers: dict[str, str] | None = None) -> Response:
    location = f"/v1/images/tasks/{task.id}"
    return _json(202, views.task_object(task), headers={"Location": location, **(headers or {})})


def _wait_bound(prefer: str) -> float:
    match = _WAIT.search(prefer)
    return min(float(match[1]), MAX_WAIT_S) if match else sync.wait_bound_s()
