"""One capability table per model: what it accepts, used to validate (400 before any upstream call) and to
translate (sizes, ratios, which optional parameters may be sent on).

Lookup: the exact upstream model name, then a name prefix (`gpt-image`, `jimeng`, `grok`, `gemini`, `imagen`,
`midjourney`), then the route's dialect default, then `GENERIC` (any `WxH` within sane bounds, an aspect ratio,
or `auto`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .dialects import get_dialect
from .errors import BadRequest
from .inputs import InputRules
from .request import ImageRequest, echo
from .routing import Route, routes_for
from .webhooks import check_target

_PIXELS = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_RATIO = re.compile(r"^(\d{1,5}(?:\.\d{1,4})?):(\d{1,5}(?:\.\d{1,4})?)$")
#: the widest aspect ratio either way (21:9 is the widest any provider lists); wider is not an image
MAX_RATIO = 21

ALL_QUALITIES = frozenset({"standard", "hd", "low", "medium", "high", "auto"})


@dataclass(frozen=True)
class Capability:
    #: accepted `size` values; None: any WxH within min_side..max_side, a ratio, or auto
    sizes: frozenset[str] | None = None
    #: accepted aspect ratios (in `size` or `aspect_ratio`); None: any
    ratios: frozenset[str] | None = None
    resolutions: frozenset[str] = frozenset({"1k", "2k", "4k"})
    n_max: int = 10
    prompt_max: int = 32000
    qualities: frozenset[str] = ALL_QUALITIES
    min_side: int = 64
    max_side: int = 4096
    #: a pixel `size` outside `sizes` is mapped to the nearest one by aspect ratio instead of refused
    maps_pixel_sizes: bool = False
    #: what the model takes as an edit's inputs (None: it does not edit), and as a variation's
    edits: InputRules | None = InputRules()
    variations: InputRules | None = None
    #: pixel sizes must be multiples of this; at most this many pixels; width:height within 1:max_aspect..max_aspect:1
    #: (pixel sizes, ratios in `size` and `aspect_ratio` alike)
    side_step: int = 1
    max_pixels: int | None = None
    max_aspect: float = 21


# dall-e-2: one square PNG under 4 MB (a mask of its size); gpt-image: up to 16 PNG/JPEG/WebP under 50 MB each.
_DALLE2_INPUT = InputRules(max_images=1, max_bytes=4 * 1024 * 1024, types=frozenset({"image/png"}), square=True,
                           mask_same_size=True)
DALLE2 = Capability(sizes=frozenset({"256x256", "512x512", "1024x1024"}), prompt_max=1000,
                    qualities=frozenset({"standard"}), edits=_DALLE2_INPUT, variations=_DALLE2_INPUT)
DALLE3 = Capability(sizes=frozenset({"1024x1024", "1792x1024", "1024x1792"}), prompt_max=4000,
                    qualities=frozenset({"standard", "hd"}), edits=None)
GPT_IMAGE = Capability(sizes=frozenset({"1024x1024", "1536x1024", "1024x1536", "auto"}),
                       qualities=frozenset({"low", "medium", "high", "auto"}), edits=InputRules(max_images=16))
# The jimeng relay: `size` is an aspect ratio; pixel sizes are translated to the nearest of these.
JIMENG = Capability(ratios=frozenset({"1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"}),
                    prompt_max=1000, maps_pixel_sizes=True, edits=None)
# Grok's image API: five sizes (others map to the nearest by ratio), ratios, quality and resolution lists.
GROK = Capability(sizes=frozenset({"960x960", "720x1280", "1280x720", "1168x784", "784x1168"}),
                  ratios=frozenset({"1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "9:19.5", "19.5:9", "9:20",
                                    "20:9", "1:2", "2:1", "auto"}),
                  resolutions=frozenset({"1k", "2k"}), prompt_max=1000, edits=None,
                  qualities=frozenset({"low", "medium", "high"}), maps_pixel_sizes=True)
# Google's Generative Language API (`gemini` dialect): an aspect ratio from its list (a pixel size maps to the
# nearest), one image per generateContent call (n fans out) and 1-4 per Imagen call; no edits here. Gemini 2.x
# image models have one output size (1k); later ones take imageSize 1K/2K/4K. Imagen 4 standard and ultra take
# sampleImageSize 1K/2K; Imagen's prompt is at most 480 tokens (about 4 characters each).
GEMINI_RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})
IMAGEN_RATIOS = frozenset({"1:1", "3:4", "4:3", "9:16", "16:9"})
GEMINI_IMAGE = Capability(ratios=GEMINI_RATIOS, resolutions=frozenset({"1k"}), n_max=4, maps_pixel_sizes=True,
                          edits=None)
GEMINI_IMAGE_SIZED = Capability(ratios=GEMINI_RATIOS, n_max=4, maps_pixel_sizes=True, edits=None)
IMAGEN = Capability(ratios=IMAGEN_RATIOS, resolutions=frozenset({"1k"}), n_max=4, prompt_max=1920,
                    maps_pixel_sizes=True, edits=None)
IMAGEN_SIZED = Capability(ratios=IMAGEN_RATIOS, resolutions=frozenset({"1k", "2k"}), n_max=4, prompt_max=1920,
                          maps_pixel_sizes=True, edits=None)
# Midjourney through a midjourney-proxy relay: one 2x2 grid per job (n 1-4: the grid, or that many quadrants);
# `size` is any WxH or ratio (sent as `--ar W:H`); the prompt fits Discord's 6000-character command option with
# room for the `--ar` appended to it.
MIDJOURNEY = Capability(n_max=4, prompt_max=5980, edits=None)
# Amazon Bedrock (the `bedrock` dialect): Stability models take one of nine ratios (pixel sizes map to the nearest),
# one image per call (n fans out); Nova Canvas and Titan take sides of 320-4096 on a 16-pixel grid, at most
# 4,194,304 pixels, from 1:4 to 4:1, 1-5 images a call. Model ids may carry a cross-region prefix (`us.`).
STABILITY_RATIOS = frozenset({"16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"})
BEDROCK_STABILITY = Capability(ratios=STABILITY_RATIOS, prompt_max=10000, n_max=4, maps_pixel_sizes=True, edits=None)
NOVA_CANVAS = Capability(prompt_max=1024, n_max=5, min_side=320, max_side=4096, side_step=16, max_pixels=4_194_304,
                         max_aspect=4, resolutions=frozenset({"1k", "2k"}), edits=None)
TITAN_IMAGE = Capability(prompt_max=512, n_max=5, min_side=320, max_side=4096, side_step=16, max_pixels=4_194_304,
                         max_aspect=4, resolutions=frozenset({"1k", "2k"}), edits=None)
_CROSS_REGION = re.compile(r"^(?:us|eu|apac|jp|au|ca|us-gov|global)\.(?=stability\.|amazon\.)")
# Replicate's flux models (dialect `replicate`): `aspect_ratio` from these eleven (any WxH maps to the nearest),
# 1..4 images (`num_outputs` where the model has it, else parallel predictions); generation only.
REPLICATE_RATIOS = frozenset({"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"})
REPLICATE = Capability(ratios=REPLICATE_RATIOS, n_max=4, edits=None)
# fal's queue models (dialect `fal`): `image_size` a preset or {width, height} (a ratio maps to the nearest
# preset), `num_images` 1..4; generation only.
FAL = Capability(n_max=4, min_side=256, max_side=2048, edits=None)
GENERIC = Capability()

CAPABILITIES: dict[str, Capability] = {"dall-e-2": DALLE2, "dall-e-3": DALLE3}
_BY_PREFIX = (("gpt-image", GPT_IMAGE), ("jimeng", JIMENG), ("grok", GROK),
              ("gemini-2", GEMINI_IMAGE), ("gemini", GEMINI_IMAGE_SIZED),
              ("imagen-4.0-fast", IMAGEN), ("imagen-4", IMAGEN_SIZED), ("imagen", IMAGEN),
              ("midjourney", MIDJOURNEY), ("stability.", BEDROCK_STABILITY),
              ("amazon.nova-canvas", NOVA_CANVAS), ("amazon.titan-image", TITAN_IMAGE),
              ("black-forest-labs/flux", REPLICATE), ("fal-ai/flux", FAL))
_BY_DIALECT = {"jimeng": JIMENG, "grok": GROK, "gemini": GEMINI_IMAGE, "midjourney": MIDJOURNEY,
               "replicate": REPLICATE, "fal": FAL}


def capability_for(model: str, dialect: str | None = None) -> Capability:
    if model in CAPABILITIES:
        return CAPABILITIES[model]
    base = _CROSS_REGION.sub("", model, count=1)
    for prefix, cap in _BY_PREFIX:
        if base.startswith(prefix):
            return cap
    return _BY_DIALECT.get(dialect or "", GENERIC)


def parse_pixels(size: str) -> tuple[int, int] | None:
    match = _PIXELS.match(size)
    return (int(match[1]), int(match[2])) if match else None


def parse_ratio(size: str) -> tuple[float, float] | None:
    """W:H as two numbers above 0, neither more than MAX_RATIO times the other; None for anything else."""
    match = _RATIO.match(size)
    if not match:
        return None
    w, h = float(match[1]), float(match[2])
    if min(w, h) <= 0 or max(w, h) / min(w, h) > MAX_RATIO:
        return None
    return w, h


def _log_ratio(w: float, h: float) -> float:
    return math.log(w / h)


def nearest_ratio(width: float, height: float, ratios: frozenset[str] | set[str]) -> str:
    """The listed ratio closest to width:height (compared on a log scale, so 2:1 and 1:2 are equally far)."""
    target = _log_ratio(width, height)
    shapes = {r: shape for r in ratios if (shape := parse_ratio(r))}
    return min(sorted(shapes), key=lambda r: abs(_log_ratio(*shapes[r]) - target))


def requested_ratio(req: ImageRequest, ratios: frozenset[str] | set[str]) -> str | None:
    """The aspect ratio a request asks for, as one of `ratios`: `aspect_ratio` when given, else a ratio or pixel
    `size`; as is when listed, else the nearest listed ratio (1792x1024 -> 16:9). None for `auto` or neither
    (the caller's default). What the ratio-speaking dialects (jimeng, gemini, bedrock, replicate) send."""
    for value in (req.aspect_ratio, req.size):
        if not value or value == "auto":
            continue
        if value in ratios:
            return value
        shape = parse_ratio(value) or parse_pixels(value)
        if shape:
            return nearest_ratio(shape[0], shape[1], ratios)
    return None


def nearest_size(width: float, height: float, sizes: frozenset[str] | set[str]) -> str:
    """The listed WxH size closest in aspect ratio to width:height (then in area)."""
    target = _log_ratio(width, height)
    shapes = {s: shape for s in sizes if (shape := parse_pixels(s))}
    return min(sorted(shapes), key=lambda s: (round(abs(_log_ratio(*shapes[s]) - target), 6),
                                              abs(math.prod(shapes[s]) - width * height)))


def validate_routable(req: ImageRequest, operation: str = "generate") -> InputRules | None:
    """The one check every entry point (HTTP, bus event, batch line) makes before a task exists: the model is
    routed (for an edit or a variation: to a route whose dialect and model can do it), the request fits that
    route's model, and its webhook is one delivery would make (400 naming the param otherwise). For an edit or
    a variation, the model's input rules (see `inputs.check_files`)."""
    routes = routes_able_to(operation, routes_for(req.model))
    if not routes:
        raise BadRequest(f"The model '{req.model}' cannot take {_ARTICLE[operation]} here: none of its providers "
                         f"has that endpoint.", param="model", code="unsupported_operation")
    first = routes[0]
    validate_for_model(req, first.upstream_model, first.dialect)
    if req.webhook:
        check_target(req.webhook)
    return rules_for(operation, first.upstream_model, first.dialect)


_ARTICLE = {"generate": "a generation", "edit": "an edit", "variation": "a variation"}


def routes_able_to(operation: str, routes: list[Route]) -> list[Route]:
    """The routes whose dialect and upstream model can do `operation` (fallback skips the others)."""
    return [r for r in routes if operation in get_dialect(r.dialect).operations
            and (operation == "generate" or rules_for(operation, r.upstream_model, r.dialect) is not None)]


def rules_for(operation: str, model: str, dialect: str | None = None) -> InputRules | None:
    cap = capability_for(model, dialect)
    return {"edit": cap.edits, "variation": cap.variations}.get(operation)


def validate_for_model(req: ImageRequest, model: str, dialect: str | None = None) -> None:
    """Raise BadRequest (naming the param) when `req` asks `model` for something it cannot do."""
    cap = capability_for(model, dialect)
    if len(req.prompt or "") > cap.prompt_max:
        raise BadRequest(f"Invalid 'prompt': {model} accepts at most {cap.prompt_max} characters "
                         f"(got {len(req.prompt or '')}).", param="prompt", code="invalid_value")
    if req.n > cap.n_max:
        raise BadRequest(f"Invalid 'n': {model} generates at most {cap.n_max} images per request.",
                         param="n", code="invalid_value")
    if req.size is not None:
        _validate_size(req.size, cap, model)
    if req.aspect_ratio is not None:
        _check_ratio(req.aspect_ratio, "aspect_ratio", "invalid_value")
        _check_aspect(req.aspect_ratio, cap, model, "aspect_ratio", "invalid_value")
    if req.aspect_ratio is not None and cap.ratios is not None and req.aspect_ratio not in cap.ratios:
        raise BadRequest(f"Invalid 'aspect_ratio' for {model}: {req.aspect_ratio!r}. Supported: "
                         f"{', '.join(sorted(cap.ratios))}.", param="aspect_ratio", code="invalid_value")
    if req.resolution is not None and req.resolution not in cap.resolutions:
        raise BadRequest(f"Invalid 'resolution' for {model}: {req.resolution!r}. Supported: "
                         f"{', '.join(sorted(cap.resolutions))}.", param="resolution", code="invalid_value")
    if req.quality is not None and req.quality not in cap.qualities:
        raise BadRequest(f"Invalid 'quality' for {model}: {req.quality!r}. Supported: "
                         f"{', '.join(sorted(cap.qualities))}.", param="quality", code="invalid_value")


def _validate_size(size: str, cap: Capability, model: str) -> None:
    if cap.sizes is not None and size in cap.sizes:
        return
    if ":" in size:
        _check_ratio(size, "size", "invalid_size")
        _check_aspect(size, cap, model, "size", "invalid_size")
        if cap.ratios is not None and size in cap.ratios:
            return
        if cap.ratios is None and cap.sizes is None:
            return
        raise BadRequest(f"Invalid 'size' for {model}: {size!r}. Supported: {_listing(cap)}.", param="size",
                         code="invalid_size")
    if size == "auto" and cap.sizes is None:
        return
    pixels = parse_pixels(size)
    if pixels is None or (cap.sizes is not None and not cap.maps_pixel_sizes):
        raise BadRequest(f"Invalid 'size' for {model}: {size!r}. Supported: {_listing(cap)}.", param="size",
                         code="invalid_size")
    if not all(cap.min_side <= side <= cap.max_side for side in pixels) or max(pixels) > MAX_RATIO * min(pixels):
        raise BadRequest(f"Invalid 'size': {size!r}. Each side must be between {cap.min_side} and "
                         f"{cap.max_side} pixels, neither more than {MAX_RATIO} times the other.", param="size",
                         code="invalid_size")
    _check_grid(pixels, cap, model)


def _check_grid(pixels: tuple[int, int], cap: Capability, model: str) -> None:
    """A model's own pixel rules: sides on its grid, its pixel budget, its widest aspect ratio."""
    width, height = pixels
    problem = None
    if width % cap.side_step or height % cap.side_step:
        problem = f"each side must be a multiple of {cap.side_step}"
    elif cap.max_pixels is not None and width * height > cap.max_pixels:
        problem = f"at most {cap.max_pixels} pixels in all"
    elif max(pixels) > cap.max_aspect * min(pixels):
        problem = f"neither side more than {cap.max_aspect:g} times the other"
    if problem:
        raise BadRequest(f"Invalid 'size' for {model}: {width}x{height}: {problem}.", param="size",
                         code="invalid_size")


def _check_aspect(value: str, cap: Capability, model: str, param: str, code: str) -> None:
    shape = parse_ratio(value)
    if shape and max(shape) > cap.max_aspect * min(shape):
        raise BadRequest(f"Invalid '{param}' for {model}: {value!r}: {model} takes aspect ratios from "
                         f"1:{cap.max_aspect:g} to {cap.max_aspect:g}:1.", param=param, code=code)


def _check_ratio(value: str, param: str, code: str) -> None:
    if parse_ratio(value) is None:
        raise BadRequest(f"Invalid '{param}': {echo(value)}. An aspect ratio is W:H with both sides above 0, "
                         f"from 1:{MAX_RATIO} to {MAX_RATIO}:1 (e.g. 16:9).", param=param, code=code)


def _listing(cap: Capability) -> str:
    if cap.sizes is None and cap.ratios is None:
        return "WIDTHxHEIGHT in pixels (e.g. 1024x1024), an aspect ratio (e.g. 16:9) or auto"
    parts = sorted(cap.sizes or ()) + sorted(cap.ratios or ())
    if cap.maps_pixel_sizes:
        parts.append("or any WIDTHxHEIGHT (mapped to the nearest)")
    return ", ".join(parts)
