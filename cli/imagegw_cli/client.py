"""The HTTP calls of the CLI: submit an async generation, read a task, download an image.

Errors from the gateway are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`) and become an
`ApiError`; a gateway that cannot be reached, or answers something else, becomes one too, so the command
line has one kind of failure to print.
"""

from __future__ import annotations

import base64
from urllib.parse import quote
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_BASE_URL = "http://127.0.0.1:3000/v1"
TIMEOUT_S = 30  # per request; a download of a large image streams within it
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

_CONTENT_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp",
                  "image/gif": "gif"}


class ApiError(Exception):
    """A failed call, with the gateway's message and the request field it names (if any)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    def __str__(self) -> str:
        return f"{self.message} (param: {self.param})" if self.param else self.message


@dataclass
class Image:
    data: bytes
    ext: str


class Client:
    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.session = session or requests.Session()

    def generate_async(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /images/generations?async=true`: the task object (202)."""
        return self._call("POST", "/images/generations", params={"async": "true"}, json=body)

    def task(self, task_id: str) -> dict[str, Any]:
        """`GET /images/tasks/{id}`: the task object."""
        return self._call("GET", f"/images/tasks/{quote(task_id, safe='')}")

    def download(self, entry: dict[str, Any]) -> Image:
        """One `data[i]` entry's image: its (presigned) URL, fetched without our key, or its b64_json."""
        if entry.get("url"):
            try:
                # A plain GET: the presigned URL carries its own auth, and our key must not leave for S3.
                resp = requests.get(entry["url"], timeout=TIMEOUT_S)
            except requests.RequestException as exc:
                raise ApiError(f"cannot download {_short(entry['url'])}: {_reason(exc)}") from exc
            if resp.status_code != 200:
                raise ApiError(f"download of {_short(entry['url'])} answered HTTP {resp.status_code}",
                               status=resp.status_code)
            return Image(resp.content, image_ext(resp.headers.get("Content-Type"), resp.content))
        if entry.get("b64_json"):
            data = base64.b64decode(entry["b64_json"])
            return Image(data, image_ext(None, data))
        raise ApiError("the task lists an image with neither url nor b64_json")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        try:
            resp = self.session.request(method, url, headers=headers, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach {self.base_url}: {_reason(exc)}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            raise _error_from(resp, body)
        if not isinstance(body, dict):
            raise ApiError(f"{method} {path} answered HTTP {resp.status_code} without a JSON object",
                           status=resp.status_code)
        return body


def _error_from(resp: requests.Response, body: Any) -> ApiError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return ApiError(str(error["message"]), error.get("param"), error.get("code"), resp.status_code)
    text = " ".join(resp.text.split())[:200]
    return ApiError(f"HTTP {resp.status_code}" + (f": {text}" if text else ""), status=resp.status_code)


def image_ext(content_type: str | None, data: bytes) -> str:
    """The file extension: from the Content-Type when it names an image type, else from the magic bytes."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in _CONTENT_TYPES:
        return _CONTENT_TYPES[ctype]
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "bin"


def _short(url: str) -> str:
    """A URL without its query (a presigned URL's signature does not belong in messages)."""
    return url.split("?", 1)[0]


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {TIMEOUT_S} s"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (is the gateway running, and the URL right?)"
    return type(exc).__name__
