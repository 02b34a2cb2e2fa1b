"""One capability table per model: what it accepts, used to validate (400 before any upstream call) and to
translate (which optional parameters a dialect may send on).

A model not in the table gets `GENERIC`: any `WxH` size within sane bounds, an aspect ratio, or `auto`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import BadRequest
from .request import ImageRequest

_PIXELS = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_RATIO = re.compile(r"^(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$")

GPT_IMAGE_PARAMS = frozenset({"quality", "background", "output_format", "output_compression", "moderation"})


@dataclass(frozen=True)
class Capability:
    sizes: frozenset[str] | None = None  # None: any WxH within min_side..max_side, a ratio, or auto
    default_size: str = "1024x1024"
    n_max: int = 10
    prompt_max: int = 32000
    qualities: frozenset[str] = frozenset({"standard", "hd", "low", "medium", "high", "auto"})
    params: frozenset[str] = field(default_factory=lambda: frozenset({"quality", "style", "background",
                                                                      "output_format", "output_compression",
                                                                      "moderation", "seed", "aspect_ratio",
                                                                      "resolution"}))
    min_side: int = 64
    max_side: int = 4096


CAPABILITIES: dict[str, Capability] = {
    "dall-e-2": Capability(sizes=frozenset({"256x256", "512x512", "1024x1024"}), prompt_max=1000,
                           qualities=frozenset({"standard"}), params=frozenset({"quality"})),
    "dall-e-3": Capability(sizes=frozenset({"1024x1024", "1792x1024", "1024x1792"}), n_max=10, prompt_max=4000,
                           qualities=frozenset({"standard", "hd"}), params=frozenset({"quality", "style"})),
}
_GPT_IMAGE = Capability(sizes=frozenset({"1024x1024", "1536x1024", "1024x1536", "auto"}), default_size="auto",
                        qualities=frozenset({"low", "medium", "high", "auto"}), params=GPT_IMAGE_PARAMS)
for _name in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"):
    CAPABILITIES[_name] = _GPT_IMAGE

GENERIC = Capability()


def capability_for(model: str) -> Capability:
    return CAPABILITIES.get(model, GENERIC)


def parse_pixels(size: str) -> tuple[int, int] | None:
    match = _PIXELS.match(size)
    return (int(match[1]), int(match[2])) if match else None


def parse_ratio(size: str) -> tuple[float, float] | None:
    match = _RATIO.match(size)
    if not match or float(match[1]) <= 0 or float(match[2]) <= 0:
        return None
    return float(match[1]), float(match[2])


def validate_for_model(req: ImageRequest, model: str) -> None:
    """Raise BadRequest (naming the param) when `req` asks `model` for something it cannot do."""
    cap = capability_for(model)
    if len(req.prompt) > cap.prompt_max:
        raise BadRequest(f"Invalid 'prompt': {model} accepts at most {cap.prompt_max} characters "
                         f"(got {len(req.prompt)}).", param="prompt", code="invalid_value")
    if req.n > cap.n_max:
        raise BadRequest(f"Invalid 'n': {model} generates at most {cap.n_max} images per request.",
                         param="n", code="invalid_value")
    if req.size is not None:
        _validate_size(req.size, cap, model)
    if req.quality is not None and "quality" in cap.params and req.quality not in cap.qualities:
        raise BadRequest(f"Invalid 'quality' for {model}: {req.quality!r}. Supported: "
                         f"{', '.join(sorted(cap.qualities))}.", param="quality", code="invalid_value")


def _validate_size(size: str, cap: Capability, model: str) -> None:
    if cap.sizes is not None:
        if size not in cap.sizes:
            raise BadRequest(f"Invalid 'size' for {model}: {size!r}. Supported sizes: "
                             f"{', '.join(sorted(cap.sizes))}.", param="size", code="invalid_size")
        return
    if size == "auto" or parse_ratio(size):
        return
    pixels = parse_pixels(size)
    if pixels is None:
        raise BadRequest(f"Invalid 'size': {size!r}. Use WIDTHxHEIGHT in pixels (e.g. 1024x1024), an aspect "
                         f"ratio (e.g. 16:9) or auto.", param="size", code="invalid_size")
    if not all(cap.min_side <= side <= cap.max_side for side in pixels):
        raise BadRequest(f"Invalid 'size': {size!r}. Each side must be between {cap.min_side} and "
                         f"{cap.max_side} pixels.", param="size", code="invalid_size")
