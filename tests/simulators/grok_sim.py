"""A loopback simulator of the `grok` dialect (xAI's Grok images API behind a relay): `POST /v1/images/generations`.

It checks what the relay's API page documents: the Bearer key (401 otherwise); the required fields (prompt, model,
aspect_ratio, n, quality, resolution, response_format); no field the relay's API page does not list; `size`, when sent,
one of the five sizes; `n` 1..10; `aspect_ratio`, `quality` and `resolution` lists of exactly n entries, each
null or one of the listed values; `response_format` url or b64_json once stripped (the API page's own example
sends "b64_json ", so stray whitespace is tolerated); prompt at most 1000 characters. It answers the way the
API page shows: `{created, data: [{url} | {b64_json}], usage: {generated_images, output_tokens, total_tokens}}`,
with images of the requested size (real PNGs it serves itself). Every request is recorded.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from .loopback import Answer, Captured, LoopbackSimulator, field_problem, png_bytes

PATH = "/v1/images/generations"
SIZES = {"960x960", "720x1280", "1280x720", "1168x784", "784x1168"}
RATIOS = {"1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "9:19.5", "19.5:9", "9:20", "20:9", "1:2", "2:1", "auto"}
QUALITIES = {"low", "medium", "high"}
RESOLUTIONS = {"1k", "2k"}
FIELDS = {"model", "prompt", "size", "aspect_ratio", "n", "quality", "resolution", "response_format"}
REQUIRED = ("prompt", "model", "aspect_ratio", "n", "quality", "resolution", "response_format")
DEFAULT_SIZE = "960x960"
TOKENS_PER_IMAGE = 16384


@dataclass
class Behaviour:
    failures: list[int] = field(default_factory=list)  # statuses to answer first, in order (e.g. [503])
    mode: str | None = None  # force "url" or "b64_json" whatever was asked
    empty: bool = False  # answer 200 with no images


class GrokSimulator(LoopbackSimulator):
    def __init__(self, api_key: str = "xai-upstream", behaviour: Behaviour | None = None, port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()

    def answer(self, request: Captured) -> Answer:
        if request.path != PATH or request.method != "POST":
            return Answer(404, _error("Not found", "not_found"))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, _error("Incorrect API key provided.", "invalid_api_key"))
        with self.lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            return Answer(failure, _error("The service is busy, try again later.", "overloaded"))
        problem = self.problem(request.body)
        if problem:
            return Answer(400, _error(problem, "invalid_request"))
        body = request.body
        if "policy" in body["prompt"]:
            return Answer(400, _error("Generated image rejected by content moderation.", "content_policy_violation"))
        if self.behaviour.empty:
            return Answer(200, {"created": int(time.time()), "data": [],
                                "error": {"message": "Image generation failed"}})
        n = body["n"]
        width, height = map(int, body.get("size", DEFAULT_SIZE).split("x"))
        mode = self.behaviour.mode or body["response_format"].strip()
        data = []
        for i in range(n):
            if mode == "b64_json":
                data.append({"b64_json": base64.b64encode(png_bytes(width, height)).decode()})
            else:
                data.append({"url": self.file_url(width, height, f"grok-{i}")})
        return Answer(200, {"created": int(time.time()), "data": data,
                            "usage": {"generated_images": n, "output_tokens": TOKENS_PER_IMAGE * n,
                                      "total_tokens": TOKENS_PER_IMAGE * n}})

    @staticmethod
    def problem(body: Any) -> str | None:
        """What the service would refuse in this body, or None."""
        if shape := field_problem(body, REQUIRED, FIELDS):
            return shape
        if not isinstance(body["prompt"], str) or not body["prompt"] or len(body["prompt"]) > 1000:
            return "'prompt' must be a string of 1 to 1000 characters."
        if not isinstance(body["model"], str) or not body["model"]:
            return "'model' must be a string."
        if "size" in body and body["size"] not in SIZES:
            return f"Invalid size '{body['size']}'. Supported: {', '.join(sorted(SIZES))}."
        n = body["n"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            return "'n' must be an integer from 1 to 10."
        for name, allowed in (("aspect_ratio", RATIOS), ("quality", QUALITIES), ("resolution", RESOLUTIONS)):
            value = body[name]
            if not isinstance(value, list) or len(value) != n:
                return f"'{name}' must be a list of n ({n}) entries."
            bad = [v for v in value if v is not None and v not in allowed]
            if bad:
                return f"Invalid {name} {bad[0]!r}."
        fmt = body["response_format"]
        if not isinstance(fmt, str) or fmt.strip() not in ("url", "b64_json"):
            return "'response_format' must be url or b64_json."
        return None


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
