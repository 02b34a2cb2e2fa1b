"""A loopback simulator of the `jimeng` upstream (a relay in front of ByteDance's Jimeng image models).

It checks what the relay's API page says the service takes: `POST /v1/images/generations`, `Authorization: Bearer <key>`
(401 otherwise), a JSON body with `prompt` (at most 1000 characters) and `size`, both required, where `size`
is an ASPECT RATIO from the supported list: a pixel size such as `1024x1024` is refused with a 400, as the
real service would. Whatever is asked, it answers FOUR images, `{created, data: [{url}]}`, with signed,
expiring-looking URLs (`x-expires`, `x-signature`) that it serves itself as real PNGs of the ratio's shape.
A prompt containing "forbidden" is refused as a content-policy violation; a scripted list of failure
statuses (429/503) is answered first. Every request is recorded.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .loopback import Answer, Captured, LoopbackSimulator

__all__ = ["Behaviour", "JimengSimulator", "PIXELS"]

# Supported ratios and the (small, fast to draw) images the simulator answers for each.
PIXELS = {"1:1": (512, 512), "4:3": (576, 432), "3:4": (432, 576), "16:9": (640, 360), "9:16": (360, 640),
          "3:2": (576, 384), "2:3": (384, 576), "21:9": (672, 288)}
IMAGES_PER_CALL = 4


@dataclass
class Behaviour:
    failures: list[int] = field(default_factory=list)  # statuses to answer first, in order (e.g. [429, 503])
    delay_s: float = 0.0


class JimengSimulator(LoopbackSimulator):
    def __init__(self, api_key: str = "sk-jimeng", behaviour: Behaviour | None = None, port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()

    def answer(self, request: Captured) -> Answer:
        if request.path != "/v1/images/generations" or request.method != "POST":
            return Answer(404, _error("Invalid URL", "not_found"))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, _error("Invalid API key.", "invalid_api_key"))
        with self.lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            return Answer(failure, _error("The service is busy, try again later.", "busy"))
        body = request.body
        if not isinstance(body, dict):
            return Answer(400, _error("The body must be a JSON object.", "invalid_json"))
        prompt, size = body.get("prompt"), body.get("size")
        if not isinstance(prompt, str) or not prompt:
            return Answer(400, _error("Missing required parameter: 'prompt'.", "missing_required_parameter"))
        if len(prompt) > 1000:
            return Answer(400, _error("'prompt' is longer than 1000 characters.", "invalid_value"))
        if not isinstance(size, str) or not size:
            return Answer(400, _error("Missing required parameter: 'size'.", "missing_required_parameter"))
        if size not in PIXELS:
            return Answer(400, _error(f"Unsupported size '{size}': use an aspect ratio, one of "
                                      f"{', '.join(PIXELS)}.", "invalid_size"))
        if "forbidden" in prompt:
            return Answer(400, _error("The prompt violates the content policy.", "content_policy_violation"))
        time.sleep(self.behaviour.delay_s)
        width, height = PIXELS[size]
        data = []
        for _ in range(IMAGES_PER_CALL):
            name = uuid.uuid4().hex
            signed = f"{self.file_url(width, height, name)}&x-signature={name[:12]}%3D&format=.png"
            data.append({"url": signed})
        return Answer(200, {"created": int(time.time()), "data": data})


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
