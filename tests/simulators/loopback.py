"""The base of every upstream simulator: a threaded HTTP server on 127.0.0.1 that records what it receives,
answers through one `answer(request)` method, and serves real PNGs at `/files/<W>x<H>/<name>.png`.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def png_bytes(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


@dataclass
class Captured:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or text
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Answer:
    status: int
    body: Any  # dict/list -> JSON; bytes -> as is
    headers: dict[str, str] | None = None

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """The body as bytes and every header to send with it (JSON by default, Content-Length set)."""
        payload = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        headers = {"Content-Type": "application/json", **(self.headers or {}), "Content-Length": str(len(payload))}
        return payload, headers


def field_problem(body: Any, required: tuple[str, ...], allowed: set[str]) -> str | None:
    """What a service that checks its body's fields would refuse: not an object, a missing or unknown field."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for name in required:
        if name not in body:
            return f"Missing required parameter: '{name}'."
    unknown = sorted(set(body) - allowed)
    return f"Unknown parameter: '{unknown[0]}'." if unknown else None


class LoopbackSimulator:
    """Subclasses implement `answer(request) -> Answer`; use as a context manager.

    `intercept`, when set, sees every request first: an Answer it returns is sent instead of the simulator's
    own (e.g. a hostile upstream echoing the request's headers), None lets the simulator answer.
    """

    generation_path = "/v1/images/generations"  # where the dialect takes image requests

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Captured] = []
        self.image_downloads = 0
        self.lock = threading.Lock()
        self.intercept: Callable[[Captured], Answer | None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def file_url(self, width: int, height: int, name: str) -> str:
        return f"{self.base_url}/files/{width}x{height}/{name}.png?x-expires=1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def generations(self) -> list[Captured]:
        """The image requests received, in order."""
        return [r for r in self.requests if r.path == self.generation_path]

    def answer(self, request: Captured) -> Answer:  # pragma: no cover - abstract
        raise NotImplementedError

    def respond(self, handler: Any, request: Captured) -> None:
        """Write the answer to `request` (a hook for simulators that misbehave on the wire: drip, hang)."""
        handler._send((self.intercept and self.intercept(request)) or self.answer(request))

    def _serve_file(self, path: str) -> Answer:
        try:
            width, height = map(int, path.split("/")[2].split("x"))
        except (IndexError, ValueError):
            return Answer(404, {"error": "not found"})
        with self.lock:
            self.image_downloads += 1
        return Answer(200, png_bytes(width, height), {"Content-Type": "image/png"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                if self.command == "GET" and parts.path.startswith("/files/"):
                    return self._send(sim._serve_file(parts.path))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                request = Captured(self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                                   {k.lower(): v for k, v in self.headers.items()}, body)
                with sim.lock:
                    sim.requests.append(request)
                sim.respond(self, request)

            do_GET = do_POST = _handle  # noqa: N815 - http.server naming

            def _send(self, answer: Answer) -> None:
                payload, headers = answer.encoded()
                self.send_response(answer.status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler
