"""A hostile upstream speaking the `openai` dialect: every answer is one chosen fault.

    with FaultSimulator(fault="drip", drip_s=0.2) as sim:
        providers = {"bad": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}}

`POST /v1/images/generations` (any key, any body) answers according to `fault`:

| fault             | what the gateway receives                                                             |
|-------------------|---------------------------------------------------------------------------------------|
| `echo_headers`    | HTTP `status` (400, 429, 500, ...) whose error message echoes every request header,   |
|                   | Authorization included: a leak if the gateway passes the message on                   |
| `drip`            | a valid answer, one byte every `drip_s`: status line and headers included, or with    |
|                   | `drip_headers=False` the head at once and then the body byte by byte                  |
| `hang`            | nothing: the connection stays open until the simulator exits (at most `hang_s`)       |
| `drip_image`      | a valid answer whose image URL serves a PNG one byte every `drip_s` (headers too)     |
| `hang_image`      | a valid answer whose image URL never answers (at most `hang_s`)                       |
| `bomb_url`        | a URL to a 48 KB PNG whose header declares 20000x20000 (`bomb_size`) pixels           |
| `bomb_b64`        | the same PNG as `b64_json`                                                            |
| `redirect_unsafe` | a URL on the simulator that redirects (302) to `unsafe_target` (default the metadata  |
|                   | service 169.254.169.254; e.g. `http://10.0.0.1/`): refuse before connecting           |
| `unsafe_url`      | `unsafe_target` itself as the image URL                                               |
| `garbage_200`     | HTTP 200 with a bad body, by `variant`: `not_json` (labelled JSON, it is not),        |
|                   | `wrong_shape` (a JSON object without `data`), `data_not_dicts` (`data` holds strings  |
|                   | and numbers), `url_not_string` (`data[0].url` is an object)                           |
| `not_an_image`    | a URL serving an HTML page labelled `image/png`                                       |

Every request is recorded (`sim.requests`, `sim.generations`); no fault needs anything outside 127.0.0.1.
Drips and hangs end when the client goes away or the simulator exits, whichever comes first.
"""

from __future__ import annotations

import base64
import functools
import http
import io
import struct
import threading
import time
import zlib
from typing import Any

from PIL import Image

from .loopback import Answer, Captured, LoopbackSimulator, png_bytes

__all__ = ["FAULTS", "GARBAGE", "METADATA_URL", "FaultSimulator", "bomb_png", "gif_with_comment",
           "jpeg_with_app_segments", "jpeg_with_dimensions", "png_with_frames_declared", "webp_with_junk"]

METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
GARBAGE = ("not_json", "wrong_shape", "data_not_dicts", "url_not_string")
FAULTS = ("echo_headers", "drip", "hang", "drip_image", "hang_image", "bomb_url", "bomb_b64", "redirect_unsafe",
          "unsafe_url", "garbage_200", "not_an_image")
_FAULT_PATH = "/fault/"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real decompression bomb: a 1-bit greyscale PNG of width x height, all zeros (20000x20000: 48 KB)."""
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed pixels
    squeeze = zlib.compressobj(9)
    data = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _jpeg_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(out, "JPEG")
    return out.getvalue()


def _apng_bytes(width: int, height: int, frames: int) -> bytes:
    images = [Image.new("RGB", (width, height), (40 * i % 256, 90, 30)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "PNG", save_all=True, append_images=images[1:])
    return out.getvalue()


def jpeg_with_dimensions(width: int, height: int, source: bytes | None = None) -> bytes:
    """A JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(source or _jpeg_bytes(37, 23))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def jpeg_with_app_segments(count: int, size: int = 65000) -> bytes:
    """A valid JPEG with `count` large APP1 segments (EXIF-like) before its frame header."""
    base = _jpeg_bytes(37, 23)
    segment = b"\xff\xe1" + struct.pack(">H", size + 2) + bytes(size)
    return base[:2] + segment * count + base[2:]


def png_with_frames_declared(frames: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """An APNG whose acTL chunk declares `frames` frames (its CRC fixed, so it is a well-formed chunk)."""
    data = bytearray(_apng_bytes(*size, frames=2))
    at = data.index(b"acTL")
    struct.pack_into(">I", data, at + 4, frames)
    struct.pack_into(">I", data, at + 12, zlib.crc32(bytes(data[at:at + 12])))
    return bytes(data)


def gif_with_comment(gif: bytes, size: int) -> bytes:
    """`gif` with a comment extension of `size` bytes before its first frame (pushes frames past a head)."""
    flags = gif[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    text = bytes(size)
    blocks = b"".join(bytes([len(part)]) + part for part in (text[i:i + 255] for i in range(0, size, 255)))
    return gif[:start] + b"\x21\xfe" + blocks + b"\x00" + gif[start:]


def webp_with_junk(webp: bytes, size: int) -> bytes:
    """`webp` with an unknown chunk of `size` bytes after its first chunk (readers skip it), RIFF size fixed."""
    (first,) = struct.unpack_from("<I", webp, 16)
    at = 20 + first + (first & 1)
    junk = b"JUNK" + struct.pack("<I", size) + bytes(size + (size & 1))
    out = webp[:at] + junk + webp[at:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


class FaultSimulator(LoopbackSimulator):
    def __init__(
        self,
        fault: str,
        *,
        status: int = 500,
        variant: str = "not_json",
        drip_s: float = 0.2,
        drip_headers: bool = True,
        hang_s: float = 30.0,
        unsafe_target: str = METADATA_URL,
        bomb_size: tuple[int, int] = (20000, 20000),
        api_key: str = "sk-fault-upstream",
        port: int = 0,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        if fault == "garbage_200" and variant not in GARBAGE:
            raise ValueError(f"unknown garbage variant {variant!r}; one of {', '.join(GARBAGE)}")
        super().__init__(port)
        self.fault, self.status, self.variant = fault, status, variant
        self.drip_s, self.drip_headers, self.hang_s = drip_s, drip_headers, hang_s
        self.unsafe_target, self.bomb_size, self.api_key = unsafe_target, bomb_size, api_key
        self.released = threading.Event()  # set on exit: every drip and hang ends

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        super().__exit__(*exc)

    def fault_url(self, name: str) -> str:
        return f"{self.base_url}{_FAULT_PATH}{name}"

    # --- answers --------------------------------------------------------------------------------------

    def answer(self, request: Captured) -> Answer:
        if request.path.startswith(_FAULT_PATH):
            return self._fault_file(request.path[len(_FAULT_PATH):])
        if request.path != self.generation_path or request.method != "POST":
            return Answer(404, _error("Invalid URL", "not_found"))
        return self._generation(request)

    def _generation(self, request: Captured) -> Answer:
        fault = self.fault
        if fault == "echo_headers":
            echoed = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
            return Answer(self.status, _error(f"Request refused. You sent: {echoed}", "echo"))
        if fault == "garbage_200":
            return _garbage(self.variant, self.file_url(64, 64, "0"))
        if fault == "bomb_b64":
            return _images({"b64_json": base64.b64encode(bomb_png(*self.bomb_size)).decode()})
        url = {
            "drip_image": self.fault_url("drip.png"),
            "hang_image": self.fault_url("hang.png"),
            "bomb_url": self.fault_url("bomb.png"),
            "redirect_unsafe": self.fault_url("redirect"),
            "unsafe_url": self.unsafe_target,
            "not_an_image": self.fault_url("page.png"),
        }.get(fault, self.file_url(64, 64, "0"))  # drip, hang: the answer itself misbehaves
        return _images({"url": url})

    def _fault_file(self, name: str) -> Answer:
        if name in ("drip.png", "hang.png"):
            return Answer(200, png_bytes(64, 64), {"Content-Type": "image/png"})
        if name == "bomb.png":
            return Answer(200, bomb_png(*self.bomb_size), {"Content-Type": "image/png"})
        if name == "redirect":
            return Answer(302, b"", {"Location": self.unsafe_target, "Content-Type": "text/plain"})
        if name == "page.png":
            return Answer(200, b"<!doctype html><title>Sign in</title><p>Session expired.</p>",
                          {"Content-Type": "image/png"})
        return Answer(404, _error("Invalid URL", "not_found"))

    # --- the wire -------------------------------------------------------------------------------------

    def respond(self, handler: Any, request: Captured) -> None:
        on_generation = request.path == self.generation_path
        name = request.path[len(_FAULT_PATH):] if request.path.startswith(_FAULT_PATH) else None
        if (self.fault == "hang" and on_generation) or name == "hang.png":
            self.released.wait(self.hang_s)  # then the handler returns and the connection closes unanswered
        elif (self.fault == "drip" and on_generation) or name == "drip.png":
            head, body = _raw_response(self.answer(request))
            if self.drip_headers:
                head, body = b"", head + body
            self._drip(handler, body, at_once=head)
        else:
            super().respond(handler, request)

    def _drip(self, handler: Any, raw: bytes, at_once: bytes = b"") -> None:
        try:
            handler.wfile.write(at_once)
        except OSError:
            return
        for i in range(len(raw)):  # bounded by the answer's length
            if self.released.is_set():
                return
            try:
                handler.wfile.write(raw[i:i + 1])
                handler.wfile.flush()
            except OSError:  # the client gave up
                return
            self.released.wait(self.drip_s)


def _raw_response(answer: Answer) -> tuple[bytes, bytes]:
    """The status line and headers, and the body, as they go on the wire."""
    payload, headers = answer.encoded()
    reason = http.HTTPStatus(answer.status).phrase
    lines = [f"HTTP/1.1 {answer.status} {reason}", *(f"{k}: {v}" for k, v in headers.items()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), payload


def _images(item: dict[str, Any]) -> Answer:
    return Answer(200, {"created": int(time.time()), "data": [item]})


def _garbage(variant: str, url: str) -> Answer:
    if variant == "not_json":
        return Answer(200, b"<html><body>502 Bad Gateway</body></html>{", {"Content-Type": "application/json"})
    body = {
        "wrong_shape": {"created": int(time.time()), "images": [{"url": url}]},
        "data_not_dicts": {"created": int(time.time()), "data": [url, 42, None]},
        "url_not_string": {"created": int(time.time()), "data": [{"url": {"href": url}}]},
    }[variant]
    return Answer(200, body)


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
