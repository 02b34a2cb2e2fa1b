"""The HTTP/1.1 front door of the local API Gateway: it takes bursts of connections and answers every request.

API Gateway's front end accepts whatever arrives and answers what it cannot parse itself (400, 408, 414, 431, 501,
505; a body over 10 MB is the API's REQUEST_TOO_LARGE gateway response); it never closes a connection without an
answer. So does this server: its listen backlog holds a burst of BACKLOG connections (the stdlib's default of 5
reset or stalled the rest), and the handler frames request bodies strictly (Content-Length or chunked, never both;
RFC 9112 section 6), answering each malformed request in the gateway's OpenAI error shape and closing the
connection, since where the next request would start is unknown.
"""

from __future__ import annotations

import email.errors
import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("local.apigateway")

BACKLOG = 1024  # listen() backlog; the kernel caps it at net.core.somaxconn (4096 on current Linux)
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_LINE_BYTES = 65536  # a chunk size line or trailer, as the stdlib's request line and header limits
MAX_TRAILERS = 100
READ_TIMEOUT_S = 60  # a client silent this long mid-request is answered 408; an idle keep-alive one is closed
_DIGITS = re.compile(r"[0-9]{1,12}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


def error_body(message: str, error_type: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()


class RequestError(Exception):
    """A request the gateway answers itself, from its status and an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, code: str, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.error_type = status, message, code, error_type


def too_large() -> RequestError:
    """A body over 10 MB: answered with the API's REQUEST_TOO_LARGE gateway response (local/apigateway.py)."""
    return RequestError(413, "Request Too Long", "payload_too_large")


class Server(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-exchange is routine (one debug line); anything else is logged in full."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("a client closed its connection mid-exchange", exc_info=True)
        else:
            log.exception("the local API Gateway failed on a connection")


_HEADER_DEFECTS = (email.errors.MissingHeaderBodySeparatorDefect, email.errors.HeaderDefect)


class RequestHandler(BaseHTTPRequestHandler):
    """BaseHTTPRequestHandler that answers in JSON, rejects malformed framing and reads bodies strictly."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # the stdlib's HTTP/0.9 default answers a bad request line without a status
    server_version = "imagegw-local"
    timeout = READ_TIMEOUT_S  # without one, a client that stops mid-body holds its thread forever
    raw_requestline: bytes  # set by handle_one_request; typeshed's BaseHTTPRequestHandler does not declare it

    # Reason phrases -> the error `code` of the stdlib's own answers (request line, headers, method).
    _CODES = {400: "bad_request", 408: "request_timeout", 414: "uri_too_long", 431: "headers_too_large",
              501: "not_implemented", 505: "http_version_not_supported"}

    def parse_request(self) -> bool:
        # The stdlib closes silently on a blank request line, and answers `GET /path` as HTTP/0.9 (no status).
        if len(self.raw_requestline.split()) != 3:
            self.command, self.request_version, self.requestline = "", self.default_request_version, ""
            self.send_error(400, "Bad request line (expected `METHOD /path HTTP/1.1`)")
            return False
        if not super().parse_request():
            return False
        # A line without a colon, or a folded continuation line (obsolete: RFC 9112 section 5.2 says reject it).
        # (Only the header defects: a multipart Content-Type makes the parser miss its body's boundaries too.)
        if any(isinstance(defect, _HEADER_DEFECTS) for defect in self.headers.defects) \
                or any("\n" in value for value in self.headers.values()):
            self.send_error(400, "Bad request header (a line that is not a `Name: value` header)")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's error answers (414, 431, 501, ...) in the gateway's OpenAI error shape, not HTML."""
        reason = message or self.responses.get(code, ("Error",))[0]
        error_type = "invalid_request_error" if code < 500 else "server_error"
        self.send_json(code, error_body(reason, error_type, self._CODES.get(code, "bad_request")), close=True)
        log.info("%s %d (%s)", self.command or "-", code, reason.split(" (")[0])  # not the request line: secrets

    def send_json(self, status: int, payload: bytes, headers: list[tuple[str, str]] | None = None, *,
                  close: bool = False) -> None:
        if close:
            self.close_connection = True
        self.send_response(status)
        for name, value in headers or [("Content-Type", "application/json")]:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def body_length(self) -> int | None:
        """The declared body length (None: chunked); RequestError for framing API Gateway would refuse."""
        encodings = [c.strip().lower() for v in self.headers.get_all("Transfer-Encoding") or [] for c in v.split(",")]
        lengths = {v.strip() for v in self.headers.get_all("Content-Length") or [] for v in v.split(",")}
        if encodings:
            if lengths:
                raise RequestError(400, "A request may not have both Content-Length and Transfer-Encoding.",
                                   "invalid_framing")
            if encodings != ["chunked"]:
                raise RequestError(501, f"Transfer-Encoding {', '.join(encodings)!r} is not supported; "
                                   "send the body as is, or chunked.", "unsupported_transfer_encoding")
            return None
        if not lengths:
            return 0
        if len(lengths) != 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            raise RequestError(400, "Content-Length must be one whole number of bytes.", "invalid_content_length")
        length = int(next(iter(lengths)))
        if length > MAX_BODY_BYTES:
            raise too_large()
        return length

    def read_body(self) -> bytes | None:
        """The request body, or RequestError (400 for a body that ends early, 408 if the client stalls, 413)."""
        try:
            length = self.body_length()
            if length is None:
                return self._read_chunked()
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            raise RequestError(408, f"The request body stopped arriving for {self.timeout:g} s.",
                               "request_timeout") from None
        if len(body) < length:
            raise RequestError(400, f"The body ended after {len(body)} of the {length} bytes of its Content-Length.",
                               "incomplete_body")
        return body or None

    def _read_chunked(self) -> bytes | None:
        parts, total = [], 0
        while True:
            size_text = self._line("chunk size").split(b";")[0].strip()  # a chunk extension is ignored
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise RequestError(400, f"Invalid chunk size line {size_text[:40]!r} in a chunked body.",
                                   "invalid_chunked_body")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise too_large()
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise RequestError(400, f"The chunked body ended inside a chunk of {size} bytes.",
                                   "incomplete_body")
            if self._line("end of chunk") not in (b"\r\n", b"\n"):
                raise RequestError(400, f"A chunk was longer than its declared {size} bytes.", "invalid_chunked_body")
            parts.append(chunk)
        for _ in range(MAX_TRAILERS):
            if self._line("trailer") in (b"\r\n", b"\n"):
                return b"".join(parts) or None
        raise RequestError(431, f"More than {MAX_TRAILERS} trailer fields.", "headers_too_large")

    def _line(self, what: str) -> bytes:
        line = self.rfile.readline(MAX_LINE_BYTES + 1)
        if not line.endswith(b"\n"):
            if len(line) > MAX_LINE_BYTES:
                raise RequestError(400, f"A {what} line of a chunked body is too long.", "invalid_chunked_body")
            raise RequestError(400, "The chunked body ended before its last chunk.", "incomplete_body")
        return line

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per request is logged by the gateway, without the query string
