"""Events on the gateway's EventBridge bus: the internal hand-offs between functions.

`Task Queued` -> submit, `Task Generated` -> fetch (rules in template.yaml). Details carry only the task
id: the task item is the truth, so an event is a nudge that is safe to redeliver or to lose (the schedule
sweep re-publishes for tasks whose `next_check_at` passes).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import boto3

SOURCE = "imagegw"
TASK_QUEUED = "Task Queued"
TASK_GENERATED = "Task Generated"


@lru_cache(maxsize=1)
def _events():
    return boto3.client("events")


def publish(detail_type: str, task_id: str) -> None:
    entry = {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps({"task_id": task_id}),
             "EventBusName": os.environ["EVENT_BUS"]}
    resp = _events().put_events(Entries=[entry])
    if resp.get("FailedEntryCount"):
        raise RuntimeError(f"EventBridge refused {detail_type} for {task_id}: {resp['Entries'][0]}")
