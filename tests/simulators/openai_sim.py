"""A loopback simulator of the `openai` dialect (seed 002, gpt-image parameters of seed 001).

It checks what the real service checks (path, bearer key, no field outside the Images reference's generation
fields, model-specific sizes and n, no response_format for gpt-image models), can be slow, can fail a scripted
number of times with 429/503, and answers with URLs (served by itself, real PNGs) or base64. Every request it
receives is recorded for assertions.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from .loopback import Answer, Captured, LoopbackSimulator, field_problem, png_bytes

__all__ = ["Behaviour", "OpenAISimulator", "png_bytes"]

SIZES = {
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}
FIELDS = {"model", "prompt", "n", "size", "quality", "response_format", "style", "user", "background", "moderation",
          "output_compression", "output_format", "partial_images", "stream"}


@dataclass
class Behaviour:
    delay_s: float = 0.0
    failures: list[int] = field(default_factory=list)  # statuses to answer first, in order (e.g. [429, 503])
    retry_after: str | None = None
    mode: str | None = None  # force "url" or "b64_json"; default: what the request asks (gpt-image: b64)


class OpenAISimulator(LoopbackSimulator):
    def __init__(self, api_key: str = "sk-upstream", behaviour: Behaviour | None = None, port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()

    def answer(self, request: Captured) -> Answer:
        if request.path != "/v1/images/generations" or request.method != "POST":
            return Answer(404, _error("Invalid URL", "not_found"))
        return self.generate(request.headers, request.body)

    def generate(self, headers: dict[str, str], body: Any) -> Answer:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, _error("Incorrect API key provided: sk-****.", "invalid_api_key"))
        with self.lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            extra = {"Retry-After": self.behaviour.retry_after} if self.behaviour.retry_after else {}
            return Answer(failure, _error("The server is overloaded, try again.", "overloaded"), extra)
        if not isinstance(body, dict) or not body.get("prompt"):
            return Answer(400, _error("Missing required parameter: 'prompt'.", "missing_required_parameter"))
        if unknown := field_problem(body, (), FIELDS):
            return Answer(400, _error(unknown, "unknown_parameter"))
        model = body.get("model", "dall-e-2")
        family = "gpt-image" if model.startswith("gpt-image") else model
        size = body.get("size", "auto" if family == "gpt-image" else "1024x1024")
        if family in SIZES and size not in SIZES[family]:
            return Answer(400, _error(f"Invalid size '{size}' for {model}.", "invalid_size"))
        n = body.get("n", 1)
        if family == "dall-e-3" and n != 1:
            return Answer(400, _error("You must provide n=1 for this model.", "invalid_value"))
        if family == "gpt-image" and "response_format" in body:
            return Answer(400, _error("Unknown parameter: 'response_format'.", "unknown_parameter"))
        if "policy" in body["prompt"]:
            return Answer(400, _error("Your request was rejected as a result of our safety system.",
                                      "content_policy_violation"))
        time.sleep(self.behaviour.delay_s)
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        mode = self.behaviour.mode or ("b64_json" if family == "gpt-image" else body.get("response_format", "url"))
        data = []
        for i in range(n):
            item: dict[str, Any] = {}
            if mode == "b64_json":
                item["b64_json"] = base64.b64encode(png_bytes(width, height)).decode()
            else:
                item["url"] = self.file_url(width, height, str(i))
            if family == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of {body['prompt']}"
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if family == "gpt-image":
            answer["usage"] = {"input_tokens": 12, "output_tokens": 4160 * n, "total_tokens": 12 + 4160 * n,
                               "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}}
        return Answer(200, answer)


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
