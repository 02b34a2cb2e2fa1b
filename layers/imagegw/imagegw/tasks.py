"""The task state machine over DynamoDB.

Public `status` only moves forward: queued -> in_progress -> succeeded | failed | cancelled. Inside
in_progress, an internal `stage` says what the next step is and which function takes it:

    queued     --submit-->  waiting (async upstream, checked by poll)  --poll-->  generated | done
                            generated (URLs to download, by fetch)     --fetch--> done
                            done (all images stored)

A worker `claim`s a stage with a lease (a conditional write: stage matches, task not terminal, no live
lease), does the work, then `advance`s or `finish`es conditioned on still holding that lease. So a
redelivered event or a second worker is a no-op, and a late upstream answer after cancel is dropped.
Every non-terminal task sits in the sparse `sweep` index by `next_check_at`, so the schedule finds work
whose event was lost or whose worker died (lease expired) as well as async upstreams due for a check.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

import boto3
from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from . import clock, settings
from .errors import BadRequest, Conflict, NotFound

TERMINAL = ("succeeded", "failed", "cancelled")
SWEEP_INDEX = "sweep-index"
OWNER_INDEX = "owner-index"
SWEEP_PARTITION = "inflight"
WEBHOOK_PARTITION = "webhook"  # terminal tasks whose webhook is still to be delivered


def task_id(created_ms: int, suffix: str) -> str:
    """Every task id: `imgtask_`, the creation time in milliseconds (13 digits), then something unique. Ids sort
    by creation time, so listing by id is listing by age; decimal, so that API Gateway's own timeout answer can
    name a sync request's task (`sync_task_id`) with nothing but its `$context` variables."""
    return f"imgtask_{created_ms:013d}{suffix}"


def new_task_id() -> str:
    return task_id(clock.now_ms(), uuid.uuid4().hex[:8])


def sync_task_id(request_context: dict[str, Any]) -> str | None:
    """The id of the task a sync API request runs itself: `imgtask_<requestTimeEpoch><requestId>`, which the
    template's INTEGRATION_TIMEOUT gateway response also builds; None without those (not an API request)."""
    epoch, request_id = request_context.get("requestTimeEpoch"), request_context.get("requestId")
    if not isinstance(epoch, int) or not isinstance(request_id, str) or not request_id:
        return None
    return task_id(epoch, request_id)


@lru_cache(maxsize=1)
def table():
    return boto3.resource("dynamodb").Table(settings.current().task_table)


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal: give callers ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class Task:
    id: str
    owner: str
    status: str
    stage: str
    model: str
    request: dict[str, Any]
    created_at: int
    updated_at: int
    progress: int = 0
    route_index: int = 0
    completed_at: int | None = None
    upstream: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)  # images still to fetch: {url, revised_prompt}
    images: list[dict[str, Any]] = field(default_factory=list)  # stored: {key, content_type, size, revised_prompt}
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    next_check_at: int | None = None
    lease_id: str | None = None
    lease_until: int | None = None
    claims: int = 0
    checked_at: int | None = None  # when an async upstream was last asked about it
    reference: str | None = None  # the caller's id, for tasks requested by bus events
    webhook: str | None = None
    webhook_status: str | None = None  # pending, delivered or failed (see webhooks.delivery_state)
    webhook_attempts: int = 0
    webhook_lease: int | None = None
    webhook_error: str | None = None  # why the last attempt failed
    batch: str | None = None  # the batch record of a task read from a batch file (see `batches`)
    line: int | None = None  # its line number in that file
    custom_id: str | None = None  # the line's custom_id
    request_hash: str | None = None  # a sync request's body, hashed: its SDK's retry finds the task by it
    operation: str | None = None  # "edit" or "variation"; None: a generation
    inputs: dict[str, Any] | None = None  # an edit's or a variation's files in the bucket: {images: [keys], mask?}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Task":
        item = _plain(item)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in item.items() if k in known})

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _retention_expiry() -> int:
    days = settings.current().task_retention_days
    return clock.now_ms() // 1000 + days * 86400


def create(owner: str, model: str, request: dict[str, Any], *, check_after_s: int = 60,
           task_id: str | None = None, **fields: Any) -> Task | None:
    """Put a new queued task. `check_after_s` is when the sweep re-publishes it if its event was lost.

    With an explicit `task_id` (derived from an event id) a second create of the same task returns None."""
    now = clock.now_ms()
    task = Task(id=task_id or new_task_id(), owner=owner, status="queued", stage="queued", model=model,
                request=request, created_at=now, updated_at=now, next_check_at=now + check_after_s * 1000, **fields)
    return _put(task, live=True)


def create_claimed(owner: str, model: str, request: dict[str, Any], *, task_id: str, lease_s: int,
                   **fields: Any) -> Task | None:
    """Put a new task already claimed for its submit stage by the invocation that creates it: the sync fast
    path's one write, instead of a put, an event and a claim. Its lease protects it as any claim does: should
    the invocation die, the sweep hands the stage to the submit function once the lease has passed. None when
    a task with that id exists."""
    now = clock.now_ms()
    until = now + lease_s * 1000
    task = Task(id=task_id, owner=owner, status="in_progress", stage="queued", model=model, request=request,
                created_at=now, updated_at=now, progress=5, next_check_at=until, lease_id=uuid.uuid4().hex,
                lease_until=until, claims=1, **fields)
    return _put(task, live=True)


def find_recent(owner: str, request_hash: str, *, since_ms: int) -> Task | None:
    """The newest task of `owner` created since `since_ms` whose request hashes to `request_hash` (one query of
    the owner index, which ids keep in time order)."""
    kwargs: dict[str, Any] = {
        "IndexName": OWNER_INDEX, "ScanIndexForward": False,
        "KeyConditionExpression": Key("owner").eq(owner) & Key("id").gte(task_id(since_ms, "")),
        "FilterExpression": Attr("request_hash").eq(request_hash),
    }
    while True:
        page = table().query(**kwargs)
        if page["Items"]:
            return Task.from_item(page["Items"][0])
        if "LastEvaluatedKey" not in page:
            return None
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def create_failed(owner: str, model: str, request: dict[str, Any], error: dict[str, Any], *,
                  task_id: str | None = None, **fields: Any) -> Task | None:
    """Put a task that failed before it started (an invalid request that came as an event): never lost."""
    now = clock.now_ms()
    task = Task(id=task_id or new_task_id(), owner=owner, status="failed", stage="done", model=model,
                request=request, created_at=now, updated_at=now, completed_at=now, error=error, **fields)
    return _put(task, live=False)


def storable(value: Any) -> Any:
    """`value` as DynamoDB can hold it. A refused request is kept on its failed task as it came, and it may
    hold what DynamoDB refuses: floats (boto3 takes Decimal only), integers beyond 38 digits, strings with lone
    surrogates, odd types. Those become text; everything a valid request holds passes unchanged."""
    if isinstance(value, dict):
        return {storable_text(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and len(str(abs(value))) <= 38:
        return value
    if isinstance(value, str):
        return storable_text(value)
    return storable_text(repr(value)[:200])


def storable_text(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _put(task: Task, *, live: bool) -> Task | None:
    item = {k: v for k, v in task.__dict__.items() if v is not None and v != [] and v != {}}
    item["request"] = storable(task.request)  # kept even when empty (an event that carried no request)
    item["expires_at"] = _retention_expiry()
    if live:
        item["sweep"] = SWEEP_PARTITION
    try:
        table().put_item(Item=item, ConditionExpression="attribute_not_exists(id)")
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return None
        raise
    return task


def update_if(key: str, **kwargs: Any) -> dict[str, Any] | None:
    """One conditional UpdateItem on the item `key`: its attributes as they are after the update (those
    ReturnValues asks for, plain numbers), or None when the condition does not hold."""
    try:
        resp = table().update_item(Key={"id": key}, **kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return None
        raise
    return _plain(resp.get("Attributes") or {})


def get(task_id: str, owner: str | None = None) -> Task:
    """The task, read consistently; 404 when missing or owned by another key (never reveal which)."""
    item = table().get_item(Key={"id": task_id}, ConsistentRead=True).get("Item")
    if not item or (owner is not None and item.get("owner") != owner):
        raise NotFound(f"No task found with id '{task_id}'.", param="id")
    return Task.from_item(item)


def _update(task_id: str, sets: dict[str, Any], condition: str, values: dict[str, Any],
            removes: tuple[str, ...] = (), adds: dict[str, int] | None = None) -> Task | None:
    """One conditional update; None when the condition does not hold (someone else got there first)."""
    names: dict[str, str] = {}
    vals = dict(values)
    parts = []
    for i, (attr, value) in enumerate(sets.items()):
        names[f"#s{i}"] = attr
        vals[f":s{i}"] = value
        parts.append(f"#s{i} = :s{i}")
    expr = "SET " + ", ".join(parts)
    for i, (attr, value) in enumerate((adds or {}).items()):
        names[f"#a{i}"] = attr
        vals[f":a{i}"] = value
        expr += f" ADD #a{i} :a{i}" if i == 0 else f", #a{i} :a{i}"
    if removes:
        for i, attr in enumerate(removes):
            names[f"#r{i}"] = attr
        expr += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(removes)))
    names.update({alias: attr for alias, attr in (("#status", "status"), ("#stage", "stage"), ("#owner", "owner"))
                  if alias in condition})
    item = update_if(task_id, UpdateExpression=expr, ConditionExpression=condition, ExpressionAttributeNames=names,
                     ExpressionAttributeValues=vals, ReturnValues="ALL_NEW")
    return None if item is None else Task.from_item(item)


_NOT_TERMINAL = "#status IN (:queued, :in_progress)"
_STATUS_VALUES = {":queued": "queued", ":in_progress": "in_progress"}


def claim(task_id: str, stage: str, *, lease_s: int, min_check_gap_ms: int | None = None) -> Task | None:
    """Take the lease on `stage` of a live task. None if another worker holds it or the stage has moved.

    With `min_check_gap_ms` (checks of an async upstream) it is also None when the last check began less than
    that long ago: however many readers and sweeps there are, an upstream is asked at most that often."""
    now = clock.now_ms()
    until = now + lease_s * 1000
    sets = {"lease_id": uuid.uuid4().hex, "lease_until": until, "next_check_at": until, "status": "in_progress",
            "updated_at": now}
    condition = f"#stage = :stage AND {_NOT_TERMINAL} AND (attribute_not_exists(lease_until) OR lease_until < :now)"
    values = {":stage": stage, ":now": now, **_STATUS_VALUES}
    if stage == "queued":
        sets["progress"] = 5  # taken up: show movement before the upstream answers
    if min_check_gap_ms is not None:
        sets["checked_at"] = now
        condition += " AND (attribute_not_exists(checked_at) OR checked_at <= :checked_before)"
        values[":checked_before"] = now - min_check_gap_ms
    return _update(task_id, sets, condition, values, adds={"claims": 1})


def advance(task: Task, stage: str, *, next_check_at: int, **fields: Any) -> Task | None:
    """Move a claimed task to `stage`, releasing the lease; None if the lease was lost or it was cancelled."""
    sets = {"stage": stage, "next_check_at": next_check_at, "updated_at": clock.now_ms(), "claims": 0, **fields}
    return _update(task.id, sets, f"lease_id = :lease AND {_NOT_TERMINAL}",
                   {":lease": task.lease_id, **_STATUS_VALUES}, removes=("lease_id", "lease_until"))


def release(task: Task, *, retry_at: int, count_attempt: bool = False) -> Task | None:
    """Give the lease back without progress (e.g. an upstream check that is not ready yet). `count_attempt`
    keeps the claim counted, so a stage that keeps failing (a download) runs out of attempts."""
    sets: dict[str, Any] = {"next_check_at": retry_at, "updated_at": clock.now_ms()}
    if not count_attempt:
        sets["claims"] = 0
    return _update(task.id, sets,
                   f"lease_id = :lease AND {_NOT_TERMINAL}", {":lease": task.lease_id, **_STATUS_VALUES},
                   removes=("lease_id", "lease_until"))


def touch(task: Task, *, next_check_at: int) -> Task | None:
    """Push back the next check of an unclaimed (or abandoned) stage; None if someone moved it meanwhile."""
    now = clock.now_ms()
    return _update(task.id, {"next_check_at": next_check_at, "updated_at": now},
                   f"#stage = :stage AND {_NOT_TERMINAL} AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                   {":stage": task.stage, ":now": now, **_STATUS_VALUES})


def finish(task: Task, status: str, **fields: Any) -> Task | None:
    """End a claimed task (succeeded or failed), leaving the sweep index; None if it was cancelled."""
    now = clock.now_ms()
    sets = {"status": status, "stage": "done", "updated_at": now, "completed_at": now, **fields}
    if status == "succeeded":
        sets["progress"] = 100
    return _update(task.id, sets, f"lease_id = :lease AND {_NOT_TERMINAL}",
                   {":lease": task.lease_id, **_STATUS_VALUES},
                   removes=("lease_id", "lease_until", "next_check_at", "sweep", "sources"))


def fail_unclaimed(task_id: str, error: dict[str, Any]) -> Task | None:
    """Fail a live task without holding its lease (the sweep giving up on a task whose workers keep dying)."""
    now = clock.now_ms()
    return _update(task_id, {"status": "failed", "stage": "done", "error": error, "updated_at": now,
                             "completed_at": now}, _NOT_TERMINAL, dict(_STATUS_VALUES),
                   removes=("lease_id", "lease_until", "next_check_at", "sweep", "sources"))


def cancel(task_id: str, owner: str) -> Task:
    get(task_id, owner)  # 404 for a missing or foreign task, before anything else
    now = clock.now_ms()
    task = _update(task_id, {"status": "cancelled", "updated_at": now, "completed_at": now},
                   f"{_NOT_TERMINAL} AND #owner = :owner", {":owner": owner, **_STATUS_VALUES},
                   removes=("next_check_at", "sweep", "lease_id", "lease_until"))
    if task is None:
        current = get(task_id, owner)
        raise Conflict(f"Task '{task_id}' is already {current.status} and cannot be cancelled.",
                       code="task_not_cancellable")
    return task


def list_for(owner: str, *, limit: int = 20, after: str | None = None) -> tuple[list[Task], bool]:
    """The owner's tasks, newest first, `limit` at a time after the task id `after` (a cursor)."""
    kwargs: dict[str, Any] = {
        "IndexName": OWNER_INDEX,
        "KeyConditionExpression": Key("owner").eq(owner),
        "ScanIndexForward": False,
        "Limit": limit + 1,
    }
    if after:
        try:
            cursor = get(after, owner)
        except NotFound:
            raise BadRequest(f"Invalid 'after': no task '{after}' to continue from.", param="after") from None
        kwargs["ExclusiveStartKey"] = {"id": cursor.id, "owner": owner}
    items = table().query(**kwargs)["Items"]
    return [Task.from_item(i) for i in items[:limit]], len(items) > limit


def due(*, now: int | None = None, limit: int = 100, partition: str = SWEEP_PARTITION) -> list[str]:
    """Ids of live tasks (or, with WEBHOOK_PARTITION, of webhooks) whose `next_check_at` has passed."""
    now = now if now is not None else clock.now_ms()
    resp = table().query(IndexName=SWEEP_INDEX, Limit=limit, ProjectionExpression="id",
                         KeyConditionExpression=Key("sweep").eq(partition) & Key("next_check_at").lte(now))
    return [item["id"] for item in resp["Items"]]


# -- webhook deliveries: a terminal task re-enters the sweep index under WEBHOOK_PARTITION ------------------

_WEBHOOK_FREE = "(attribute_not_exists(webhook_lease) OR webhook_lease < :now)"


def webhook_pending(task: Task, *, check_after_s: int = 60) -> Task | None:
    """Queue the first delivery of a terminal task's webhook (once: a second call finds it queued)."""
    now = clock.now_ms()
    return _update(task.id, {"webhook_status": "pending", "sweep": WEBHOOK_PARTITION,
                             "next_check_at": now + check_after_s * 1000, "webhook_attempts": 0},
                   "NOT " + _NOT_TERMINAL + " AND attribute_not_exists(webhook_status)", dict(_STATUS_VALUES))


def claim_webhook(task_id: str, *, lease_s: int = 60) -> Task | None:
    """Take the next delivery attempt; None if it is not pending or another worker is making it."""
    now = clock.now_ms()
    return _update(task_id, {"webhook_lease": now + lease_s * 1000},
                   f"webhook_status = :pending AND {_WEBHOOK_FREE}", {":pending": "pending", ":now": now})


def webhook_retry(task: Task, *, attempts: int, next_at: int, last_error: str) -> Task | None:
    # A retry due at once also travels on the bus; the index entry is its safety net should that be lost.
    return _update(task.id, {"webhook_attempts": attempts, "webhook_error": last_error,
                             "next_check_at": next_at if next_at > clock.now_ms() else clock.now_ms() + 60_000},  # 0: the bus carries it
                   "webhook_lease = :lease", {":lease": task.webhook_lease}, removes=("webhook_lease",))


def webhook_done(task: Task, *, attempts: int, status: str, last_error: str | None = None) -> Task | None:
    """The delivery ended: `delivered`, or `failed` with why in `webhook_error`."""
    sets: dict[str, Any] = {"webhook_attempts": attempts, "webhook_status": status}
    if last_error:
        sets["webhook_error"] = last_error
    return _update(task.id, sets,
                   "webhook_lease = :lease", {":lease": task.webhook_lease},
                   removes=("webhook_lease", "sweep", "next_check_at"))


def webhook_touch(task_id: str, *, next_at: int) -> Task | None:
    """The sweep re-published a due delivery: not again until `next_at` unless it fails meanwhile."""
    now = clock.now_ms()
    return _update(task_id, {"next_check_at": next_at}, f"webhook_status = :pending AND {_WEBHOOK_FREE}",
                   {":pending": "pending", ":now": now})
