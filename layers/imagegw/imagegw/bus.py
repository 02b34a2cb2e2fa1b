"""Events on the gateway's EventBridge bus (source `imagegw`).

Internal hand-offs between functions: `Task Queued` -> submit, `Task Generated` -> fetch, `Sweep Shard` ->
poll (rules in template.yaml). Their detail carries only the task id: the task item is the truth, so such an event is a
nudge that is safe to redeliver or to lose (the schedule sweep re-publishes for tasks whose
`next_check_at` passes).

Lifecycle events for the team's own rules: `Image Task Succeeded` and `Image Task Failed`, whose detail
is the task (`views.event_task`: S3 URIs, never presigned URLs) with the caller's `reference`.

Inbound: `Image Generation Requested` (any source), detail `{request, reference, webhook?}`, asks for images
without HTTP.

Every publish goes to one sink: EventBridge when deployed and in the local stack; `use` puts another in its
place (tests run the rules' functions in process, or record what was published), so nothing has to replace
the publishing functions themselves.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Protocol

import boto3

from . import settings
from .seam import Seam

SOURCE = "imagegw"
TASK_QUEUED = "Task Queued"
TASK_GENERATED = "Task Generated"
TASK_SUCCEEDED = "Image Task Succeeded"
TASK_FAILED = "Image Task Failed"
GENERATION_REQUESTED = "Image Generation Requested"
WEBHOOK_DUE = "Webhook Due"  # internal: fetch makes one delivery attempt of a task's webhook
SWEEP_SHARD = "Sweep Shard"  # internal: poll sweeps the partitions in the detail (see `sweeper`)
PUT_EVENTS_MAX = 10  # entries per PutEvents call (the API's limit)


class Sink(Protocol):
    def send(self, detail_type: str, details: list[dict]) -> None:
        """Deliver one event of `detail_type` per detail, or raise."""


@lru_cache(maxsize=1)
def client() -> Any:
    """The shared EventBridge client (created on first use; `client.cache_clear()` resets it)."""
    return boto3.client("events")


class EventBridge:
    """The gateway's bus: PutEvents, up to 10 entries a call. A refused entry is an error naming it."""

    def __init__(self, events_client: Any = None):
        self._client = events_client

    def send(self, detail_type: str, details: list[dict]) -> None:
        for start in range(0, len(details), PUT_EVENTS_MAX):
            self._put([_entry(detail_type, detail) for detail in details[start:start + PUT_EVENTS_MAX]])

    def _put(self, entries: list[dict]) -> None:
        resp = (self._client or client()).put_events(Entries=entries)
        if resp.get("FailedEntryCount"):
            failed = next(e for e in resp["Entries"] if e.get("ErrorCode"))
            raise RuntimeError(f"EventBridge refused {resp['FailedEntryCount']} of {len(entries)} "
                               f"{entries[0]['DetailType']} events: {failed.get('ErrorCode')} "
                               f"{failed.get('ErrorMessage')}")


_sink: Seam[Sink] = Seam(EventBridge())
#: publish to another sink instead of EventBridge until the block ends (every thread does)
use = _sink.use


def publish(detail_type: str, task_id: str, **extra: str) -> None:
    """An internal hand-off: the detail is the task id (and, for a task woken in a provider's line, `woken_by`:
    that provider)."""
    _sink.current.send(detail_type, [{"task_id": task_id, **extra}])


def publish_all(detail_type: str, task_ids: list[str]) -> None:
    """The same hand-off for many tasks (a batch file's lines): PutEvents carries up to 10 entries a call."""
    if task_ids:
        _sink.current.send(detail_type, [{"task_id": i} for i in task_ids])


def publish_detail(detail_type: str, detail: dict) -> None:
    _sink.current.send(detail_type, [detail])


def publish_details(detail_type: str, details: list[dict]) -> None:
    """One event of `detail_type` per detail (up to 10 a PutEvents call)."""
    if details:
        _sink.current.send(detail_type, details)


def _entry(detail_type: str, detail: dict) -> dict:
    return {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail, ensure_ascii=False),
            "EventBusName": settings.current().event_bus}
