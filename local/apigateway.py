"""API Gateway (REST, Lambda proxy integration) on 127.0.0.1, routed by the template's `Api` events.

A request is matched against the template's paths (`/v1/images/tasks/{id}`), turned into the proxy event
API Gateway would send (`sam local generate-event apigateway aws-proxy` shows the shape), given to the
route's function, and the function's `{statusCode, headers, multiValueHeaders, body, isBase64Encoded}`
is written back. What API Gateway answers itself is answered here from the template's `GatewayResponses` (the
same declarations API Gateway deploys): no such route or method (MISSING_AUTHENTICATION_TOKEN), a body over
10 MB (REQUEST_TOO_LARGE, from local/httpserver.py), a throttle when every execution environment stays busy
(THROTTLED), a function that crashes or returns a result API Gateway cannot send (a 502: DEFAULT_5XX), and the
integration timeout (INTEGRATION_TIMEOUT). A type the API does not declare falls back to its DEFAULT_4XX or
DEFAULT_5XX, then to API Gateway's own `{"message": ...}`, as deployed. The bodies' `$context` variables are
filled from the request (`requestId`, `requestTimeEpoch`, `error.message`, `error.responseType`, ...). Every
request gets an answer, none a silent close.

Each route's integration timeout is its `Api` event's TimeoutInMillis (default 29 s; the template sets it
from ApiTimeoutMillis, which API_TIMEOUT_MS overrides locally). A function that outlasts it gets the API's
`INTEGRATION_TIMEOUT` gateway response (`$context.requestId` and `$context.requestTimeEpoch` as they are in
the proxy event's requestContext). As in Lambda, the function
runs on after that answer: its environment stays busy until it returns, and its result is dropped.

Each request is served by its own thread and invoked in an execution environment of its own
(local/environments.py: a free one, or one started for it, as Lambda does), so a sync request waiting on a
slow upstream holds one environment, never the API or the other requests.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .environments import EnvironmentPool, IntegrationTimeout, InvocationFailed, Throttled
from .httpserver import RequestError, RequestHandler, Server, error_body
from .template import ACCOUNT_ID, ApiRoute, GatewayResponse

log = logging.getLogger(__name__)

API_ID = "local"
# API Gateway's own status and $context.error.message of each response type the local stack answers with
# (docs: "Gateway response types for API Gateway"). A Lambda function error or malformed proxy result is
# API Gateway's 502 "Internal server error", which no specific response type names: DEFAULT_5XX applies.
RESPONSE_TYPES: dict[str, tuple[int, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "Missing Authentication Token"),
    "REQUEST_TOO_LARGE": (413, "Request Too Long"),
    "THROTTLED": (429, "Too Many Requests"),
    "INTEGRATION_TIMEOUT": (504, "Endpoint request timed out"),
    "DEFAULT_5XX": (502, "Internal server error"),
}
_CONTEXT_VAR = re.compile(r"\$(\{)?context\.([A-Za-z]\w*(?:\.[A-Za-z]\w*)*)(?(1)\})")  # $context.a.b, ${context.a}


@dataclass(frozen=True)
class Match:
    route: ApiRoute
    path_parameters: dict[str, str]


class Router:
    """The template's routes, most specific first (literal segments beat `{param}`, which beats `{proxy+}`)."""

    def __init__(self, routes: list[ApiRoute]):
        compiled = [(*self._pattern(r.path), r) for r in routes]
        self._routes = sorted(compiled, key=lambda entry: self._specificity(entry[2].path))

    @staticmethod
    def _pattern(path: str) -> tuple[re.Pattern[str], list[str]]:
        """A regex for a template path and its parameter names (which need not be Python identifiers)."""
        parts, names = [], []
        for segment in path.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                greedy = segment.endswith("+}")
                names.append(segment[1:-2] if greedy else segment[1:-1])
                parts.append("(.+)" if greedy else "([^/]+)")
            else:
                parts.append(re.escape(segment))
        return re.compile("^/" + "/".join(parts) + "/?$"), names

    @staticmethod
    def _specificity(path: str) -> tuple[int, int, int]:
        segments = path.strip("/").split("/")
        greedy = sum(s.endswith("+}") for s in segments)
        params = sum(s.startswith("{") for s in segments)
        return greedy, params, -len(segments)

    def match(self, method: str, path: str) -> Match | str:
        """The route for (method, still-encoded path), or "not_found" / "method_not_allowed".

        Matching the encoded path keeps an escaped `/` (%2F) inside one path parameter, as API Gateway does.
        """
        path_matched = False
        for pattern, names, route in self._routes:
            found = pattern.match(path)
            if not found:
                continue
            path_matched = True
            if route.method in (method, "ANY"):
                return Match(route, {name: unquote(value) for name, value in zip(names, found.groups(), strict=True)})
        return "method_not_allowed" if path_matched else "not_found"

    def api_for(self, path: str) -> str | None:
        """The API of the first route whose path matches (still-encoded), whatever its method."""
        return next((route.api for pattern, _, route in self._routes if pattern.match(path)), None)


def proxy_event(match: Match, *, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes | None,
                source_ip: str, host: str, binary_media_types: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The REST API proxy event for one request, as API Gateway builds it: a body whose Content-Type is one of
    the API's binary media types arrives base64-encoded (`isBase64Encoded`), as do bytes that are not UTF-8."""
    url = urlsplit(raw_path)
    path = unquote(url.path)
    single_headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        single_headers[name] = value  # API Gateway keeps the last value of a repeated header here
        multi_headers.setdefault(name, []).append(value)
    query = parse_qsl(url.query, keep_blank_values=True)
    single_query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for name, value in query:
        single_query[name] = value
        multi_query.setdefault(name, []).append(value)
    body_text, is_b64 = None, False
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    binary = content_type.split(";")[0].strip().lower() in binary_media_types
    if body and not binary:
        try:
            body_text = body.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    if body and binary:
        body_text, is_b64 = base64.b64encode(body).decode("ascii"), True
    route = match.route
    context = request_context(method, path, headers, source_ip=source_ip, host=host, stage=str(route.stage))
    context.update({"resourceId": str(route.event), "resourcePath": str(route.path)})
    return {
        "resource": str(route.path),  # str(): the template decoder's string nodes do not pickle
        "path": path,
        "httpMethod": method,
        "headers": single_headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": single_query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": match.path_parameters or None,
        "stageVariables": None,
        "requestContext": context,
        "body": body_text,
        "isBase64Encoded": is_b64,
    }


def request_context(method: str, path: str, headers: list[tuple[str, str]], *, source_ip: str, host: str,
                    stage: str) -> dict[str, Any]:
    """A request's `requestContext` (the $context variables), as far as API Gateway knows it before routing."""
    now = datetime.now(timezone.utc)
    request_id = str(uuid.uuid4())
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), None)
    return {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "resourceId": None,
        "resourcePath": None,
        "httpMethod": method,
        "path": f"/{stage}{path}",
        "stage": stage,
        "protocol": "HTTP/1.1",
        "requestId": request_id,
        "extendedRequestId": request_id,
        "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": int(now.timestamp() * 1000),
        "domainName": host,
        "domainPrefix": host.split(".")[0],
        "identity": {"sourceIp": source_ip, "userAgent": user_agent, "accountId": None, "apiKey": None,
                     "caller": None, "user": None, "userArn": None, "cognitoIdentityId": None,
                     "cognitoIdentityPoolId": None, "cognitoAuthenticationType": None,
                     "cognitoAuthenticationProvider": None, "accessKey": None, "apiKeyId": None,
                     "principalOrgId": None},
    }


class ApiGateway:
    """The HTTP server; invocations run in the execution environments of `environments`, one request each."""

    def __init__(self, routes: list[ApiRoute], environments: EnvironmentPool, *, port: int,
                 gateway_responses: dict[str, dict[str, GatewayResponse]] | None = None,
                 binary_media_types: dict[str, frozenset[str]] | None = None):
        self.router = Router(routes)
        self.environments = environments
        self.binary_media_types = binary_media_types or {}  # API logical id -> its binary media types
        self.gateway_responses = gateway_responses or {}  # API logical id -> response type -> the template's
        self.stages = {r.stage for r in routes}
        apis = {r.api for r in routes}
        self.default_api = next(iter(apis)) if len(apis) == 1 else None  # for a request that matches no path
        try:
            self.server = Server(("127.0.0.1", port), self._handler_class())
        except OSError as exc:
            raise OSError(f"PORT {port} on 127.0.0.1 is not available ({exc.strerror}); set PORT") from None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="apigateway", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _unstaged(self, raw_path: str) -> tuple[str, str]:
        """(raw path, encoded path) without the stage: the deployed URL carries it (/prod/v1/...); accept both."""
        encoded = urlsplit(raw_path).path
        stage_prefix = encoded.split("/", 2)[1] if encoded.count("/") >= 2 else ""
        if stage_prefix in self.stages:
            return raw_path[len(stage_prefix) + 1:], encoded[len(stage_prefix) + 1:]
        return raw_path, encoded

    def _stage(self, api: str | None) -> str:
        return next((str(r.stage) for _, _, r in self.router._routes if r.api == api), "")

    def answer(self, api: str | None, response_type: str, context: dict[str, Any], *, status: int | None = None,
               message: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        """API Gateway's own answer of `response_type` for a request: the API's declared gateway response, else
        its DEFAULT_4XX / DEFAULT_5XX, else API Gateway's built-in `{"message": ...}` with the type's status."""
        own_status, own_message = RESPONSE_TYPES[response_type]
        status, message = status or own_status, message or own_message
        declared = self.gateway_responses.get(api or "", {})
        response = declared.get(response_type) or declared.get("DEFAULT_4XX" if status < 500 else "DEFAULT_5XX")
        if response is not None:
            return render_gateway_response(response, status, context, response_type, message)
        headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", str(context["requestId"]))]
        return status, headers, json.dumps({"message": message}).encode()

    def refuse(self, method: str, raw_path: str, headers: list[tuple[str, str]], source_ip: str, host: str,
               refusal: RequestError) -> tuple[int, list[tuple[str, str]], bytes]:
        """The answer to a request refused before routing (local/httpserver.py): a body over 10 MB is the API's
        REQUEST_TOO_LARGE gateway response; malformed HTTP is answered by the front door itself."""
        if refusal.status != 413:
            return refusal.status, _json_headers(), error_body(refusal.message, refusal.error_type, refusal.code)
        _, encoded = self._unstaged(raw_path)
        api = self.router.api_for(encoded) or self.default_api
        context = request_context(method, unquote(encoded), headers, source_ip=source_ip, host=host,
                                  stage=self._stage(api))
        return self.answer(api, "REQUEST_TOO_LARGE", context)

    def handle(self, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes | None,
               source_ip: str, host: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request in, one (status, headers, body) out."""
        raw_path, encoded = self._unstaged(raw_path)
        path = unquote(encoded)
        match = self.router.match(method, encoded)
        if not isinstance(match, Match):  # API Gateway: an unknown path, or a method the path lacks, is the same
            api = self.router.api_for(encoded) or self.default_api
            context = request_context(method, path, headers, source_ip=source_ip, host=host, stage=self._stage(api))
            return self.answer(api, "MISSING_AUTHENTICATION_TOKEN", context)
        event = proxy_event(match, method=method, raw_path=raw_path, headers=headers, body=body,
                            binary_media_types=self.binary_media_types.get(match.route.api, frozenset()),
                            source_ip=source_ip, host=host)
        context = event["requestContext"]
        api = match.route.api
        try:
            result = self.environments.invoke(match.route.function, event, request_id=context["requestId"],
                                              deadline=time.monotonic() + match.route.timeout_ms / 1000)
        except Throttled as exc:  # every environment busy: the API's THROTTLED answer (429), which the SDKs retry
            log.warning("%s %s: throttled, %s (see API_MAX_CONCURRENCY)", method, path, exc)
            return self.answer(api, "THROTTLED", context)
        except IntegrationTimeout as exc:
            log.warning("%s %s: no answer within the route's %g s integration timeout: %s", method, path,
                        match.route.timeout_ms / 1000, exc)
            return self._timed_out(match.route, context, queued=exc.queued)
        except InvocationFailed as exc:  # API Gateway answers 502 when the function errors
            log.error("%s failed on %s %s: %s\n%s", match.route.function, method, path, exc, exc.detail.rstrip())
            return self.answer(api, "DEFAULT_5XX", context)
        try:
            return _proxy_result(result, context["requestId"])
        except MalformedResult as exc:  # why, never the body itself (it may hold image bytes)
            log.error("%s returned a malformed proxy response: %s; API Gateway answers 502", match.route.function, exc)
            return self.answer(api, "DEFAULT_5XX", context)

    def _timed_out(self, route: ApiRoute, request_context: dict[str, Any], *,
                   queued: bool) -> tuple[int, list[tuple[str, str]], bytes]:
        """API Gateway's answer at the route's integration timeout: the API's INTEGRATION_TIMEOUT gateway response.
        The function itself runs on (local/environments.py)."""
        request_id = request_context["requestId"]
        if queued:  # a local artefact (Lambda would have started an environment): the function never ran
            message = ("The local stack was busy with other requests for longer than API Gateway waits "
                       f"(all {self.environments.max_size} execution environments; see API_MAX_CONCURRENCY).")
            return 504, _json_headers(request_id), error_body(message, "server_error", "integration_timeout")
        return self.answer(route.api, "INTEGRATION_TIMEOUT", request_context)

    def _handler_class(self) -> type[RequestHandler]:
        gateway = self

        class Handler(RequestHandler):
            def _any(self) -> None:
                started = time.monotonic()
                try:
                    body = self.read_body()
                except RequestError as exc:  # where the next request would start is unknown: close after
                    self.close_connection = True
                    status, headers, payload = self._refusal(exc)
                else:
                    try:
                        status, headers, payload = gateway.handle(
                            self.command, self.path, list(self.headers.items()), body, self.client_address[0],
                            self.headers.get("Host") or f"127.0.0.1:{gateway.port}")
                    except Exception:  # noqa: BLE001 - a bug here must still answer, as API Gateway's 500 does
                        log.exception("%s %s: the local API Gateway failed", self.command, urlsplit(self.path).path)
                        context = request_context(self.command, urlsplit(self.path).path, [], stage="",
                                                  source_ip=self.client_address[0], host="127.0.0.1")
                        status, headers, payload = gateway.answer(gateway.default_api, "DEFAULT_5XX", context,
                                                                  status=500)
                self.send_json(status, payload, headers)
                log.info("%s %s %d %.0f ms", self.command, urlsplit(self.path).path, status,
                         (time.monotonic() - started) * 1000)

            def _refusal(self, exc: RequestError) -> tuple[int, list[tuple[str, str]], bytes]:
                return gateway.refuse(self.command, self.path, list(self.headers.items()), self.client_address[0],
                                      self.headers.get("Host") or f"127.0.0.1:{gateway.port}", exc)

            def handle_expect_100(self) -> bool:
                # Refuse a body that would be refused anyway before the client sends it, not after `100 Continue`.
                try:
                    self.body_length()
                except RequestError as exc:
                    status, headers, payload = self._refusal(exc)
                    self.send_json(status, payload, headers, close=True)
                    log.info("%s %s %d (refused before 100 Continue)", self.command, urlsplit(self.path).path,
                             exc.status)
                    return False
                return super().handle_expect_100()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _any

        return Handler


def render_gateway_response(response: GatewayResponse, default_status: int, request_context: dict[str, Any],
                            response_type: str, error_message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """A template's gateway response as API Gateway sends it: its literal headers, and its body template (the
    application/json one, else the first) with the request's $context variables filled in."""
    content_type, template = next(((t, b) for t, b in response.templates.items() if t == "application/json"),
                                  next(iter(response.templates.items()), ("application/json", "")))
    variables = context_variables(request_context, response_type, error_message)
    headers = list(response.headers.items())
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", content_type))
    headers.append(("x-amzn-RequestId", str(request_context["requestId"])))
    return response.status or default_status, headers, render_context(template, variables).encode("utf-8")


def context_variables(request_context: dict[str, Any], response_type: str, error_message: str) -> dict[str, str]:
    """The $context variables of a request, by name (`requestId`, `identity.sourceIp`, `error.message`, ...)."""
    variables = {name: str(value) for name, value in request_context.items()
                 if value is not None and not isinstance(value, dict)}
    variables.update({f"identity.{name}": str(value) for name, value in request_context["identity"].items()
                      if value is not None})
    variables.update({"error.responseType": response_type, "error.message": error_message,
                      "error.messageString": json.dumps(error_message)})
    return variables


def render_context(template: str, variables: dict[str, str]) -> str:
    """`template` with each `$context.name` (or `${context.name}`) replaced; names not in `variables` stay as is."""
    return _CONTEXT_VAR.sub(lambda found: variables.get(found[2], found[0]), template)


def _json_headers(request_id: str | None = None) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/json")]
    if request_id:
        headers.append(("x-amzn-RequestId", request_id))
    return headers


class MalformedResult(ValueError):
    """A proxy integration result API Gateway cannot turn into an HTTP answer."""


def _proxy_result(result: Any, request_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP answer for a proxy integration result; MalformedResult for one API Gateway answers 502."""
    status, headers, payload = _parse_result(result)
    return status, [*headers, ("x-amzn-RequestId", request_id)], payload


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 section 5.1)


def _parse_result(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    if not isinstance(result, dict):
        raise MalformedResult(f"a {type(result).__name__}, not an object")
    status = result.get("statusCode")
    if type(status) is not int or not 200 <= status <= 599:
        raise MalformedResult(f"statusCode {status!r:.40} is not a number from 200 to 599")
    headers: list[tuple[str, str]] = []
    multi = result.get("multiValueHeaders") or {}
    single = result.get("headers") or {}
    if not isinstance(multi, dict) or not isinstance(single, dict):
        raise MalformedResult("headers and multiValueHeaders must be objects")
    for name, values in multi.items():
        for value in values if isinstance(values, list) else [values]:
            headers.append(_header(name, value))
    present = {str(name).lower() for name in multi}
    for name, value in single.items():
        if str(name).lower() not in present:
            headers.append(_header(name, value))
    body = result.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedResult(f"body is a {type(body).__name__}, not a string")
    try:
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(body or "", validate=True)
        else:
            payload = (body or "").encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:  # binascii.Error is a ValueError
        raise MalformedResult(f"body cannot be sent ({type(exc).__name__}: {str(exc)[:120]})") from None
    return status, headers, payload


def _header(name: Any, value: Any) -> tuple[str, str]:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise MalformedResult(f"header name {str(name)[:40]!r} is not a valid field name")
    if isinstance(value, (dict, list)):
        raise MalformedResult(f"header {name} has a {type(value).__name__} value")
    text = value if isinstance(value, str) else str(value)
    if any(c in text for c in "\r\n\0") or not text.isascii() and not _latin1(text):
        raise MalformedResult(f"header {name} has a value that cannot be sent (a line break or a character "
                              "outside ISO-8859-1)")
    return name, text


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
