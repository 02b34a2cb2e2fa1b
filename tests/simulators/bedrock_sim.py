"""A loopback simulator of Amazon Bedrock's runtime for the `bedrock` dialect: `POST /model/{modelId}/invoke`.

It checks what Bedrock checks before a model sees the request: a SigV4 signature (an `Authorization` header
`AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/bedrock/aws4_request, SignedHeaders=..., Signature=...`
whose region is the simulator's, and `X-Amz-Date`; otherwise 403 `UnrecognizedClientException` / 400
`IncompleteSignature` as Bedrock answers them), a JSON body, and a model id it serves (404
`ResourceNotFoundException`). Then the body, per model family, as the model parameter pages document it:

- Stability (`stability.*`): only prompt (1-10,000 characters), mode (`text-to-image`; sd3 models only),
  aspect_ratio (one of nine), output_format (jpeg, png), seed (0-4,294,967,294), negative_prompt; it answers
  `{seeds, finish_reasons: [null], images: [b64]}` with one image of the ratio's size, in the asked format.
- Amazon (`amazon.nova-canvas-*`, `amazon.titan-image-generator-*`): taskType `TEXT_IMAGE`, textToImageParams
  `{text (1-1024 characters, 512 for Titan), negativeText?}`, imageGenerationConfig `{width, height (320-4096,
  multiples of 16, at most 4,194,304 pixels, 1:4 to 4:1), numberOfImages (1-5), quality (standard, premium),
  cfgScale (1.1-10), seed (0-858,993,459; Titan 2,147,483,646)}`; it answers `{images: [b64 PNG of width x
  height, ...]}`.

Anything else is a 400 `ValidationException`. Errors come as Bedrock sends them: the status, an
`x-amzn-ErrorType` header and `{"message": ...}`. Quirks: a prompt containing "blocked" is refused by the content
filters (400 ValidationException "This request has been blocked by our content filters."), one containing
"filtered" is filtered after generation and still answers HTTP 200 (Stability: `finish_reasons: ["Filter
reason: output image"]` and no image; Amazon: `error` and one image fewer than asked). Every request is recorded.
"""

from __future__ import annotations

import base64
import io
import random
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from PIL import Image

from .loopback import Answer, Captured, LoopbackSimulator, png_bytes

PATH = re.compile(r"^/model/([^/]+)/invoke$")
RATIO_PIXELS = {"1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "2:3": (832, 1216),
                "3:2": (1216, 832), "4:5": (896, 1088), "5:4": (1088, 896), "9:16": (768, 1344), "9:21": (640, 1536)}
STABILITY_FIELDS = {"prompt", "mode", "aspect_ratio", "output_format", "seed", "negative_prompt"}
AMAZON_CONFIG_FIELDS = {"width", "height", "numberOfImages", "quality", "cfgScale", "seed"}
MODELS = ("stability.sd3-5-large-v1:0", "stability.stable-image-ultra-v1:1", "stability.stable-image-core-v1:1",
          "amazon.nova-canvas-v1:0", "amazon.titan-image-generator-v2:0")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/bedrock/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}$")
BLOCKED = "This request has been blocked by our content filters."


@dataclass
class Behaviour:
    #: errors to answer first, in order: (HTTP status, Bedrock error code), e.g. (429, "ThrottlingException")
    failures: list[tuple[int, str]] = field(default_factory=list)
    body: bytes | None = None  # answer 200 with exactly these bytes (e.g. not JSON)


class BedrockSimulator(LoopbackSimulator):
    region = "us-east-1"

    def __init__(self, behaviour: Behaviour | None = None, port: int = 0, models: tuple[str, ...] = MODELS):
        super().__init__(port)
        self.behaviour = behaviour or Behaviour()
        self.models = models
        self.api_key = "(SigV4, no key)"  # what `make simulators` prints

    @property
    def generations(self) -> list[Captured]:
        return [r for r in self.requests if PATH.match(r.path)]

    @staticmethod
    def model_of(request: Captured) -> str:
        match = PATH.match(request.path)
        return unquote(match[1]) if match else ""

    def answer(self, request: Captured) -> Answer:
        match = PATH.match(request.path)
        if request.method != "POST" or not match:
            return error(404, "UnknownOperationException", "Unknown operation.")
        if problem := self.signature_problem(request.headers):
            return problem
        model = unquote(match[1])
        if model not in self.models:
            return error(404, "ResourceNotFoundException", "The provided model identifier is invalid.")
        with self.lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            return error(failure[0], failure[1], f"{failure[1]}: simulated.")
        if self.behaviour.body is not None:
            return Answer(200, self.behaviour.body)
        if not request.headers.get("content-type", "").startswith("application/json") or \
                not isinstance(request.body, dict):
            return error(400, "ValidationException", "The request body must be a JSON object.")
        stability = model.startswith("stability.")
        problem = self.stability_problem(model, request.body) if stability else self.amazon_problem(model,
                                                                                                  request.body)
        if problem:
            return error(400, "ValidationException", f"Malformed input request: {problem}, please reformat your "
                                                     f"input and try again.")
        prompt = request.body["prompt"] if stability else request.body["textToImageParams"]["text"]
        if "blocked" in prompt:
            return error(400, "ValidationException", BLOCKED)
        headers = {"x-amzn-RequestId": f"req-{len(self.requests)}"}
        if stability:
            return Answer(200, self.stability_answer(request.body, filtered="filtered" in prompt), headers)
        return Answer(200, self.amazon_answer(request.body, filtered="filtered" in prompt), headers)

    def signature_problem(self, headers: dict[str, str]) -> Answer | None:
        auth = headers.get("authorization", "")
        if not auth:
            return error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH.match(auth)
        if not match or not headers.get("x-amz-date"):
            return error(400, "IncompleteSignature", "The request signature does not conform to AWS standards.")
        if match[3] != self.region:
            return error(403, "InvalidSignatureException", f"Credential should be scoped to a valid region "
                                                           f"('{self.region}'), not '{match[3]}'.")
        signed = set(match[4].split(";"))
        if not {"host", "x-amz-date"} <= signed or not headers.get("x-amz-date", "").startswith(match[2]):
            return error(403, "InvalidSignatureException", "The request signature we calculated does not match.")
        return None

    @staticmethod
    def stability_problem(model: str, body: dict[str, Any]) -> str | None:
        unknown = sorted(set(body) - STABILITY_FIELDS)
        if unknown:
            return f"extraneous key [{unknown[0]}] is not permitted"
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= 10000:
            return "prompt must be a string of 1 to 10000 characters"
        if "mode" in body and (body["mode"] != "text-to-image" or not model.startswith("stability.sd3")):
            return f"mode {body['mode']!r} is not valid here"
        if "aspect_ratio" in body and body["aspect_ratio"] not in RATIO_PIXELS:
            return f"aspect_ratio {body['aspect_ratio']!r} is not one of {sorted(RATIO_PIXELS)}"
        if "output_format" in body and body["output_format"] not in ("jpeg", "png"):
            return f"output_format {body['output_format']!r} is not one of jpeg, png"
        seed = body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 4_294_967_294:
            return "seed must be an integer from 0 to 4294967294"
        return None

    @staticmethod
    def amazon_problem(model: str, body: dict[str, Any]) -> str | None:
        if set(body) - {"taskType", "textToImageParams", "imageGenerationConfig"}:
            return f"extraneous key [{sorted(set(body))[0]}] is not permitted"
        if body.get("taskType") != "TEXT_IMAGE":
            return "taskType must be TEXT_IMAGE"
        params = body.get("textToImageParams")
        if not isinstance(params, dict) or set(params) - {"text", "negativeText"}:
            return "textToImageParams must be {text, negativeText?}"
        limit = 512 if "titan" in model else 1024
        if not isinstance(params.get("text"), str) or not 1 <= len(params["text"]) <= limit:
            return f"text must be a string of 1 to {limit} characters"
        config = body.get("imageGenerationConfig", {})
        if not isinstance(config, dict) or set(config) - AMAZON_CONFIG_FIELDS:
            return f"imageGenerationConfig takes only {sorted(AMAZON_CONFIG_FIELDS)}"
        for name in ("width", "height", "numberOfImages", "seed"):
            if name in config and (not isinstance(config[name], int) or isinstance(config[name], bool)):
                return f"{name} must be an integer"
        width, height = config.get("width", 1024), config.get("height", 1024)
        if not all(320 <= side <= 4096 and side % 16 == 0 for side in (width, height)):
            return "width and height must be 320-4096 and divisible by 16"
        if width * height > 4_194_304 or max(width, height) > 4 * min(width, height):
            return "the image must have at most 4194304 pixels and an aspect ratio from 1:4 to 4:1"
        if not 1 <= config.get("numberOfImages", 1) <= 5:
            return "numberOfImages must be 1 to 5"
        if config.get("quality", "standard") not in ("standard", "premium"):
            return "quality must be standard or premium"
        if not 0 <= config.get("seed", 0) <= (2_147_483_646 if "titan" in model else 858_993_459):
            return "seed is out of range"
        return None

    @staticmethod
    def image(width: int, height: int, fmt: str = "png") -> bytes:
        """A real image of width x height in `fmt` (png, jpeg)."""
        if fmt == "png":
            return png_bytes(width, height)
        out = io.BytesIO()
        Image.new("RGB", (width, height), (40, 90, 200)).save(out, "JPEG")
        return out.getvalue()

    def stability_answer(self, body: dict[str, Any], *, filtered: bool) -> dict[str, Any]:
        seed = body.get("seed") or random.randint(1, 4_294_967_294)
        if filtered:
            return {"seeds": [seed], "finish_reasons": ["Filter reason: output image"], "images": []}
        width, height = RATIO_PIXELS[body.get("aspect_ratio", "1:1")]
        data = self.image(width, height, body.get("output_format", "png"))
        return {"seeds": [seed], "finish_reasons": [None], "images": [base64.b64encode(data).decode()]}

    def amazon_answer(self, body: dict[str, Any], *, filtered: bool) -> dict[str, Any]:
        config = body.get("imageGenerationConfig", {})
        width, height, n = config.get("width", 1024), config.get("height", 1024), config.get("numberOfImages", 1)
        images = [base64.b64encode(self.image(width, height)).decode() for _ in range(n - 1 if filtered else n)]
        if filtered:
            return {"images": images, "error": "1 out of the generated images has been blocked by our content "
                                               "filters."}
        return {"images": images}


def error(status: int, code: str, message: str) -> Answer:
    """An error as Bedrock sends it: the status, the code in `x-amzn-ErrorType`, and `{"message"}`."""
    return Answer(status, {"message": message}, {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/"
                                                                    f"com.amazon.bedrock/"})
