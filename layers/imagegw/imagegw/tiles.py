"""Cutting a fetched image into the tiles dialects name (`ImageOut.tile`): e.g. the four quadrants of a 2x2 grid.

Pillow is imported inside `cut`, when a tile is cut, so no handler loads it at start; the worker cuts tiles in
its fetch stage only (never in an API request's invocation). The image was already downloaded within the byte
cap and its header checked against the pixel budget (`storage.fetch_image`), so decoding it is bounded.
Each tile is stored in the format of its source (PNG, JPEG or WebP; other formats as PNG), a JPEG or WebP at
quality 95. A cell's box is `[col * W // columns, (col + 1) * W // columns)` (rows alike), so the cells of an
odd-sized image cover it exactly.
"""

from __future__ import annotations

import io

from .errors import UpstreamFailed

_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_MAX_CELLS = 64


def box(index: int, columns: int, rows: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom) of cell `index` (row-major) of a width x height image."""
    if not (0 < columns <= _MAX_CELLS and 0 < rows <= _MAX_CELLS and 0 <= index < columns * rows):
        raise ValueError(f"no cell {index} in {columns}x{rows}")
    col, row = index % columns, index // columns
    return col * width // columns, row * height // rows, (col + 1) * width // columns, (row + 1) * height // rows


def cut(data: bytes, content_type: str, tiles: list[tuple[int, int, int]]) -> list[bytes]:
    """The encoded bytes of each tile (index, columns, rows) of the image `data`, in the order asked."""
    from PIL import Image

    fmt = _FORMATS.get(content_type, "PNG")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            out = []
            for index, columns, rows in tiles:
                part = image.crop(box(index, columns, rows, *image.size))
                if fmt == "JPEG" and part.mode not in ("RGB", "L", "CMYK"):
                    part = part.convert("RGB")
                buffer = io.BytesIO()
                part.save(buffer, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
                out.append(buffer.getvalue())
            return out
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UpstreamFailed(f"The provider's image could not be cut into its parts ({type(exc).__name__}).",
                             code="not_an_image", retriable=False) from None
