"""OpenAI-shaped errors: one exception type per public error, each knowing its HTTP status.

Everything the gateway refuses or fails with ends up as `{"error": {message, type, param, code}}` so
that OpenAI SDKs raise their typed exceptions (BadRequestError, AuthenticationError, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .scrub import fragment, scrub


class GatewayError(Exception):
    status = 500
    type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def task_error(self) -> dict[str, Any]:
        """The error as stored on a task (A1: `error: {code, message, type}`)."""
        return {"code": self.code or self.type, "message": self.message, "type": self.type}

    @property
    def retriable(self) -> bool:
        """Whether another route may succeed where this one failed (A2: 429, 5xx, timeouts, connection)."""
        return False

    def scrubbed(self, secrets: Iterable[str | None] = ()) -> "GatewayError":
        """This error with its message scrubbed (secrets, credential-shaped tokens, length): for any error that
        may quote an upstream. In place, so every reference to it (and its `str`) carries the clean text."""
        self.message = scrub(self.message, secrets)
        self.args = (self.message,)
        return self

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, code={self.code!r})"


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContentPolicyViolation(BadRequest):
    default_code = "content_policy_violation"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"
    default_code = "not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    @property
    def retriable(self) -> bool:
        return True


class UpstreamFailed(GatewayError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, retriable: bool = True):
        super().__init__(message, param=param, code=code)
        self._retriable = retriable

    @property
    def retriable(self) -> bool:
        return self._retriable


class NoProvider(GatewayError):
    status = 503
    type = "server_error"
    default_code = "no_provider"


class ProviderConfigInvalid(GatewayError):
    """The provider configuration in force cannot be used (a bad document, a dialect no module speaks): an
    operator's mistake that no retry fixes, so a 503 (not a 500 the SDKs would retry at once) naming it."""

    status = 503
    type = "server_error"
    default_code = "provider_config_invalid"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    default_code = "upstream_timeout"

    @property
    def retriable(self) -> bool:
        return True


class ServerError(GatewayError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


_BY_TYPE_AND_CODE: dict[str, type[GatewayError]] = {
    "content_policy_violation": ContentPolicyViolation,
    "rate_limit_exceeded": RateLimited,
    "upstream_timeout": UpstreamTimeout,
    "no_provider": NoProvider,
    "provider_config_invalid": ProviderConfigInvalid,
}


def from_task_error(error: dict[str, Any]) -> GatewayError:
    """Rebuild the exception from a task's stored error, so a sync request answers with the right status."""
    code = error.get("code")
    cls = _BY_TYPE_AND_CODE.get(code or "")
    if cls is None:
        cls = {
            "invalid_request_error": BadRequest,
            "rate_limit_error": RateLimited,
            "upstream_error": UpstreamFailed,
            "authentication_error": AuthenticationFailed,
        }.get(error.get("type", ""), ServerError)
    return cls(error.get("message", "The task failed."), code=code)


_POLICY_WORDS = ("content_policy", "safety", "moderation", "policy violation", "content policy", "违规", "敏感")


def policy_violation(message: str) -> ContentPolicyViolation | None:
    """A ContentPolicyViolation when a provider's message is worded as a content-policy refusal (the message
    quoted scrubbed: it is upstream text)."""
    if message and any(word in message.lower() for word in _POLICY_WORDS):
        return ContentPolicyViolation(f"The provider refused the prompt under its content policy: "
                                      f"{fragment(message)}")
    return None


def refusal(message: str) -> GatewayError:
    """A provider's refusal of the request itself: content-policy wording is a 400 content_policy_violation,
    anything else a 400 carrying the provider's (scrubbed) message. Never retried on another route."""
    return policy_violation(message) or BadRequest(f"The provider refused the request: {fragment(message)}",
                                                   code="upstream_rejected")
