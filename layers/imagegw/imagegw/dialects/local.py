"""`local`: a built-in generator with no network, for development, tests and demos.

It draws real images of the requested size with Pillow, deterministic for (prompt, seed, index): the same
request gives the same pixels, so tests can compare bytes. `n`, the size (`size`, or a ratio in `size` or
`aspect_ratio` at `resolution`) and `output_format` (png, jpeg, webp) are honoured; every other field
(quality, style, background, moderation, output_compression, partial_images, input_fidelity, user, ...) is
ignored.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageDraw

from ..capabilities import parse_pixels, parse_ratio
from ..request import ImageRequest
from ..routing import Route
from .base import EDIT, GENERATE, VARIATION, Dialect, Done, ImageOut, Job, Outcome, Send

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
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    width, height = size
    # A two-colour gradient plus a few shapes, all picked from the digest: cheap to draw at any size.
    start, end = digest[0:3], digest[3:6]
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.composite(Image.new("RGB", size, tuple(end)), Image.new("RGB", size, tuple(start)), gradient)
    draw = ImageDraw.Draw(image)
    for i in range(4):
        b = digest[8 + i * 6: 14 + i * 6]
        x0, y0 = b[0] * width // 256, b[1] * height // 256
        x1, y1 = x0 + (b[2] + 32) * width // 512, y0 + (b[3] + 32) * height // 512
        draw.ellipse((x0, y0, x1, y1), fill=(b[4], b[5], b[0]))
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, _PIL_FORMAT[fmt], quality=90)
    return out.getvalue()


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
