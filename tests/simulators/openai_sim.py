"""A loopback simulator of the `openai` dialect (seed 002, gpt-image parameters of seed 001).

It checks what the real service checks (path, bearer key, model-specific sizes and n, no response_format
for gpt-image models), can be slow, can fail a scripted number of times with 429/503, and answers with
URLs (served by itself, real PNGs) or base64. Every request it receives is recorded for assertions.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

SIZES = {
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}


def png_bytes(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Behaviour:
    delay_s: float = 0.0
    failures: list[int] = field(default_factory=list)  # statuses to answer first, in order (e.g. [429, 503])
    retry_after: str | None = None
    mode: str | None = None  # force "url" or "b64_json"; default: what the request asks (gpt-image: b64)


class OpenAISimulator:
    def __init__(self, api_key: str = "sk-upstream", behaviour: Behaviour | None = None):
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()
        self.requests: list[Captured] = []
        self.image_downloads = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def generations(self) -> list[Captured]:
        return [r for r in self.requests if r.path.startswith("/v1/images/generations")]

    def __enter__(self) -> "OpenAISimulator":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the fake service --------------------------------------------------------------------------------
    def answer(self, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], dict]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {}, _error("Incorrect API key provided: sk-****.", "invalid_api_key")
        with self._lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            extra = {"Retry-After": self.behaviour.retry_after} if self.behaviour.retry_after else {}
            return failure, extra, _error("The server is overloaded, try again.", "overloaded")
        if not isinstance(body, dict) or not body.get("prompt"):
            return 400, {}, _error("Missing required parameter: 'prompt'.", "missing_required_parameter")
        model = body.get("model", "dall-e-2")
        family = "gpt-image" if model.startswith("gpt-image") else model
        size = body.get("size", "auto" if family == "gpt-image" else "1024x1024")
        if family in SIZES and size not in SIZES[family]:
            return 400, {}, _error(f"Invalid size '{size}' for {model}.", "invalid_size")
        n = body.get("n", 1)
        if family == "dall-e-3" and n != 1:
            return 400, {}, _error("You must provide n=1 for this model.", "invalid_value")
        if family == "gpt-image" and "response_format" in body:
            return 400, {}, _error("Unknown parameter: 'response_format'.", "unknown_parameter")
        if "policy" in body["prompt"]:
            return 400, {}, _error("Your request was rejected as a result of our safety system.",
                                   "content_policy_violation")
        time.sleep(self.behaviour.delay_s)
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        mode = self.behaviour.mode or ("b64_json" if family == "gpt-image" else body.get("response_format", "url"))
        data = []
        for i in range(n):
            item: dict[str, Any] = {}
            if mode == "b64_json":
                item["b64_json"] = base64.b64encode(png_bytes(width, height)).decode()
            else:
                item["url"] = f"{self.base_url}/files/{width}x{height}/{i}.png?x-expires=1"
            if family == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of {body['prompt']}"
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if family == "gpt-image":
            answer["usage"] = {"input_tokens": 12, "output_tokens": 4160 * n, "total_tokens": 12 + 4160 * n,
                               "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}}
        return 200, {}, answer

    def _handler(self):
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if not self.path.startswith("/files/"):
                    return self._send(404, {}, _error("not found", "not_found"))
                width, height = map(int, self.path.split("/")[2].split("x"))
                payload = png_bytes(width, height)
                with sim._lock:
                    sim.image_downloads += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with sim._lock:
                    sim.requests.append(Captured("POST", self.path, headers, body))
                if not self.path.startswith("/v1/images/generations"):
                    return self._send(404, {}, _error("Invalid URL", "not_found"))
                self._send(*sim.answer(headers, body))

            def _send(self, status: int, headers: dict[str, str], body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
