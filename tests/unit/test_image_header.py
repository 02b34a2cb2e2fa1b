"""Image headers read without decoding (imagegw.image_header): dimensions, frames, and the pixel budget."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from imagegw import image_header
from imagegw.errors import UpstreamFailed
from imagegw.image_header import FrameWatch, ImageHeader, checked, parse
from tests.simulators.fault_sim import (
    bomb_png,
    gif_with_comment,
    jpeg_with_app_segments,
    jpeg_with_dimensions,
    png_with_frames_declared,
)

TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def encoded(fmt: str, size: tuple[int, int] = (37, 23), frames: int = 1, mode: str = "RGB", **options) -> bytes:
    images = [Image.new(mode, size, (40 * i % 256, 90, 30)) for i in range(frames)]
    out = io.BytesIO()
    if frames > 1:
        options.update(save_all=True, append_images=images[1:])
    images[0].save(out, format=fmt, **options)
    return out.getvalue()


# --- what Pillow reads, read without Pillow --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options", "frames", "mode"),
    [
        ("PNG", {}, 1, "RGB"), ("PNG", {}, 3, "RGB"), ("PNG", {}, 1, "RGBA"),
        ("JPEG", {}, 1, "RGB"), ("JPEG", {"progressive": True}, 1, "RGB"),
        ("JPEG", {"exif": b"Exif\0\0" + bytes(30000)}, 1, "RGB"),
        ("WEBP", {}, 1, "RGB"), ("WEBP", {"lossless": True}, 1, "RGB"), ("WEBP", {}, 1, "RGBA"),
        ("WEBP", {}, 3, "RGB"), ("WEBP", {"lossless": True}, 2, "RGB"),
        ("GIF", {}, 1, "RGB"), ("GIF", {}, 4, "RGB"),
    ],
)
def test_header_matches_pillow(fmt: str, options: dict, frames: int, mode: str) -> None:
    data = encoded(fmt, (37, 23), frames, mode, **options)
    with Image.open(io.BytesIO(data)) as im:
        expected = ImageHeader(im.size[0], im.size[1], getattr(im, "n_frames", 1))
    assert expected.frames == frames
    assert parse(data, TYPES[fmt], complete=True) == expected


def test_png_bomb_declares_its_size() -> None:
    bomb = bomb_png()
    assert len(bomb) < 64 * 1024  # 48 KB on the wire...
    assert parse(bomb, "image/png", complete=True) == ImageHeader(20000, 20000)  # ...400 MP when decoded


def test_jpeg_frame_header_after_large_segments_needs_more_bytes() -> None:
    data = jpeg_with_app_segments(3)
    assert parse(data[:64 * 1024], "image/jpeg", complete=False) is None  # SOF is past the first 64 KiB
    assert parse(data, "image/jpeg", complete=True) == ImageHeader(37, 23)


def test_apng_declared_frames_count() -> None:
    assert parse(png_with_frames_declared(1_000_000), "image/png", complete=True).frames == 1_000_000


def test_gif_frame_larger_than_its_screen_counts() -> None:
    # A 4x4 logical screen whose frame descriptor covers 3000x2000: Pillow grows the image to the frame.
    data = bytearray(encoded("GIF", (4, 4)))
    descriptor = data.index(b"\x2c\x00\x00\x00\x00\x04\x00\x04\x00")
    struct.pack_into("<HH", data, descriptor + 5, 3000, 2000)
    assert parse(bytes(data), "image/gif", complete=True) == ImageHeader(3000, 2000)


# --- partial and broken headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_prefix_needs_more_or_is_truncated(fmt: str) -> None:
    data = encoded(fmt)
    assert parse(data[:10], TYPES[fmt], complete=False) is None
    with pytest.raises(image_header.InvalidHeader):
        parse(data[:10], TYPES[fmt], complete=True)


@pytest.mark.parametrize(
    "data",
    [
        bomb_png()[:20],  # cut inside IHDR
        bomb_png()[:16] + b"IHDX" + bomb_png()[20:200],  # the first chunk is not IHDR
        bomb_png()[:20] + b"\0\0\x4e\x21" + bomb_png()[24:200],  # IHDR altered, its CRC no longer matches
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # SOI and a cut APP0
        b"\xff\xd8\xff\xda\x00\x08" + bytes(8),  # image data before any frame header
        jpeg_with_dimensions(0, 16),  # a zero width
        b"RIFF\x10\0\0\0WEBPVP8 \x04\0\0\0",  # a lossy WebP chunk with no frame
        b"RIFF\x10\0\0\0WEBPJUNK\x04\0\0\0abcd",  # an unknown first chunk
        b"GIF89a\x10\x00",  # cut in the logical screen descriptor
    ],
)
def test_broken_headers_are_invalid_images(data: bytes) -> None:
    content_type = {b"\x89P": "image/png", b"\xff\xd8": "image/jpeg", b"RI": "image/webp", b"GI": "image/gif"}
    with pytest.raises(UpstreamFailed) as exc:
        checked(data, content_type[data[:2]], complete=True)
    assert exc.value.code == "upstream_invalid_image"
    assert exc.value.retriable is False


def test_header_not_found_within_the_limit_is_refused() -> None:
    data = jpeg_with_app_segments(20)  # about 1.3 MB of segments before the frame header
    with pytest.raises(UpstreamFailed) as exc:
        checked(data[:image_header.HEADER_LIMIT], "image/jpeg", complete=False)
    assert exc.value.code == "upstream_invalid_image"


# --- the pixel budget ------------------------------------------------------------------------------------


def test_budget_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_IMAGE_PIXELS", raising=False)
    assert checked(jpeg_with_dimensions(8192, 8192), "image/jpeg", complete=True) == ImageHeader(8192, 8192)
    with pytest.raises(UpstreamFailed):
        checked(jpeg_with_dimensions(8192, 8193), "image/jpeg", complete=True)
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(UpstreamFailed):
        checked(encoded("PNG", (32, 32)), "image/png", complete=True)


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (bomb_png(), "image/png", "20000x20000 pixels"),
        (jpeg_with_dimensions(30000, 30000), "image/jpeg", "30000x30000 pixels"),
        (png_with_frames_declared(1_000_000), "image/png", "64x64 x 1000000 frames"),
    ],
)
def test_over_budget_is_refused(data: bytes, content_type: str, message: str) -> None:
    with pytest.raises(UpstreamFailed) as exc:
        checked(data, content_type, complete=True)
    assert exc.value.code == "upstream_invalid_image"
    assert exc.value.retriable is False
    assert message in exc.value.message and "over the limit" in exc.value.message


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_frames_count_against_the_budget(fmt: str) -> None:
    one_frame, four_frames = encoded(fmt, (32, 32)), encoded(fmt, (32, 32), frames=4)
    assert checked(one_frame, TYPES[fmt], complete=True, max_pixels=3000) == ImageHeader(32, 32)
    assert checked(four_frames, TYPES[fmt], complete=True, max_pixels=5000) == ImageHeader(32, 32, 4)
    with pytest.raises(UpstreamFailed) as exc:
        checked(four_frames, TYPES[fmt], complete=True, max_pixels=3000)
    assert "32x32 x 4 frames" in exc.value.message


# --- frames counted while a download streams ----------------------------------------------------------------


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_frame_watch_counts_like_parse_whatever_the_pieces(fmt: str, size: int) -> None:
    data = encoded(fmt, (37, 23), frames=5)
    whole = parse(data, TYPES[fmt], complete=True)
    assert whole == ImageHeader(37, 23, 5)
    watch = FrameWatch(TYPES[fmt], parse(data[:64], TYPES[fmt], complete=False) or whole, max_pixels=10**9)
    for piece in pieces(data, size):
        watch.feed(piece)
    assert watch.header == whole


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_frame_watch_refuses_once_over_budget(fmt: str) -> None:
    data = encoded(fmt, (37, 23), frames=5)
    watch = FrameWatch(TYPES[fmt], ImageHeader(37, 23), max_pixels=37 * 23 * 3)
    fed = 0
    with pytest.raises(UpstreamFailed) as exc:
        for piece in pieces(data, 16):
            watch.feed(piece)
            fed += len(piece)
    assert exc.value.code == "upstream_invalid_image"
    assert "37x23 x 4 frames" in exc.value.message
    assert fed < len(data)  # refused at the fourth frame, not at the end


def test_frame_watch_refuses_a_broken_gif_block() -> None:
    data = encoded("GIF", (8, 8), frames=2)
    watch = FrameWatch("image/gif", ImageHeader(8, 8))
    with pytest.raises(UpstreamFailed) as exc:
        watch.feed(data[:-1] + b"\x99")  # the trailer replaced by an unknown block
    assert exc.value.code == "upstream_invalid_image"


def test_frames_past_a_large_comment_are_counted() -> None:
    data = gif_with_comment(encoded("GIF", (8, 8), frames=3), 200_000)
    assert parse(data[:64 * 1024], "image/gif", complete=False) == ImageHeader(8, 8, 1)  # none in the head
    assert parse(data, "image/gif", complete=True) == ImageHeader(8, 8, 3)
    with Image.open(io.BytesIO(data)) as im:  # still a GIF Pillow reads alike
        assert (im.size, im.n_frames) == ((8, 8), 3)
