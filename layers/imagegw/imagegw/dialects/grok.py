"""`grok` (seed 003): `POST {root}/v1/images/generations`, Bearer key, a synchronous OpenAI-like answer.

Request body (field order as the seed lists them):
    {model, prompt, size?, aspect_ratio: [..n], n, quality: [..n], resolution: [..n], response_format}

Translation rules:
- `model` is the route's upstream model; `prompt` as given (the capability table caps it at 1000 chars).
- `n` is always sent (the seed marks it required).
- `size`: only 960x960, 720x1280, 1280x720, 1168x784 and 784x1168 exist. A listed size is sent as is; any
  other `WxH` is mapped to the listed size nearest in aspect ratio (then area): 1024x1024 -> 960x960,
  1792x1024 -> 1280x720. A ratio in `size` ("16:9") becomes the listed size nearest that ratio, and the ratio
  itself also goes into `aspect_ratio` (unless the client set `aspect_ratio`), since the five sizes cannot
  express e.g. 9:19.5 exactly. With no `size`, the size comes from `aspect_ratio` if set; with neither,
  `size` is left out (it is the one optional field of the seed) and the upstream picks its default.
  A `size` of `auto` is treated as unset.
- `aspect_ratio`, `quality`, `resolution`: the seed marks them required and describes each as a list "whose
  length follows n" (its n=2 example: `[null, "1:1"]`), i.e. one entry per image, `null` where unset. We send
  a list of n equal entries: the client's value for every image, or `null` for every image when the client
  set nothing. Values are mapped onto the seed's lists when a request validated for another route's model
  lands here: a ratio not listed -> the nearest listed ratio; quality hd -> high, standard -> medium,
  auto -> null; resolution 4k -> 2k.
- `response_format` is always sent (required by the seed), stripped and lower-cased: the seed's own example
  sends `"b64_json "`; we never send the stray whitespace.
- Dropped (the seed has no such field): style, user, background, output_format, output_compression,
  moderation, partial_images and stream (the gateway does not stream), input_fidelity (edits only), seed.
  `webhook` is the gateway's own and never goes upstream.

Answer: `{created, data: [{url} | {b64_json}], usage: {generated_images, output_tokens, total_tokens}}`.
Keys and string values are read stripped (keys also lower-cased): the seed's own example is loose with
whitespace, so we do not count on its answers being tidy. Images beyond n are ignored. Usage is normalised
to ours: `{images, input_tokens?, output_tokens, total_tokens}`, where `images` is the images kept (capped by
`generated_images` when that is smaller) and token counts pass through when they are integers. A 2xx answer
without images is a failure: a refusal (400 `content_policy_violation`) when its message has content-policy
wording, otherwise a 502 `no_image` (retriable: the next route, if any, is tried).
"""

from __future__ import annotations

from typing import Any

from ..capabilities import GROK, nearest_ratio, nearest_size, parse_pixels, parse_ratio
from ..errors import GatewayError, UpstreamFailed, policy_violation
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from .base import Dialect, Done, HttpCall, HttpReply, ImageOut, bearer, image_items

PATH = "/v1/images/generations"
SIZES = GROK.sizes or frozenset()
RATIOS = frozenset(r for r in GROK.ratios or () if parse_ratio(r))  # "auto" is not a ratio we map onto
QUALITY = {"low": "low", "medium": "medium", "high": "high", "hd": "high", "standard": "medium", "auto": None}
RESOLUTION = {"1k": "1k", "2k": "2k", "4k": "2k"}


def _ratio_value(text: str | None) -> str | None:
    """A ratio as grok lists it: as given when listed, else the nearest listed one; None if not a ratio."""
    if not text:
        return None
    if text in RATIOS:
        return text
    parsed = parse_ratio(text)
    return nearest_ratio(*parsed, RATIOS) if parsed else None


def size_and_ratio(req: ImageRequest) -> tuple[str | None, str | None]:
    """The `size` to send (one of the five, or None) and the aspect ratio to send for every image."""
    explicit_ratio = _ratio_value(req.aspect_ratio)
    size = req.size if req.size and req.size != "auto" else None
    if size is None:
        if explicit_ratio is None:
            return None, None
        return nearest_size(*parse_ratio(explicit_ratio), SIZES), explicit_ratio
    if size in SIZES:
        return size, explicit_ratio
    if pixels := parse_pixels(size):
        return nearest_size(*pixels, SIZES), explicit_ratio
    if ratio := parse_ratio(size):
        return nearest_size(*ratio, SIZES), explicit_ratio or _ratio_value(size)
    return None, explicit_ratio  # not a size at all: validation refuses it before we get here


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    size, ratio = size_and_ratio(req)
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.prompt}
    if size:
        body["size"] = size
    body["aspect_ratio"] = [ratio] * req.n
    body["n"] = req.n
    body["quality"] = [QUALITY.get(req.quality or "")] * req.n
    body["resolution"] = [RESOLUTION.get(req.resolution or "")] * req.n
    body["response_format"] = req.response_format.strip().lower()
    return body


def _clean(item: Any) -> dict[str, Any]:
    """A dict with keys stripped and lower-cased, string values stripped."""
    if not isinstance(item, dict):
        return {}
    return {str(k).strip().lower(): v.strip() if isinstance(v, str) else v for k, v in item.items()}


def parse_images(payload: dict[str, Any]) -> list[ImageOut]:
    """The answer's images, its entries' keys and values read stripped (see the module docstring)."""
    data = payload.get("data")
    return image_items([_clean(raw) for raw in data] if isinstance(data, list) else [])


def normalise_usage(usage: Any, kept: int) -> dict[str, int]:
    usage = _clean(usage)
    generated = usage.get("generated_images")
    out = {"images": min(kept, generated) if isinstance(generated, int) and generated > 0 else kept}
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        if isinstance(usage.get(key), int):
            out[key] = usage[key]
    return out


def no_image_error(payload: Any) -> GatewayError:
    """A 2xx answer without images: the provider's refusal if it says so, else a plain upstream failure."""
    message = ""
    if isinstance(payload, dict):
        err = payload.get("error")
        message = str(err.get("message") or "") if isinstance(err, dict) else str(err or payload.get("message") or "")
    message = fragment(message)  # upstream text
    refused = policy_violation(message)
    if refused:
        return refused
    detail = f": {message}" if message else "."
    return UpstreamFailed(f"The provider answered without any image{detail}", code="no_image")


class GrokDialect(Dialect):
    name = "grok"
    supported_params = frozenset({"size", "aspect_ratio", "n", "quality", "resolution", "response_format"})

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        return [HttpCall("POST", route.config.root_url + PATH, headers=bearer(route),
                         json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)]

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        payload = replies[0].json()
        images = parse_images(payload) if isinstance(payload, dict) else []
        if not images:
            raise no_image_error(payload)
        kept = images[: req.n]
        return Done(images=kept, usage=normalise_usage(payload.get("usage"), len(kept)))
