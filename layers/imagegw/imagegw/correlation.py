"""The correlation id of an invocation: API Gateway's request id for an HTTP request, the event's id for a bus
event or the schedule. Each handler binds it (`bound`) for the invocation; Powertools puts it in every log line
(`inject_lambda_context(correlation_id_path=PATH)`), the API answers it as `x-request-id`, and a task keeps the id
of the request (or event) that created it, so one id leads from a client's error to every log line and task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

#: where Powertools' Logger finds the id in an event (JMESPath): the HTTP request's, else the event's
PATH = "requestContext.requestId || id"

_current: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def of(event: Any) -> str | None:
    """The id an event carries: API Gateway's request id, an EventBridge event's id, or a queue message's."""
    if not isinstance(event, dict):
        return None
    context = event.get("requestContext")
    found = context.get("requestId") if isinstance(context, dict) else None
    if found is None:
        found = event.get("id")
    if found is None and isinstance(event.get("Records"), list) and event["Records"]:
        first = event["Records"][0]
        found = first.get("messageId") if isinstance(first, dict) else None
    return str(found)[:128] if found else None


def current() -> str | None:
    """The id of the invocation running now (None outside a handler)."""
    return _current.get()


def bound(handler: Callable[[dict, Any], Any]) -> Callable[[dict, Any], Any]:
    """A handler that runs with its event's correlation id bound."""

    @functools.wraps(handler)
    def with_id(event: dict, context: Any) -> Any:
        token = _current.set(of(event))
        try:
            return handler(event, context)
        finally:
            _current.reset(token)

    return with_id
