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
import os
from functools import lru_cache

import boto3

SOURCE = "imagegw"
TASK_QUEUED = "Task Queued"
TASK_GENERATED = "Task Generated"
TASK_SUCCEEDED = "Image Task Succeeded"
TASK_FAILED = "Image Task Failed"
GENERATION_REQUESTED = "Image Generation Requested"
WEBHOOK_DUE = "Webhook Due"  # internal: fetch makes one delivery attempt of a task's webhook


@lru_cache(maxsize=1)
def _events():
    return boto3.client("events")


def publish(detail_type: str, task_id: str) -> None:
    """An internal hand-off: the detail is just the task id."""
    publish_detail(detail_type, {"task_id": task_id})


def publish_detail(detail_type: str, detail: dict) -> None:
    entry = {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail, ensure_ascii=False),
             "EventBusName": os.environ["EVENT_BUS"]}
    resp = _events().put_events(Entries=[entry])
    if resp.get("FailedEntryCount"):
        raise RuntimeError(f"EventBridge refused {detail_type}: {resp['Entries'][0]}")
