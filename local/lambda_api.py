"""Lambda's Invoke API for the local functions (`AWS_ENDPOINT_URL_LAMBDA`), so tools that invoke a function by
name or ARN, such as `make redrive`, work against the local stack as they do against AWS.

`POST /2015-03-31/functions/{name or ARN}/invocations`: `X-Amz-Invocation-Type: Event` runs the handler on the
stack's delivery pool and answers 202 at once, as Lambda does; `RequestResponse` (the default) answers 200 with
the handler's result. An unknown function is Lambda's 404 ResourceNotFoundException.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from .lambdas import Functions
from .queues import WorkerPool

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


class LambdaApi:
    """The Invoke API on a loopback port of its own (a daemon thread)."""

    def __init__(self, functions: Functions, pool: WorkerPool, port: int = 0,
                 on_failure: dict[str, Any] | None = None):
        self.functions = functions
        self.pool = pool
        self.on_failure = on_failure or {}  # logical id -> its on-failure destination (see eventbridge)
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                api.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-lambda-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def logical_id(self, name: str) -> str | None:
        """The function a name, an ARN or a qualified ARN names."""
        name = unquote(name)
        if name.startswith("arn:"):
            name = name.split(":")[6] if len(name.split(":")) > 6 else name
        for logical, spec in self.functions.specs.items():
            if name in (logical, spec.name):
                return logical
        return None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        match = _PATH.match(request.path.split("?")[0])
        logical = self.logical_id(match.group(1)) if match else None
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        if logical is None:
            self._answer(request, 404, {"Type": "User", "message": f"Function not found: {request.path}"},
                         {"x-amzn-ErrorType": "ResourceNotFoundException"})
            return
        try:
            event = json.loads(raw or b"{}")
        except ValueError:
            self._answer(request, 400, {"Type": "User", "message": "Could not parse request body into json"},
                         {"x-amzn-ErrorType": "InvalidRequestContentException"})
            return
        if request.headers.get("X-Amz-Invocation-Type", "RequestResponse") == "Event":
            self.pool.submit(functools.partial(self._invoke_logged, logical, event))
            self._answer(request, 202, None, {})
            return
        try:
            result = self.functions.invoke(logical, event)
        except Exception as exc:  # noqa: BLE001 - Lambda reports a function error in the answer
            self._answer(request, 200, {"errorMessage": str(exc), "errorType": type(exc).__name__},
                         {"X-Amz-Function-Error": "Unhandled"})
            return
        self._answer(request, 200, result, {})

    def _invoke_logged(self, logical: str, event: dict[str, Any]) -> None:
        try:
            self.functions.invoke(logical, event)
        except Exception as exc:  # noqa: BLE001 - an async invocation's failure goes where the template says
            log.exception("%s: asynchronous invocation failed", logical)
            record = self.on_failure.get(logical)
            if record is not None:
                record(event, exc)

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(payload)
