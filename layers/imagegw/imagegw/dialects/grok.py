"""`grok`: xAI's Grok image API as relays serve it: OpenAI's path, key and answer, but its own request fields.

Why it is its own dialect: Grok knows only five sizes, and takes `aspect_ratio`, `quality` and `resolution` as
lists with one entry per image ("whose length follows n", `null` where unset), which it requires, as it
requires `n` and `response_format`. A request validated for another route's model may land here, so every
value is mapped onto Grok's lists rather than sent to be refused. Its reference examples are loose with
whitespace (`"b64_json "`), so we send tidy values and read its answers stripped. Every OpenAI field it does
not document (style, user, background, output_*, moderation, ...) is dropped. The README's "Dialects" table
lists the mappings.
"""

from __future__ import annotations

from typing import Any

from ..capabilities import GROK, nearest_ratio, nearest_size, parse_pixels, parse_ratio
from ..request import ImageRequest
from ..routing import Route
from .base import GENERATE, Dialect, Done, HttpCall, HttpReply, ImageOut, bearer
from .openai_shaped import GENERATIONS_PATH, image_items, no_image_error, usage

SIZES = GROK.sizes or frozenset()
RATIOS = frozenset(r for r in GROK.ratios or () if parse_ratio(r))  # "auto" is not a ratio we map onto
#: the fields a request carries: every one of them is required by Grok (`size` alone is optional)
CARRIED = frozenset({"size", "aspect_ratio", "n", "quality", "resolution", "response_format"})
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
    """The `size` to send (one of the five, or None) and the aspect ratio to send for every image.

    A listed size goes as is; another `WxH` becomes the listed size nearest in aspect ratio (then area):
    1024x1024 -> 960x960. A ratio in `size` becomes the nearest listed size, and also goes in `aspect_ratio`
    (unless the client set one), since five sizes cannot express e.g. 9:19.5. With no `size` (or `auto`), the
    size comes from `aspect_ratio`; with neither, `size` is left out and Grok picks its default."""
    explicit_ratio = _ratio_value(req.aspect_ratio)
    size = req.size if req.size and req.size != "auto" else None
    if size is None:
        if explicit_ratio is None:
            return None, None
        shape = parse_ratio(explicit_ratio)  # a listed ratio: always parses
        return (nearest_size(*shape, SIZES) if shape else None), explicit_ratio
    if size in SIZES:
        return size, explicit_ratio
    if pixels := parse_pixels(size):
        return nearest_size(*pixels, SIZES), explicit_ratio
    if ratio := parse_ratio(size):
        return nearest_size(*ratio, SIZES), explicit_ratio or _ratio_value(size)
    return None, explicit_ratio  # not a size at all: validation refuses it before we get here


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    """In the order Grok's reference lists the fields. The lists hold the client's value for every image, or
    `null` for every image when unset; quality hd -> high, standard -> medium, auto -> null; resolution
    4k -> 2k; `response_format` stripped and lower-cased."""
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


def grok_usage(reported: Any, kept: int) -> dict[str, int]:
    """Grok's `{generated_images, output_tokens, total_tokens}` as ours: `images` is the images kept, capped by
    `generated_images` when that is smaller."""
    reported = _clean(reported)
    generated = reported.get("generated_images")
    return usage(min(kept, generated) if isinstance(generated, int) and generated > 0 else kept, reported)


class GrokDialect(Dialect):
    name = "grok"

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return CARRIED

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        return [HttpCall("POST", route.config.root_url + GENERATIONS_PATH, headers=bearer(route),
                         json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)]

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        payload = replies[0].json()
        images = parse_images(payload) if isinstance(payload, dict) else []
        if not images:
            raise no_image_error(payload, ("error", "message"))
        kept = images[: req.n]
        return Done(images=kept, usage=grok_usage(payload.get("usage"), len(kept)))
