"""A loopback simulator of the `envelope` upstream: a relay that takes OpenAI's Images body at
`POST /api/v1/image/generation` and answers in a `{code, data, message}` envelope.

It checks what the relay's API page documents: `Authorization: Bearer <key>` (HTTP 401 otherwise); the fields
`model` (the documented fixed value `gpt-image-1.5`, or the models it is told to serve), `prompt`, `n`
(1..10; 1 for dall-e-3), `size` (per model family) and `stream`, which must be false; the enums of
`background`, `moderation`, `output_format`, `quality` and `style` and the families they belong to;
`output_compression` in 0..100 for gpt-image models only (its own text gives it a default, so it is not
required despite its asterisk there); no `response_format` for gpt-image models; no `partial_images` (a
streaming option, and we never stream).

It answers the way that page shows, quirks included: HTTP 200 with `{code, data, message, request_id}`, where
only `code == 0` is a success and a refusal is an HTTP 200 too: invalid input is `code 400` with a message,
and a prompt containing "forbidden" is `code 400`, "prompt violates content policy". `Behaviour` scripts
in-band errors answered first (e.g. `(429, "rate limit exceeded")`), data URLs instead of URLs, or a
`code 0` answer without urls (task_status "processing"). Every request and answer is recorded.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .loopback import Answer, Captured, LoopbackSimulator, png_bytes

__all__ = ["Behaviour", "EnvelopeSimulator"]

PATH = "/api/v1/image/generation"
SIZES = {
    "gpt-image": {"1024x1024", "1536x1024", "1024x1536", "auto"},
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
}
ENUMS = {
    "background": ({"transparent", "opaque", "auto"}, {"gpt-image"}),
    "moderation": ({"low", "auto"}, {"gpt-image"}),
    "output_format": ({"png", "jpeg", "webp"}, {"gpt-image"}),
    "style": ({"vivid", "natural"}, {"dall-e-3"}),
}
QUALITIES = {"gpt-image": {"low", "medium", "high", "auto"}, "dall-e-3": {"standard", "hd"}}
PROMPT_MAX = {"gpt-image": 32000, "dall-e-2": 1000, "dall-e-3": 4000}


@dataclass
class Behaviour:
    errors: list[tuple[int, str]] = field(default_factory=list)  # in-band (code, message) answered first
    policy_code: int = 400
    mode: str = "url"  # "url" or "data_url"
    unfinished: bool = False  # code 0, no urls, task_status "processing"


class EnvelopeSimulator(LoopbackSimulator):
    generation_path = PATH
    def __init__(self, api_key: str = "sk-envelope", behaviour: Behaviour | None = None,
                 models: tuple[str, ...] = ("gpt-image-1.5",), port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()
        self.models = set(models)
        self.answers: list[dict[str, Any]] = []

    def answer(self, request: Captured) -> Answer:
        request_id = uuid.uuid4().hex
        if request.path != PATH or request.method != "POST":
            return self._envelope(404, f"no route for {request.method} {request.path}", request_id, status=404)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._envelope(401, "invalid token", request_id, status=401)
        with self.lock:
            scripted = self.behaviour.errors.pop(0) if self.behaviour.errors else None
        if scripted:
            return self._envelope(scripted[0], scripted[1], request_id)
        problem = self._check(request.body)
        if problem:
            return self._envelope(400, problem, request_id)
        body = request.body
        if "forbidden" in body["prompt"]:
            return self._envelope(self.behaviour.policy_code, "prompt violates content policy", request_id)
        task_id = f"task_{uuid.uuid4().hex[:16]}"
        n, size = body["n"], body["size"]
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        width, height = width // 4, height // 4  # same shape, quicker to draw and store
        if self.behaviour.unfinished:
            urls: list[str] = []
            status = "processing"
        elif self.behaviour.mode == "data_url":
            urls = ["data:image/png;base64," + base64.b64encode(png_bytes(width, height)).decode()] * n
            status = "success"
        else:
            urls = [self.file_url(width, height, f"{task_id}-{i}") for i in range(n)]
            status = "success"
        input_tokens = max(1, len(body["prompt"]) // 4)
        output_tokens = 1056 * len(urls)
        data = {"urls": urls,
                "usage": {"images": len(urls), "seconds": 7, "input_tokens": input_tokens,
                          "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens},
                "expired": str(int(time.time()) + 3600), "task_id": task_id, "task_status": status}
        return self._envelope(0, "success", request_id, data=data)

    def _check(self, body: Any) -> str | None:
        """The first problem with the body, as the service words it; None when it is acceptable."""
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        for name in ("model", "prompt", "n", "size", "stream"):
            if name not in body:
                return f"missing required parameter: {name}"
        model = body["model"]
        if model not in self.models:
            return f"model {model!r} is not supported"
        fam = "gpt-image" if model.startswith("gpt-image") else model
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt or len(prompt) > PROMPT_MAX.get(fam, 32000):
            return "invalid prompt"
        n = body["n"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10 or (fam == "dall-e-3" and n != 1):
            return f"invalid n: {n!r}"
        if fam in SIZES and body["size"] not in SIZES[fam]:
            return f"invalid size {body['size']!r} for {model}"
        if body["stream"] is not False:
            return "stream is not supported: stream must be false"
        if "partial_images" in body:
            return "partial_images is only supported when streaming"
        if "response_format" in body and fam == "gpt-image":
            return "response_format is not supported for gpt-image models"
        for name, (allowed, families) in ENUMS.items():
            if name in body and (fam not in families or body[name] not in allowed):
                return f"invalid {name}: {body[name]!r}"
        if "quality" in body and body["quality"] not in QUALITIES.get(fam, {body["quality"]}):
            return f"invalid quality: {body['quality']!r}"
        if "output_compression" in body:
            value = body["output_compression"]
            if fam != "gpt-image" or not isinstance(value, int) or not 0 <= value <= 100:
                return f"invalid output_compression: {value!r}"
        return None

    def _envelope(self, code: int, message: str, request_id: str, *, data: Any = None, status: int = 200) -> Answer:
        payload = {"code": code, "data": data, "message": message, "request_id": request_id}
        with self.lock:
            self.answers.append(payload)
        return Answer(status, payload)
