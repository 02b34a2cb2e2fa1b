"""A loopback simulator of the `openai` dialect (OpenAI's Images API as relays serve it, with the gpt-image parameters).

It checks what the real service checks (path, bearer key, no field outside the Images reference's generation
fields, model-specific sizes and n, no response_format for gpt-image models), can be slow, can fail a scripted
number of times with 429/503, and answers with URLs (served by itself, real PNGs) or base64. Every request it
receives is recorded for assertions.

`POST /v1/images/edits` and `POST /v1/images/variations` take `multipart/form-data` as the Images reference
describes (recorded as a `Form`, see `edits` / `variations`):
- the image file(s) under `image` (one) or `image[]` (the SDK's name for a list); `mask` optional; text fields
  only from the reference (`unknown_parameter` otherwise); `prompt` required for edits, refused by variations;
- `model` defaults to dall-e-2; edits take dall-e-2 or a gpt-image model (dall-e-3 and others: 400),
  variations dall-e-2 only;
- dall-e-2: exactly one image, a square PNG under 4 MB; for an edit without a mask the PNG has an alpha
  channel (RGBA, LA or L, the service's "format must be in" rule); prompt at most 1000 characters; sizes
  256x256, 512x512, 1024x1024; gpt-image-only fields (background, input_fidelity, output_format,
  output_compression, partial_images) refused;
- gpt-image: 1 to 16 images, each PNG, JPEG or WebP by its bytes and declared as such (image/png, image/jpeg,
  image/webp: application/octet-stream is refused), under 50 MB; prompt at most 32000 characters; sizes
  1024x1024, 1536x1024, 1024x1536, auto (the first image's size); no response_format (always b64_json);
- a mask: one PNG under 4 MB with an alpha channel, of the same size as the (first) image;
- `n` an integer 1..10; enum fields (response_format, quality, background, output_format, input_fidelity)
  and output_compression (0..100) checked; a JSON or malformed body is a 400.
Answers are as for generations: n images at the requested size, as URLs or b64_json.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from .loopback import (Answer, Captured, Form, LoopbackSimulator, field_problem, image_kind, image_size, png_bytes,
                       png_header)

__all__ = ["Behaviour", "OpenAISimulator", "png_bytes"]

SIZES = {
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}
FIELDS = {"model", "prompt", "n", "size", "quality", "response_format", "style", "user", "background", "moderation",
          "output_compression", "output_format", "partial_images", "stream"}
EDIT_FIELDS = {"model", "prompt", "n", "size", "response_format", "user", "quality", "background", "input_fidelity",
               "output_format", "output_compression", "partial_images", "stream"}
VARIATION_FIELDS = {"model", "n", "size", "response_format", "user"}
IMAGE_FIELDS = ("image", "image[]")
GPT_IMAGE_ONLY = ("background", "input_fidelity", "output_format", "output_compression", "partial_images")
CHOICES = {
    "response_format": {"url", "b64_json"},
    "background": {"transparent", "opaque", "auto"},
    "output_format": {"png", "jpeg", "webp"},
    "input_fidelity": {"high", "low"},
}
QUALITY = {"dall-e-2": {"standard", "auto"}, "gpt-image": {"low", "medium", "high", "auto"}}
MB = 1024 * 1024
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


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
        if request.method == "POST" and request.path == self.edit_path:
            return self.edit(request.headers, request.body)
        if request.method == "POST" and request.path == self.variation_path:
            return self.edit(request.headers, request.body, variation=True)
        if request.path != "/v1/images/generations" or request.method != "POST":
            return Answer(404, _error("Invalid URL", "not_found"))
        return self.generate(request.headers, request.body)

    def _gate(self, headers: dict[str, str]) -> Answer | None:
        """The key check and the scripted failures every image endpoint goes through first."""
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, _error("Incorrect API key provided: sk-****.", "invalid_api_key"))
        with self.lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            extra = {"Retry-After": self.behaviour.retry_after} if self.behaviour.retry_after else {}
            return Answer(failure, _error("The server is overloaded, try again.", "overloaded"), extra)
        return None

    def generate(self, headers: dict[str, str], body: Any) -> Answer:
        if refused := self._gate(headers):
            return refused
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

    # -- edits and variations ----------------------------------------------------------------------------------
    def edit(self, headers: dict[str, str], form: Any, variation: bool = False) -> Answer:
        """`POST /v1/images/edits` (or `/v1/images/variations` with `variation`): see the module docstring."""
        if refused := self._gate(headers):
            return refused
        if not isinstance(form, Form):
            what = ("Could not parse multipart form" if isinstance(form, str) and form
                    else f"Invalid Content-Type header ({headers.get('content-type', '')}), expected "
                         "multipart/form-data")
            return Answer(400, _error(f"{what}.", "invalid_request", None))
        problem = _edit_problem(form, variation)
        if problem:
            message, code, param = problem
            return Answer(400, _error(message, code, param))
        model = form.value("model") or "dall-e-2"
        family = "gpt-image" if model.startswith("gpt-image") else model
        prompt = form.value("prompt") or ""
        if "policy" in prompt:
            return Answer(400, _error("Your request was rejected as a result of our safety system.",
                                      "content_policy_violation"))
        time.sleep(self.behaviour.delay_s)
        n = int(form.value("n") or 1)
        size = form.value("size") or ("auto" if family == "gpt-image" else "1024x1024")
        if size == "auto":
            width, height = image_size(form.files_named(*IMAGE_FIELDS)[0]) or (1024, 1024)
        else:
            width, height = map(int, size.split("x"))
        mode = self.behaviour.mode or ("b64_json" if family == "gpt-image" else form.value("response_format") or "url")
        kind = "variation" if variation else "edit"
        data = [{"b64_json": base64.b64encode(png_bytes(width, height)).decode()} if mode == "b64_json"
                else {"url": self.file_url(width, height, f"{kind}-{i}")} for i in range(n)]
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if family == "gpt-image":
            images = len(form.files_named(*IMAGE_FIELDS, "mask"))
            text = max(1, len(prompt) // 4)
            answer["usage"] = {"input_tokens": text + 194 * images, "output_tokens": 4160 * n,
                               "total_tokens": text + 194 * images + 4160 * n,
                               "input_tokens_details": {"text_tokens": text, "image_tokens": 194 * images}}
        return Answer(200, answer)


def _edit_problem(form: Form, variation: bool) -> tuple[str, str, str | None] | None:
    """What the real service refuses in an edit (or variation) form: (message, code, param), or None."""
    allowed = VARIATION_FIELDS if variation else EDIT_FIELDS
    file_fields = ("image",) if variation else (*IMAGE_FIELDS, "mask")
    for name in form.fields:
        if name in file_fields:
            return f"Invalid type for '{name}': expected a file, but got a string instead.", "invalid_type", name
        if name not in allowed:
            return f"Unknown parameter: '{name}'.", "unknown_parameter", name
    for upload in form.files:
        if upload.field not in file_fields:
            return f"Unknown parameter: '{upload.field}'.", "unknown_parameter", upload.field
    model = form.value("model") or "dall-e-2"
    family = "gpt-image" if model.startswith("gpt-image") else model
    if variation and model != "dall-e-2":
        return f"Invalid value: '{model}'. Image variations support only 'dall-e-2'.", "invalid_value", "model"
    if family not in ("dall-e-2", "gpt-image"):
        return (f"Invalid value: '{model}'. Value must be 'dall-e-2' or a gpt-image model: {model} cannot edit "
                "images.", "invalid_value", "model")
    if not variation:
        prompt = form.value("prompt")
        if not prompt:
            return "Missing required parameter: 'prompt'.", "missing_required_parameter", "prompt"
        limit = 1000 if family == "dall-e-2" else 32000
        if len(prompt) > limit:
            return (f"Invalid 'prompt': string too long. Expected a string with maximum length {limit}, but got "
                    f"a string with length {len(prompt)} instead.", "string_above_max_length", "prompt")
    images = form.files_named(*IMAGE_FIELDS)
    if not images:
        return "Missing required parameter: 'image'.", "missing_required_parameter", "image"
    if family == "dall-e-2":
        if len(images) != 1:
            return f"dall-e-2 takes exactly one image, got {len(images)}.", "invalid_value", images[0].field
        upload = images[0]
        header = png_header(upload.data)
        if header is None or len(upload.data) >= 4 * MB:
            return "Uploaded image must be a PNG and less than 4 MB.", "invalid_image_format", upload.field
        width, height, colour = header
        if width != height:
            return "Uploaded image must be square.", "invalid_image_format", upload.field
        if not variation and not form.files_named("mask") and colour not in ("RGBA", "LA", "L"):
            return (f"Invalid input image - format must be in ['RGBA', 'LA', 'L'], got {colour}.",
                    "invalid_image_format", upload.field)
    else:
        if len(images) > 16:
            return f"Too many images: at most 16, got {len(images)}.", "invalid_value", images[0].field
        for upload in images:
            declared = upload.content_type.split(";")[0].strip().lower()
            if declared not in IMAGE_TYPES.values():
                return (f"Invalid file '{upload.field}': unsupported mimetype ('{declared or 'none'}'). Supported "
                        "file formats are 'image/jpeg', 'image/png', and 'image/webp'.", "invalid_value",
                        upload.field)
            kind = image_kind(upload.data)
            if kind is None or image_size(upload) is None:
                return (f"Invalid image file or mode for image '{upload.filename}', please check your image "
                        "file.", "invalid_image_file", upload.field)
            if len(upload.data) >= 50 * MB:
                return f"Image '{upload.filename}' must be less than 50 MB.", "image_too_large", upload.field
    masks = form.files_named("mask")
    if len(masks) > 1:
        return "Only one mask may be given.", "invalid_value", "mask"
    if masks:
        header = png_header(masks[0].data)
        if header is None or len(masks[0].data) >= 4 * MB:
            return "Invalid mask image format - the mask must be a PNG less than 4 MB.", \
                "invalid_mask_image_format", "mask"
        if header[:2] != image_size(images[0]):
            return "Invalid mask: the mask and the image must have the same dimensions.", "invalid_value", "mask"
        if header[2] not in ("RGBA", "LA"):
            return "Invalid mask image format - mask image missing alpha channel.", \
                "invalid_mask_image_format", "mask"
    return _value_problem(form, family, variation)


def _value_problem(form: Form, family: str, variation: bool) -> tuple[str, str, str | None] | None:
    n = form.value("n")
    if n is not None:
        if not n.strip().lstrip("-").isdigit():
            return f"Invalid type for 'n': expected an integer, but got '{n}' instead.", "invalid_type", "n"
        if not 1 <= int(n) <= 10:
            return f"Invalid 'n': integer {n} out of range 1..10.", "invalid_value", "n"
    size = form.value("size")
    if size is not None and size not in SIZES[family]:
        return f"Invalid size '{size}' for {form.value('model') or 'dall-e-2'}.", "invalid_size", "size"
    if family == "gpt-image" and form.value("response_format") is not None:
        return "Unknown parameter: 'response_format'.", "unknown_parameter", "response_format"
    if family == "dall-e-2":
        for name in GPT_IMAGE_ONLY:
            if form.value(name) is not None:
                return f"Invalid parameter: '{name}' is only supported for gpt-image models.", "invalid_value", name
    for name, choices in CHOICES.items():
        value = form.value(name)
        if value is not None and value not in choices:
            return f"Invalid value: '{value}'. Supported values are: {sorted(choices)}.", "invalid_value", name
    quality = form.value("quality")
    if quality is not None and quality not in QUALITY[family]:
        return f"Invalid value: '{quality}' for quality with this model.", "invalid_value", "quality"
    compression = form.value("output_compression")
    if compression is not None and not (compression.isdigit() and 0 <= int(compression) <= 100):
        return "Invalid 'output_compression': an integer 0..100.", "invalid_value", "output_compression"
    if form.value("background") == "transparent" and form.value("output_format") == "jpeg":
        return "Transparent background requires output_format png or webp.", "invalid_value", "background"
    return None


def _error(message: str, code: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
