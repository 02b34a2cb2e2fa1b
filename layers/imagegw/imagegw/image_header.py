"""Image dimensions and frame counts read from the header bytes alone, so decompression bombs are refused.

A 48 KB PNG can declare 20000x20000 pixels; whoever decodes it (our clients) needs gigabytes. Every stored
image is therefore judged on width * height * frames against `MAX_IMAGE_PIXELS` before it is stored.

Pure byte parsing, never a decoder: Pillow's lazy `Image.open` needs the whole file for JPEG markers past a
large EXIF/ICC block and for animated WebP, and raises its own DecompressionBombError from a global limit.
These parsers work on a prefix: `parse(data, complete=False)` answers None while more bytes are needed.

Frames: APNG declares its count (`acTL`). GIF and animated WebP do not, so their frames are counted in the
bytes at hand: every frame of a base64 answer, the frames within the header prefix of a download (at least 1).
A GIF frame larger than its logical screen grows the image (as Pillow does), so the largest extent counts.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from .errors import UpstreamFailed

# 8192 x 8192 (64 Mi pixels): four times the largest output of any current provider (4096x4096 = 16.7 MP),
# still an 8K square; decoded at 4 bytes a pixel that is 256 MiB, what a client can reasonably hold.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
HEADER_LIMIT = 1024 * 1024  # a header not found in the first MiB is refused (JPEG SOF after EXIF/ICC, PNG acTL)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


class InvalidHeader(ValueError):
    """The bytes claim an image format but its header is broken or truncated."""


def invalid_image(message: str) -> UpstreamFailed:
    return UpstreamFailed(message, code="upstream_invalid_image", retriable=False)


def max_image_pixels() -> int:
    return int(os.environ.get("MAX_IMAGE_PIXELS") or DEFAULT_MAX_IMAGE_PIXELS)


def checked(data: bytes, content_type: str, *, complete: bool, max_pixels: int | None = None) -> ImageHeader | None:
    """The header of `data` (an image of `content_type`) if it is within the pixel budget.

    None while more bytes are needed (only when not `complete`, and below HEADER_LIMIT). Raises UpstreamFailed
    `upstream_invalid_image` for a broken or truncated header and for an image over the budget.
    """
    try:
        header = parse(data, content_type, complete=complete or len(data) >= HEADER_LIMIT)
    except InvalidHeader as e:
        raise invalid_image(f"The provider returned an image with an unreadable header: {e}") from e
    if header is None:
        return None
    budget = max_image_pixels() if max_pixels is None else max_pixels
    if header.pixels > budget:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise invalid_image(
            f"The provider returned an image of {header.width}x{header.height}{frames} pixels, "
            f"over the limit of {budget} pixels."
        )
    return header


def parse(data: bytes, content_type: str, *, complete: bool) -> ImageHeader | None:
    """Dimensions and frames of `data`; None if more bytes are needed and `complete` is False."""
    parser = _PARSERS.get(content_type)
    if parser is None:
        raise InvalidHeader(f"unsupported image type {content_type}")
    try:
        header = parser(data, complete)
    except (IndexError, struct.error) as e:  # a field read past the end of the bytes at hand
        if not complete:
            return None
        raise InvalidHeader("truncated") from e
    if header is None and complete:
        raise InvalidHeader("truncated")
    if header is not None and (header.width <= 0 or header.height <= 0 or header.frames <= 0):
        raise InvalidHeader(f"declares {header.width}x{header.height} with {header.frames} frames")
    return header


# --- PNG --------------------------------------------------------------------------------------------------


def _png(data: bytes, complete: bool) -> ImageHeader | None:
    if not data.startswith(_PNG_SIGNATURE):
        raise InvalidHeader("no PNG signature")
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise InvalidHeader("the first chunk is not IHDR")
    ihdr = data[12:29]
    (crc,) = struct.unpack_from(">I", data, 29)
    if zlib.crc32(ihdr) != crc:
        raise InvalidHeader("IHDR checksum mismatch")
    width, height = struct.unpack_from(">II", ihdr, 4)
    # acTL (the APNG frame count) must come before the first IDAT: walk the chunks up to there.
    pos = 33
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"acTL":
            (frames,) = struct.unpack_from(">I", data, pos + 8)
            return ImageHeader(width, height, frames)
        if kind in (b"IDAT", b"IEND"):
            return ImageHeader(width, height)
        pos += 12 + length  # length, type, data, crc
    return None


# --- JPEG -------------------------------------------------------------------------------------------------


def _jpeg(data: bytes, complete: bool) -> ImageHeader | None:
    if not data.startswith(b"\xff\xd8"):
        raise InvalidHeader("no JPEG start of image")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidHeader("marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            raise InvalidHeader("no frame header before the image data")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            raise InvalidHeader("segment length")
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return ImageHeader(width, height)
        pos += 2 + length
    return None


# --- GIF --------------------------------------------------------------------------------------------------


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while True:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _gif(data: bytes, complete: bool) -> ImageHeader | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise InvalidHeader("no GIF signature")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    try:
        while pos < len(data):
            block = data[pos]
            if block == 0x3B:  # trailer
                break
            if block == 0x21:  # extension: label, then sub-blocks
                pos = _skip_sub_blocks(data, pos + 2)
            elif block == 0x2C:  # image descriptor
                left, top, w, h, local = struct.unpack_from("<HHHHB", data, pos + 1)
                frames += 1
                width, height = max(width, left + w), max(height, top + h)
                pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
                pos = _skip_sub_blocks(data, pos + 1)  # LZW minimum code size, then the data sub-blocks
            else:
                raise InvalidHeader("unknown block")
    except (IndexError, struct.error):
        if complete and frames == 0:
            raise
    return ImageHeader(width, height, max(frames, 1))


# --- WebP -------------------------------------------------------------------------------------------------


def _webp(data: bytes, complete: bool) -> ImageHeader | None:
    if len(data) < 16:
        raise IndexError("RIFF header")
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise InvalidHeader("no WebP signature")
    kind = data[12:16]
    if kind == b"VP8 ":  # lossy: frame tag (3), start code (3), then 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            raise InvalidHeader("VP8 start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader(width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":  # lossless: signature byte, then 14-bit width-1 and height-1
        if data[20] != 0x2F:
            raise InvalidHeader("VP8L signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageHeader((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":  # extended: flags, reserved, 24-bit canvas width-1 and height-1
        if len(data) < 30:
            raise IndexError("VP8X chunk")
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader(width, height, _webp_frames(data) if flags & 0x02 else 1)
    raise InvalidHeader(f"unknown WebP chunk {kind!r}")


def _webp_frames(data: bytes) -> int:
    """ANMF chunks among the bytes at hand (each chunk is length-prefixed and padded to an even size)."""
    frames, pos = 0, 12
    while pos + 8 <= len(data):
        kind = data[pos:pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        frames += kind == b"ANMF"
        pos += 8 + size + (size & 1)
    return max(frames, 1)


_PARSERS = {"image/png": _png, "image/jpeg": _jpeg, "image/gif": _gif, "image/webp": _webp}
