"""The one HTTP client for upstream APIs, and the values it carries: a dialect describes a call as an `HttpCall`
and reads the `HttpReply`; only this module touches the network.

- `timeout_s` bounds the WHOLE call: connect, headers, body and retries. A per-read timeout never fires on
  an upstream that drips a byte at a time, so a timer shuts the call's socket down at the deadline (see
  `Deadline`), retries that would sleep past it are not made, and what follows is an UpstreamTimeout.
- 429 and 5xx are retried here (urllib3 Retry, exponential backoff, Retry-After honoured up to a cap, and
  within the deadline); if they persist they become retriable errors, so the worker moves on to the next route.
- 401/403 become 502 "provider rejected credentials" (the key is never echoed).
- any other 4xx is the request's fault: a 400 carrying the upstream message, with no fallback.
- an answer larger than MAX_BODY_BYTES is refused (b64 images make big answers, so the cap is generous).
Upstream messages are scrubbed (see `scrub`), with the call's own credentials, before they become errors.
The README's "Provider configuration" section states what clients see of these rules.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import requests
from aws_lambda_powertools import Logger
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from . import settings
from .deadline import Deadline
from .errors import GatewayError, RateLimited, UpstreamFailed, UpstreamTimeout, refusal
from .scrub import SCAN_CHARS, fragment, header_secrets, scrub_url

logger = Logger(child=True)

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER_S = 20.0
CONNECT_TIMEOUT_S = 10.0  # at most; never more than the call's own timeout_s
MAX_BODY_BYTES = 64 * 1024 * 1024  # a JSON answer with several b64 images fits; anything bigger is refused
_CHUNK_BYTES = 64 * 1024
#: where relays put their message when it is not OpenAI's `{"error": {"message"}}`, most common first
MESSAGE_KEYS = ("message", "msg", "error")


@dataclass(frozen=True)
class HttpCall:
    """One upstream request, as a dialect builds it."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold the key: never repr'd
    json: Any = None
    params: dict[str, str] | None = None
    timeout_s: float = 120
    #: a multipart/form-data body instead of JSON (edits, variations): text fields, and files as
    #: (field, (filename, bytes, content type)), in the order they are sent
    form: dict[str, str] | None = None
    files: tuple[tuple[str, tuple[str, bytes, str]], ...] | None = field(default=None, repr=False)
    #: a dialect's reading of a non-2xx answer (pure): given the answer and the error `map_http_error` made of
    #: it, the error to raise (e.g. a 422 naming the field, a rate limit's wait read from the body, a retry
    #: hint header); None: `map_http_error`'s, as is
    refine_error: Callable[[HttpReply, GatewayError], GatewayError] | None = field(default=None, repr=False,
                                                                                  compare=False)


@dataclass(frozen=True)
class HttpReply:
    """An upstream's answer, as a dialect reads it."""

    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise UpstreamFailed("The provider answered with something that is not JSON.",
                                 code="bad_upstream_response") from None


#: what runs a call: `send` here, a stub in tests
Send = Callable[[HttpCall], HttpReply]


class _Watched:
    """Connection mixin: every socket a call uses, new or reused from the pool, is watched by its deadline."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _watch(sock)
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _watch(getattr(self, "sock", None))
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


def _watch(sock: socket.socket | None) -> None:
    deadline = Deadline.current()
    if deadline is not None:
        deadline.watch(sock)


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections are watched by the current call's Deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class CappedRetry(Retry):
    """Retry that honours Retry-After but never sleeps longer than MAX_RETRY_AFTER_S inside a Lambda, nor past
    the call's deadline: a retry that would has not been made, and the last answer (or error) stands."""

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER_S)

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> "CappedRetry":
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline = Deadline.current()
        if deadline is not None and new.wait_s(response) >= deadline.remaining():
            reason = error or ResponseError("no time left to retry within the call's timeout")
            raise MaxRetryError(_pool, url, reason)
        return new

    def wait_s(self, response: Any) -> float:
        """How long `sleep` would wait before the next attempt (as urllib3's Retry.sleep decides it)."""
        if self.respect_retry_after_header and response is not None:
            after = self.get_retry_after(response)
            if after:
                return after
        return self.get_backoff_time()


def _retry_policy() -> Retry:
    return CappedRetry(
        total=settings.current().upstream_retries,
        connect=2,
        read=False,  # re-raise read timeouts: the image may be in the works, do not pay twice
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST too: a 429/503 means the upstream did not take the job
        backoff_factor=settings.current().upstream_backoff_s,
        backoff_max=10,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


@lru_cache(maxsize=1)
def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never route provider traffic through ambient proxy settings
    adapter = DeadlineAdapter(max_retries=_retry_policy(), pool_maxsize=16)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def send(call: HttpCall) -> HttpReply:
    """Run one upstream call within `call.timeout_s` in all; return its 2xx reply or raise the mapped error."""
    with Deadline(call.timeout_s, f"The provider did not answer within {call.timeout_s:g} s.") as deadline:
        try:
            resp = session().request(call.method, call.url, headers=call.headers, json=call.json,
                                     params=call.params, data=call.form, files=call.files, allow_redirects=False,
                                     stream=True,
                                     timeout=(min(CONNECT_TIMEOUT_S, call.timeout_s), call.timeout_s))
            try:
                body = _read_body(resp)
            except BaseException:
                resp.close()  # a half-read connection must not go back to the pool
                raise
        except requests.Timeout:
            raise deadline.error() from None
        except (requests.RequestException, Urllib3Error, OSError) as exc:
            if deadline.expired:
                raise deadline.error() from None
            raise UpstreamFailed(f"Could not reach the provider ({type(exc).__name__}).",
                                 code="upstream_unreachable") from None
        if deadline.expired:  # a close-delimited body cut short by the deadline reads as a complete one
            raise deadline.error()
    reply = HttpReply(status=resp.status_code, headers=dict(resp.headers), body=body)
    logger.debug("upstream call", extra={"method": call.method, "url": scrub_url(call.url), "status": reply.status})
    if 200 <= reply.status < 300:
        return reply
    error = map_http_error(reply, secrets=header_secrets(call.headers))
    if call.refine_error is not None:
        error = call.refine_error(reply, error).scrubbed(header_secrets(call.headers))
    raise error


def _read_body(resp: requests.Response) -> bytes:
    """The whole body, refusing one over MAX_BODY_BYTES (announced or actual) without reading it all."""
    announced = resp.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    for chunk in resp.iter_content(_CHUNK_BYTES):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> UpstreamFailed:
    return UpstreamFailed(f"The provider's answer is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.",
                          code="upstream_response_too_large")


def upstream_message(reply: HttpReply, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """The provider's own error message, from the OpenAI shape or the common relay shapes; scrubbed (with
    `secrets`, the call's credentials) and capped, as every upstream text is."""
    return fragment(_raw_message(reply), secrets)


def _raw_message(reply: HttpReply) -> str:
    try:
        payload = reply.json()
    except GatewayError:  # not JSON: enough of the text that scrub cuts it (and drops a token cut in half)
        return reply.body[: 4 * (SCAN_CHARS + 1)].decode("utf-8", "replace")
    return error_message(payload, MESSAGE_KEYS + ("detail", "fail_reason"))


def error_message(payload: Any, keys: tuple[str, ...] = MESSAGE_KEYS) -> str:
    """The provider's own message in a parsed answer: OpenAI's `error.message`, else the first non-blank text
    under one of `keys`; "" when there is none. Upstream text, NOT scrubbed: quote it through `fragment`.
    Dialects read the failures that arrive in a 2xx answer with it too."""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def retry_after_s(headers: dict[str, str]) -> float | None:
    """An answer's Retry-After (seconds, or an HTTP date) in seconds, at most an hour; None when absent or
    unreadable."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return None if seconds != seconds else min(max(seconds, 0.0), 3600.0)


def retry_delay_s(reply: HttpReply) -> float | None:
    """Google's retry hint, which its APIs send in the body rather than as Retry-After: the `retryDelay`
    ("37s", "1.5s") of a `google.rpc.RetryInfo` in `error.details`; seconds, at most an hour, or None."""
    try:
        payload = json.loads(reply.body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                continue
            if seconds == seconds:  # not NaN
                return min(max(seconds, 0.0), 3600.0)
    return None


def map_http_error(reply: HttpReply, secrets: tuple[str, ...] | list[str] = ()) -> GatewayError:
    message = upstream_message(reply, secrets)
    status = reply.status
    if status in (401, 403):
        return UpstreamFailed("The provider rejected the gateway's credentials.", code="provider_auth_failed")
    if status == 429:
        return RateLimited(f"The provider is rate limiting requests{': ' + message if message else ''}.",
                           retry_after_s=retry_after_s(reply.headers) or retry_delay_s(reply))
    if status >= 500:
        return UpstreamFailed(f"The provider failed with HTTP {status}{': ' + message if message else ''}.")
    if status == 408:
        return UpstreamTimeout("The provider timed out.")
    return refusal(message or f"HTTP {status}")
