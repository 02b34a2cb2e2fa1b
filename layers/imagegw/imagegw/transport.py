"""The one transport for upstream API calls: timeouts, retries with backoff honouring Retry-After, and the
mapping of upstream failures to the gateway's errors (A1/A2).

- 429 and 5xx are retried here (urllib3 Retry, exponential backoff, Retry-After honoured up to a cap);
  if they persist they become retriable errors, so the worker moves on to the next route.
- 401/403 become 502 "provider rejected credentials" (the key is never echoed).
- any other 4xx is the request's fault: a 400 carrying the upstream message, with no fallback.
Upstream messages are scrubbed (see `scrub`), with the call's own credentials, before they become errors.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import requests
from aws_lambda_powertools import Logger
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .dialects.base import HttpCall, HttpReply
from .errors import GatewayError, RateLimited, UpstreamFailed, UpstreamTimeout, refusal
from .scrub import SCAN_CHARS, fragment, header_secrets, scrub_url

logger = Logger(child=True)

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER_S = 20.0


class CappedRetry(Retry):
    """Retry that honours Retry-After but never sleeps longer than MAX_RETRY_AFTER_S inside a Lambda."""

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER_S)


def _retry_policy() -> Retry:
    return CappedRetry(
        total=int(os.environ.get("UPSTREAM_RETRIES", "2")),
        connect=2,
        read=False,  # re-raise read timeouts: the image may be in the works, do not pay twice
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST too: a 429/503 means the upstream did not take the job
        backoff_factor=float(os.environ.get("UPSTREAM_BACKOFF_S", "0.5")),
        backoff_max=10,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


@lru_cache(maxsize=1)
def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never route provider traffic through ambient proxy settings
    adapter = HTTPAdapter(max_retries=_retry_policy(), pool_maxsize=16)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def send(call: HttpCall) -> HttpReply:
    """Run one upstream call; return its 2xx reply or raise the mapped GatewayError."""
    try:
        resp = session().request(call.method, call.url, headers=call.headers, json=call.json, params=call.params,
                                 timeout=(10, call.timeout_s), allow_redirects=False)
    except requests.Timeout:
        raise UpstreamTimeout(f"The provider did not answer within {call.timeout_s:g} s.") from None
    except requests.RequestException as exc:
        raise UpstreamFailed(f"Could not reach the provider ({type(exc).__name__}).",
                             code="upstream_unreachable") from None
    reply = HttpReply(status=resp.status_code, headers=dict(resp.headers), body=resp.content)
    logger.debug("upstream call", extra={"method": call.method, "url": scrub_url(call.url), "status": reply.status})
    if 200 <= reply.status < 300:
        return reply
    raise map_http_error(reply, secrets=header_secrets(call.headers))


def upstream_message(reply: HttpReply, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """The provider's own error message, from the OpenAI shape or the common relay shapes; scrubbed (with
    `secrets`, the call's credentials) and capped, as every upstream text is."""
    return fragment(_raw_message(reply), secrets)


def _raw_message(reply: HttpReply) -> str:
    try:
        payload = reply.json()
    except GatewayError:  # not JSON: enough of the text that scrub cuts it (and drops a token cut in half)
        return reply.body[: 4 * (SCAN_CHARS + 1)].decode("utf-8", "replace")
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "msg", "error", "detail", "fail_reason"):
            if isinstance(payload.get(key), str) and payload[key]:
                return payload[key]
    return ""


def map_http_error(reply: HttpReply, secrets: tuple[str, ...] | list[str] = ()) -> GatewayError:
    message = upstream_message(reply, secrets)
    status = reply.status
    if status in (401, 403):
        return UpstreamFailed("The provider rejected the gateway's credentials.", code="provider_auth_failed")
    if status == 429:
        return RateLimited(f"The provider is rate limiting requests{': ' + message if message else ''}.")
    if status >= 500:
        return UpstreamFailed(f"The provider failed with HTTP {status}{': ' + message if message else ''}.")
    if status == 408:
        return UpstreamTimeout("The provider timed out.")
    return refusal(message or f"HTTP {status}")
