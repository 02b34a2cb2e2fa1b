"""Requests that arrive as events rather than HTTP: "Image Generation Requested" on the gateway's bus.

detail: `{"request": {<image request>}, "reference": "<caller's id>", "webhook"?: "https://..."}`. The task
is owned by the deployment's event tenant (`EVENT_TENANT`) and carries the `reference`, so every later event
of it does too. An invalid request becomes a failed task with a clear error (and its "Image Task Failed"
event), never a silent drop. The task id derives from the event id, so a redelivered event is a no-op.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from . import lifecycle, settings, tasks, worker
from .capabilities import validate_routable
from .errors import BadRequest, GatewayError
from .request import parse_request

logger = Logger(child=True)
MAX_REFERENCE = 512


def event_tenant() -> str:
    return settings.current().event_tenant


def task_id_for_event(event_id: str, event_time: str | None) -> str:
    """Time-ordered like every task id, and the same for every delivery of one event."""
    try:
        moment = datetime.fromisoformat((event_time or "").replace("Z", "+00:00"))
        ms = int(moment.timestamp() * 1000)
    except ValueError:
        ms = 0
    return tasks.task_id(ms, hashlib.sha256(event_id.encode()).hexdigest()[:8])


def accept(event: dict[str, Any]) -> tasks.Task | None:
    """Create (and start) the task an "Image Generation Requested" event asks for."""
    raw_detail = event.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    raw_request = detail.get("request")
    reference = detail.get("reference")
    fields: dict[str, Any] = {"reference": str(reference)[:MAX_REFERENCE] if reference is not None else None}
    task_id = task_id_for_event(str(event.get("id", "")), event.get("time"))
    model = str((raw_request or {}).get("model", "")) if isinstance(raw_request, dict) else ""
    try:
        if not isinstance(raw_request, dict):
            raise BadRequest("The event's detail must carry `request`: an image request object.", param="request")
        req = parse_request({**raw_request, **({"webhook": detail["webhook"]} if detail.get("webhook") else {})})
        validate_routable(req)
    except GatewayError as exc:
        logger.info("invalid requested event", extra={"task_id": task_id, "error": exc.message})
        failed = tasks.create(event_tenant(), model or "unknown", raw_request if isinstance(raw_request, dict)
                              else {}, failed_with=exc.task_error(), task_id=task_id, **fields)
        if failed:
            lifecycle.ended(failed)
        return failed
    task = tasks.create(event_tenant(), req.model, req.upstream_fields(), task_id=task_id,
                        webhook=req.webhook, **fields)
    if task is None:
        logger.info("event already accepted", extra={"task_id": task_id})
        return None
    return worker.submit_queued(task.id)  # already in the submit function: no hop through the bus
