"""The base of every upstream simulator: a threaded HTTP server on 127.0.0.1 that records what it receives,
answers through one `answer(request)` method, and serves real PNGs at `/files/<W>x<H>/<name>.png`.

Bodies are recorded parsed: JSON as its value, `multipart/form-data` as a `Form` (text fields and the files'
exact bytes), anything else (a malformed multipart body included) as text.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def png_bytes(width: int, height: int, colour: tuple[int, ...] = (200, 40, 90)) -> bytes:
    """A real PNG of width x height: RGB, or RGBA when `colour` has four values (an alpha channel)."""
    out = io.BytesIO()
    Image.new("RGBA" if len(colour) == 4 else "RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def half_mask_png(width: int = 64, height: int = 64) -> bytes:
    """An edit mask: opaque on the left half (kept), fully transparent on the right half (to be edited)."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (width // 2, 0, width, height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class FormFile:
    field: str  # the part's name, e.g. "image", "image[]", "mask"
    filename: str | None
    content_type: str  # the part's Content-Type as sent ("" when it had none)
    data: bytes  # exactly the bytes sent


@dataclass
class Form:
    """A `multipart/form-data` body: text fields (each name's values, in order) and files (in order)."""

    fields: dict[str, list[str]]
    files: list[FormFile]

    def value(self, name: str) -> str | None:
        """The field's last value (what a service reading one value takes), or None."""
        values = self.fields.get(name)
        return values[-1] if values else None

    def files_named(self, *names: str) -> list[FormFile]:
        return [f for f in self.files if f.field in names]

    def as_json(self) -> dict[str, Any]:
        """A JSON-printable summary: the fields, and each file's name, type and size (not its bytes)."""
        return {"fields": self.fields, "files": [{"field": f.field, "filename": f.filename,
                                                   "content_type": f.content_type, "size": len(f.data)}
                                                  for f in self.files]}


def parse_form(content_type: str, raw: bytes) -> Form | None:
    """A `multipart/form-data` body as a Form, or None when it is malformed (no boundary, a boundary missing,
    a part without `Content-Disposition: form-data; name=...`)."""
    try:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    except (UnicodeError, ValueError, TypeError):
        return None
    if not message.is_multipart() or message.defects or not message.get_boundary():
        return None
    fields: dict[str, list[str]] = {}
    files: list[FormFile] = []
    for part in message.iter_parts():
        if part.defects or part.get_content_disposition() != "form-data":
            return None
        name = part.get_param("name", header="content-disposition")
        if not name:
            return None
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):  # a nested multipart: not a form
            return None
        filename = part.get_filename()
        if filename is None:
            charset = part.get_content_charset() or "utf-8"
            try:
                fields.setdefault(name, []).append(data.decode(charset))
            except (LookupError, UnicodeDecodeError):
                return None
        else:
            files.append(FormFile(name, filename, part.get("Content-Type", ""), data))
    return Form(fields, files)


def png_header(data: bytes) -> tuple[int, int, str] | None:
    """A PNG's width, height and colour mode (from IHDR: width/height at bytes 16..24, colour type at 25)."""
    if len(data) < 26 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    colour = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}.get(data[25], "unknown")
    return width, height, colour


def image_kind(data: bytes) -> str | None:
    """"png", "jpeg" or "webp" by the magic bytes, or None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(upload: FormFile) -> tuple[int, int] | None:
    """An uploaded image's width and height, or None when it is not a readable PNG, JPEG or WebP."""
    if header := png_header(upload.data):
        return header[:2]
    if image_kind(upload.data) is None:
        return None
    try:
        return Image.open(io.BytesIO(upload.data)).size
    except Exception:  # noqa: BLE001 - any unreadable image is the caller's 400
        return None


@dataclass
class Captured:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, a Form (multipart/form-data), or text
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Answer:
    status: int
    body: Any  # dict/list -> JSON; bytes -> as is
    headers: dict[str, str] | None = None

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """The body as bytes and every header to send with it (JSON by default, Content-Length set)."""
        payload = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        headers = {"Content-Type": "application/json", **(self.headers or {}), "Content-Length": str(len(payload))}
        return payload, headers


def field_problem(body: Any, required: tuple[str, ...], allowed: set[str]) -> str | None:
    """What a service that checks its body's fields would refuse: not an object, a missing or unknown field."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for name in required:
        if name not in body:
            return f"Missing required parameter: '{name}'."
    unknown = sorted(set(body) - allowed)
    return f"Unknown parameter: '{unknown[0]}'." if unknown else None


class LoopbackSimulator:
    """Subclasses implement `answer(request) -> Answer`; use as a context manager.

    `intercept`, when set, sees every request first: an Answer it returns is sent instead of the simulator's
    own (e.g. a hostile upstream echoing the request's headers), None lets the simulator answer.
    """

    generation_path = "/v1/images/generations"  # where the dialect takes image requests
    edit_path = "/v1/images/edits"
    variation_path = "/v1/images/variations"

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Captured] = []
        self.image_downloads = 0
        self.lock = threading.Lock()
        self.intercept: Callable[[Captured], Answer | None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def file_url(self, width: int, height: int, name: str) -> str:
        return f"{self.base_url}/files/{width}x{height}/{name}.png?x-expires=1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def generations(self) -> list[Captured]:
        """The image requests received, in order."""
        return [r for r in self.requests if r.path == self.generation_path]

    @property
    def edits(self) -> list[Captured]:
        """The image edit requests received, in order."""
        return [r for r in self.requests if r.path == self.edit_path]

    @property
    def variations(self) -> list[Captured]:
        """The image variation requests received, in order."""
        return [r for r in self.requests if r.path == self.variation_path]

    def answer(self, request: Captured) -> Answer:  # pragma: no cover - abstract
        raise NotImplementedError

    def respond(self, handler: Any, request: Captured) -> None:
        """Write the answer to `request` (a hook for simulators that misbehave on the wire: drip, hang)."""
        handler._send((self.intercept and self.intercept(request)) or self.answer(request))

    def _serve_file(self, path: str) -> Answer:
        try:
            width, height = map(int, path.split("/")[2].split("x"))
        except (IndexError, ValueError):
            return Answer(404, {"error": "not found"})
        with self.lock:
            self.image_downloads += 1
        return Answer(200, png_bytes(width, height), {"Content-Type": "image/png"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                if self.command == "GET" and parts.path.startswith("/files/"):
                    return self._send(sim._serve_file(parts.path))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                content_type = self.headers.get("Content-Type") or ""
                body: Any
                if content_type.split(";")[0].strip().lower() == "multipart/form-data":
                    body = parse_form(content_type, raw) or raw.decode("utf-8", "replace")
                else:
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
                request = Captured(self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                                   {k.lower(): v for k, v in self.headers.items()}, body)
                with sim.lock:
                    sim.requests.append(request)
                sim.respond(self, request)

            do_GET = do_POST = _handle  # noqa: N815 - http.server naming

            def _send(self, answer: Answer) -> None:
                payload, headers = answer.encoded()
                self.send_response(answer.status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler
