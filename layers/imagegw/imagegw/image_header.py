"""Image dimensions and frame counts read from the header bytes alone, so decompression bombs are refused.

A 48 KB PNG can declare 20000x20000 pixels; whoever decodes it (our clients) needs gigabytes. Every stored
image is therefore judged on width * height * frames against `MAX_IMAGE_PIXELS` before it is stored.

Pure byte parsing, never a decoder: Pillow's lazy `Image.open` needs the whole file for JPEG markers past a
large EXIF/ICC block and for animated WebP, and raises its own DecompressionBombError from a global limit.
These parsers work on a prefix: `parse(data, complete=False)` answers None while more bytes are needed.

Frames: APNG declares its count (`acTL`). GIF and animated WebP do not, so their frames are counted as their
blocks go by (never decoded): all at once for base64 answers, and for downloads first in the head, then by a
`FrameWatch` fed with the rest of the body while it streams to S3 (an upload refused midway is aborted).
A GIF frame larger than its logical screen grows the image (as Pillow does), so the largest extent counts.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from . import settings
from .errors import UpstreamFailed

# 8192 x 8192 (64 Mi pixels): four times the largest output of any current provider (4096x4096 = 16.7 MP),
# still an 8K square; decoded at 4 bytes a pixel that is 256 MiB, what a client can reasonably hold.
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
    return settings.current().max_image_pixels


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
    return _within_budget(header, max_pixels)


def _within_budget(header: ImageHeader, max_pixels: int | None) -> ImageHeader:
    budget = max_image_pixels() if max_pixels is None else max_pixels
    if header.pixels > budget:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise invalid_image(
            f"The provider returned an image of {header.width}x{header.height}{frames} pixels, "
            f"over the limit of {budget} pixels."
        )
    return header


class FrameWatch:
    """Keeps counting the frames of a GIF or WebP download as its body goes by, past the head `checked` saw,
    and refuses it (UpstreamFailed upstream_invalid_image, from `feed`) once it is over the budget."""

    def __init__(self, content_type: str, header: ImageHeader, max_pixels: int | None = None):
        self._walker: _Walker = _GifWalker() if content_type == "image/gif" else _WebpWalker()
        self._header = header
        self._max_pixels = max_pixels

    @staticmethod
    def wanted(content_type: str) -> bool:
        """Only GIF and WebP leave their frame count to the body; PNG (acTL) and JPEG state it up front."""
        return content_type in ("image/gif", "image/webp")

    @property
    def header(self) -> ImageHeader:
        walker = self._walker
        if isinstance(walker, _GifWalker):
            return ImageHeader(walker.width, walker.height, max(walker.frames, 1))
        return ImageHeader(self._header.width, self._header.height, max(walker.frames, 1))

    def feed(self, chunk: bytes) -> None:
        try:
            self._walker.feed(chunk)
        except InvalidHeader as e:
            raise invalid_image(f"The provider returned an image with an unreadable structure: {e}") from e
        _within_budget(self.header, self._max_pixels)


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


# --- block walkers (GIF, WebP) ----------------------------------------------------------------------


class _Walker:
    """Walks a block structure fed in pieces: `_step` reads a fixed-size field or asks to skip a length.

    Only the few bytes of an unfinished field are kept between pieces; skipped data is never buffered, so a
    whole download can go through it.
    """

    def __init__(self, start: int, need: int, state: str):
        self._pending = b""
        self._skip = start
        self._need = need
        self._state = state
        self.frames = 0
        self.done = False

    def feed(self, chunk: bytes) -> None:
        data, pos = self._pending + chunk, 0
        while not self.done:
            take = min(self._skip, len(data) - pos)
            pos += take
            self._skip -= take
            if self._skip or len(data) - pos < self._need:
                break
            field = data[pos:pos + self._need]
            pos += self._need
            self._skip, self._need, self._state = self._step(self._state, field)
        self._pending = data[pos:] if not self.done else b""

    def _step(self, state: str, field: bytes) -> tuple[int, int, str]:  # pragma: no cover - abstract
        raise NotImplementedError


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


class _GifWalker(_Walker):
    """Logical screen, then blocks: extensions and image descriptors (a frame each), each followed by data
    sub-blocks, up to the trailer. A frame reaching past the screen grows the image."""

    def __init__(self) -> None:
        super().__init__(start=0, need=13, state="screen")
        self.width = self.height = 0

    def _step(self, state: str, field: bytes) -> tuple[int, int, str]:
        if state == "screen":
            if field[:6] not in (b"GIF87a", b"GIF89a"):
                raise InvalidHeader("no GIF signature")
            self.width, self.height, flags = struct.unpack_from("<HHB", field, 6)
            return _colour_table(flags), 1, "block"
        if state == "block":
            if field == b"\x3b":  # trailer
                self.done = True
                return 0, 0, "end"
            if field == b"\x21":  # extension: a label byte, then sub-blocks
                return 1, 1, "sub"
            if field == b"\x2c":  # image descriptor
                return 0, 9, "descriptor"
            raise InvalidHeader("unknown block")
        if state == "descriptor":
            left, top, w, h, flags = struct.unpack("<HHHHB", field)
            self.frames += 1
            self.width, self.height = max(self.width, left + w), max(self.height, top + h)
            return _colour_table(flags) + 1, 1, "sub"  # then the LZW minimum code size, then sub-blocks
        size = field[0]  # "sub": a data sub-block's size; 0 ends the sequence
        return (size, 1, "sub") if size else (0, 1, "block")


def _colour_table(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _gif(data: bytes, complete: bool) -> ImageHeader | None:
    if len(data) < 13:  # the logical screen descriptor
        return None
    walker = _GifWalker()
    walker.feed(data)
    if complete and walker.frames == 0:
        raise InvalidHeader("no frame")
    return ImageHeader(walker.width, walker.height, max(walker.frames, 1))


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


class _WebpWalker(_Walker):
    """RIFF chunks after the 12-byte file header, each length-prefixed and padded to an even size."""

    def __init__(self) -> None:
        super().__init__(start=12, need=8, state="chunk")

    def _step(self, state: str, field: bytes) -> tuple[int, int, str]:
        kind, size = field[:4], struct.unpack_from("<I", field, 4)[0]
        self.frames += kind == b"ANMF"
        return size + (size & 1), 8, "chunk"


def _webp_frames(data: bytes) -> int:
    walker = _WebpWalker()
    walker.feed(data)
    return max(walker.frames, 1)


_PARSERS = {"image/png": _png, "image/jpeg": _jpeg, "image/gif": _gif, "image/webp": _webp}
