"""Events on the gateway's EventBridge bus (source `imagegw`).

Internal hand-offs between functions: `Task Queued` -> submit, `Task Generated` -> fetch (rules in
template.yaml). Their detail carries only the task id: the task item is the truth, so such an event is a
nudge that is safe to redeliver or to lose (the schedule sweep re-publishes for tasks whose
`next_check_at` passes).

Lifecycle events for the team's own rules: `Image Task Succeeded` and `Image Task Failed`, whose detail
is the task (`views.event_task`: S3 URIs, never presigned URLs) with the caller's `reference`.

Inbound: `Image Generation Requested` (any source), detail `{request, reference, webhook?}`, asks for images
without HTTP.
"""

from __future__ import annotations

import json
from functools import lru_cache

import boto3

from . import settings

SOURCE = "imagegw"
TASK_QUEUED = "Task Queued"
TASK_GENERATED = "Task Generated"
TASK_SUCCEEDED = "Image Task Succeeded"
TASK_FAILED = "Image Task Failed"
GENERATION_REQUESTED = "Image Generation Requested"
WEBHOOK_DUE = "Webhook Due"  # internal: fetch makes one delivery attempt of a task's webhook
PUT_EVENTS_MAX = 10  # entries per PutEvents call (the API's limit)


@lru_cache(maxsize=1)
def _events():
    return boto3.client("events")


def publish(detail_type: str, task_id: str) -> None:
    """An internal hand-off: the detail is just the task id."""
    publish_detail(detail_type, {"task_id": task_id})


def publish_all(detail_type: str, task_ids: list[str]) -> None:
    """The same hand-off for many tasks (a batch file's lines): PutEvents carries up to 10 entries a call."""
    for start in range(0, len(task_ids), PUT_EVENTS_MAX):
        _put_events([_entry(detail_type, {"task_id": i}) for i in task_ids[start:start + PUT_EVENTS_MAX]])


def publish_detail(detail_type: str, detail: dict) -> None:
    _put_events([_entry(detail_type, detail)])


def _entry(detail_type: str, detail: dict) -> dict:
    return {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail, ensure_ascii=False),
            "EventBusName": settings.current().event_bus}


def _put_events(entries: list[dict]) -> None:
    resp = _events().put_events(Entries=entries)
    if resp.get("FailedEntryCount"):
        failed = next(e for e in resp["Entries"] if e.get("ErrorCode"))
        raise RuntimeError(f"EventBridge refused {resp['FailedEntryCount']} of {len(entries)} "
                           f"{entries[0]['DetailType']} events: {failed.get('ErrorCode')} {failed.get('ErrorMessage')}")
