"""`local`: a built-in generator with no network, for development, tests and demos.

It draws real images with Pillow, deterministic for (prompt, seed, index): the same request gives the same
pixels, so tests can compare bytes, and the whole gateway runs without a provider or a key. Pillow is loaded
only where this dialect is used (the registry imports a dialect on first use). The README's "Dialects" table
lists the fields it honours.

Edits and variations (`render_edit`, `render_variation`) work on the caller's images, decoded only as large as
the output needs: the first frame, upright (EXIF orientation), transparency flattened onto white, stretched to
the output size with one Pillow LANCZOS resize (aspect ratio not kept, as OpenAI's fixed edit sizes do).
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageDraw, ImageOps

from ..capabilities import parse_pixels, parse_ratio
from ..request import ImageRequest
from ..routing import Route
from ..transport import Send
from .base import EDIT, GENERATE, VARIATION, Dialect, Done, ImageOut, Job, Outcome

DEFAULT_SIDE = 1024
_RESOLUTION_SIDE = {"1k": 1024, "2k": 2048, "4k": 4096}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def pixel_size(req: ImageRequest) -> tuple[int, int]:
    """Pixels for `size` (WxH), or for a ratio (`size` or `aspect_ratio`) at the requested resolution."""
    if req.size and (pixels := parse_pixels(req.size)):
        return pixels
    ratio = parse_ratio(req.size or "") or parse_ratio(req.aspect_ratio or "")
    long_side = _RESOLUTION_SIDE.get(req.resolution or "", DEFAULT_SIDE)
    if not ratio:
        return long_side, long_side
    w, h = ratio
    scale = long_side / max(w, h)
    return max(16, round(w * scale)), max(16, round(h * scale))


def render(prompt: str, seed: int | None, index: int, size: tuple[int, int], fmt: str = "png") -> bytes:
    return _encode(_pattern(_digest(prompt, seed, index), size), fmt)


def render_edit(images: list[bytes], mask: bytes | None, prompt: str, seed: int | None, index: int,
                size: tuple[int, int], fmt: str) -> bytes:
    """An edit of images[0] at `size` in `fmt` (png, jpeg, webp), deterministic for (inputs, prompt, seed, index).

    The edited image is 40% the input and 60% the pattern `render(prompt, seed, index)` draws, that pattern
    first tinted 35% toward the mean colour of images[1:] (if any; they are not otherwise used). The mask's
    alpha, stretched to `size` (so to the first image, whatever its own size), chooses per pixel: alpha 0 takes
    the edited image, 255 keeps the input exactly, values between blend linearly. A mask without an alpha channel
    counts as fully opaque (nothing edited); no mask edits the whole image.
    """
    if not images:
        raise ValueError("render_edit needs at least one image")
    base = _load(images[0], size)
    pattern = _pattern(_digest(prompt, seed, index), size)
    if others := images[1:]:
        means = [_load(data, (1, 1), Image.Resampling.BOX).getpixel((0, 0)) for data in others]
        tint = tuple(round(sum(c) / len(means)) for c in zip(*means, strict=True))
        pattern = Image.blend(pattern, Image.new("RGB", size, tint), 0.35)
    edited = Image.blend(base, pattern, 0.6)
    if mask is not None:
        edited = Image.composite(base, edited, _mask_alpha(mask, size))
    return _encode(edited, fmt)


def render_variation(image: bytes, seed: int | None, index: int, size: tuple[int, int], fmt: str) -> bytes:
    """A variation of `image` at `size` in `fmt`, deterministic for (image, seed, index).

    From a digest of (image, seed, index): a crop of 85-100% of each side at some offset, mirrored left-right
    on one digest bit, its hue turned by 11-34 degrees either way, then 20% of a `render`-style pattern on top.
    Colours stay those of the input (a red image gives reddish variations) and each index gives another one.
    """
    digest = hashlib.sha256(f"variation\x00{hashlib.sha256(image).hexdigest()}\x00{seed}\x00{index}".encode()).digest()
    zoom = 0.85 + digest[0] / 255 * 0.15
    source = _open(image, (round(max(size) / zoom),) * 2)
    width, height = source.size
    left, top = (width * (1 - zoom)) * digest[1] / 255, (height * (1 - zoom)) * digest[2] / 255
    out = _flatten(source.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + width * zoom,
                                                                       top + height * zoom)))
    if digest[3] & 1:
        out = ImageOps.mirror(out)
    turn = (8 + digest[4] % 17) * (1 if digest[5] & 1 else -1)  # in 1/256 of a full turn
    hue, sat, val = out.convert("HSV").split()
    out = Image.merge("HSV", (hue.point(lambda h: (h + turn) % 256), sat, val)).convert("RGB")
    return _encode(Image.blend(out, _pattern(digest, size), 0.2), fmt)


def _digest(prompt: str, seed: int | None, index: int) -> bytes:
    return hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()


def _pattern(digest: bytes, size: tuple[int, int]) -> Image.Image:
    """A two-colour gradient plus a few ellipses, all picked from the digest: cheap to draw at any size."""
    width, height = size
    start, end = digest[0:3], digest[3:6]
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.composite(Image.new("RGB", size, tuple(end)), Image.new("RGB", size, tuple(start)), gradient)
    draw = ImageDraw.Draw(image)
    for i in range(4):
        b = digest[8 + i * 6: 14 + i * 6]
        x0, y0 = b[0] * width // 256, b[1] * height // 256
        x1, y1 = x0 + (b[2] + 32) * width // 512, y0 + (b[3] + 32) * height // 512
        draw.ellipse((x0, y0, x1, y1), fill=(b[4], b[5], b[0]))
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, _PIL_FORMAT[fmt], quality=90)
    return out.getvalue()


def _open(data: bytes, need: tuple[int, int]) -> Image.Image:
    """The first frame of `data`, upright, in RGB or RGBA; a JPEG is decoded at the smallest DCT scale (1/2, 1/4,
    1/8) still at least `need` in both directions, so a large photo is never decoded whole for a small output."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", need)  # JPEG only; a no-op for other formats
    ImageOps.exif_transpose(image, in_place=True)
    mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")


def _load(data: bytes, size: tuple[int, int], resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """`data` as an RGB image stretched to `size` (see the module docstring)."""
    return _flatten(_open(data, size).resize(size, resample))


def _mask_alpha(mask: bytes, size: tuple[int, int]) -> Image.Image:
    """The mask's alpha channel ("L") stretched to `size`; 255 everywhere for a mask without one."""
    image = Image.open(io.BytesIO(mask))
    ImageOps.exif_transpose(image, in_place=True)
    if "A" in image.getbands():
        alpha = image.getchannel("A")
    elif "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
    else:
        return Image.new("L", size, 255)
    return alpha.resize(size, Image.Resampling.BILINEAR)


class LocalDialect(Dialect):
    name = "local"
    needs = frozenset()  # draws its images itself: no upstream, no key

    operations = frozenset({GENERATE, EDIT, VARIATION})

    def run_submit(self, req: ImageRequest, route: Route, send: Send, job: Job) -> Outcome:
        fmt = req.output_format or "png"
        inputs = job.inputs
        if job.operation == GENERATE or inputs is None or not inputs.images:
            size = pixel_size(req)
            images = [render(req.prompt, req.seed, i, size, fmt) for i in range(req.n)]
        else:
            size = pixel_size(req) if req.size not in (None, "auto") else input_size(inputs.images[0].data)
            if job.operation == EDIT:
                mask = inputs.mask.data if inputs.mask else None
                images = [render_edit([f.data for f in inputs.images], mask, req.prompt, req.seed, i, size, fmt)
                          for i in range(req.n)]
            else:
                images = [render_variation(inputs.images[0].data, req.seed, i, size, fmt) for i in range(req.n)]
        return Done(images=[ImageOut(data=data) for data in images], usage={"images": req.n})


def input_size(data: bytes) -> tuple[int, int]:
    """An input image's own size (an edit or variation at `size: auto`, or none, keeps it)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
