"""The task state machine over DynamoDB.

Public `status` moves forward: queued -> in_progress -> succeeded | failed | cancelled, with one way back:
`wait` returns a task the upstream took nothing from (no slot of its provider's limits, or a 429) to queued. Inside
in_progress, an internal `stage` says what the next step is and which function takes it:

    queued     --submit-->  waiting (async upstream, checked by poll)  --poll-->  generated | done
                            generated (URLs to download, by fetch)     --fetch--> done
                            done (all images stored)

A worker `claim`s a stage with a lease (a conditional write: stage matches, task not terminal, no live
lease), does the work, then `advance`s or `finish`es conditioned on still holding that lease. So a
redelivered event or a second worker is a no-op, and a late upstream answer after cancel is dropped.
Every non-terminal task sits in the sparse `sweep` index by `next_check_at`, so the schedule finds work
whose event was lost or whose worker died (lease expired) as well as async upstreams due for a check.

Every task is put by `create` (queued, claimed by its creator, or failed from the start), whoever asks: the
API, bus intake or a batch file. A transition is one conditional write (`update`); what a task's end sets off
(events, webhooks, batch counts) is `lifecycle`'s, and the webhook delivery state is `webhooks`'s.
"""

from __future__ import annotations

import heapq
import uuid
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

from . import clock, correlation, shards, table
from .errors import BadRequest, Conflict, NotFound

TERMINAL = ("succeeded", "failed", "cancelled")
OWNER_INDEX = "owner-key-index"  # owner_key (the owner; the event tenant's spread: `shards.owner_key`), then id


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
    waiting_for: str | None = None  # queued again for a provider's capacity: "capacity" or "rate_limit" (`pacing`)
    waiting_since: int | None = None  # when it first had to wait
    waits: int = 0  # how many times it was put back to wait (its backoff grows with it)
    waiting_on: str | None = None  # the provider whose line it joined (`pacing`)
    request_id: str | None = None  # the request (or event) that created it: its log lines' correlation id
    queue_position: int | None = None  # its place in that line, counted when the task is read (1 = next)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Task:
        item = table.plain(item)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in item.items() if k in known})

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def create(owner: str, model: str, request: dict[str, Any], *, task_id: str | None = None,
           check_after_s: int = 60, claimed_for_s: int | None = None, failed_with: dict[str, Any] | None = None,
           **fields: Any) -> Task | None:
    """Put a new task; None when a task with `task_id` exists (an id derived from an event, a request or a
    batch line makes a second create of the same task a no-op). Every task starts here, in one of three ways:

    - queued (the default): `check_after_s` is when the sweep re-publishes its "Task Queued" should it be lost;
    - `claimed_for_s`: already claimed for its submit stage by the invocation that creates it, for that many
      seconds (the sync fast path's one write, instead of a put, an event and a claim). Its lease protects it
      as any claim does: should the invocation die, the sweep hands the stage on once the lease has passed;
    - `failed_with` (a task error): failed before it started (an invalid request that came as an event or a
      batch line), so that it is never lost and its caller still learns why.
    """
    if claimed_for_s is not None and failed_with is not None:
        raise ValueError("A task starts claimed or failed, not both.")
    now = clock.now_ms()
    start: dict[str, Any] = {"status": "queued", "stage": "queued", "next_check_at": now + check_after_s * 1000}
    if claimed_for_s is not None:
        until = now + claimed_for_s * 1000
        start = {"status": "in_progress", "stage": "queued", "progress": 5, "next_check_at": until,
                 "lease_id": uuid.uuid4().hex, "lease_until": until, "claims": 1}
    elif failed_with is not None:
        start = {"status": "failed", "stage": "done", "completed_at": now, "error": failed_with}
    fields.setdefault("request_id", correlation.current())
    task = Task(id=task_id or new_task_id(), owner=owner, model=model, request=request, created_at=now,
                updated_at=now, **start, **fields)
    item = {k: v for k, v in task.__dict__.items() if v is not None and v != [] and v != {}}
    item["request"] = storable(task.request)  # kept even when empty (an event that carried no request)
    item["expires_at"] = table.retention_expiry()
    item["owner_key"] = shards.owner_key(owner, task.id)
    if not task.terminal:
        item["sweep"] = shards.partition(shards.LIVE, task.id)
    return task if table.put_if_absent(item) else None


def find_recent(owner: str, request_hash: str, *, since_ms: int) -> Task | None:
    """The newest task of `owner` created since `since_ms` whose request hashes to `request_hash` (one query of
    the owner index per owner key, which ids keep in time order)."""
    found: list[Task] = []
    for key in shards.owner_keys(owner):
        kwargs: dict[str, Any] = {
            "IndexName": OWNER_INDEX, "ScanIndexForward": False,
            "KeyConditionExpression": Key("owner_key").eq(key) & Key("id").gte(task_id(since_ms, "")),
            "FilterExpression": Attr("request_hash").eq(request_hash) & Attr("owner").eq(owner),
        }
        while True:
            page = table.task_table().query(**kwargs)
            if page["Items"]:
                found.append(Task.from_item(page["Items"][0]))
                break
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return max(found, key=lambda t: t.id, default=None)


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


def get(task_id: str, owner: str | None = None) -> Task:
    """The task, read consistently; 404 when missing or owned by another key (never reveal which)."""
    item = table.get(task_id)
    if not item or (owner is not None and item.get("owner") != owner):
        raise NotFound(f"No task found with id '{task_id}'.", param="id")
    return Task.from_item(item)


#: the condition that a task is live (not terminal), with the values it names
LIVE = "#status IN (:queued, :in_progress)"
LIVE_VALUES = {":queued": "queued", ":in_progress": "in_progress"}


def update(task_id: str, sets: dict[str, Any], *, condition: str, values: dict[str, Any] | None = None,
           removes: tuple[str, ...] = (), adds: dict[str, int] | None = None) -> Task | None:
    """One conditional transition of a task: SET `sets`, ADD `adds`, REMOVE `removes` when `condition` holds
    (`#status`, `#stage` and `#owner` may be used in it; `LIVE` says the task is not terminal). The task as it
    is after the write, or None when the condition does not hold (someone else got there first)."""
    names: dict[str, str] = {}
    vals = dict(values or {})
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
    item = table.update_if(task_id, UpdateExpression=expr, ConditionExpression=condition,
                           ExpressionAttributeNames=names, ExpressionAttributeValues=vals, ReturnValues="ALL_NEW")
    return None if item is None else Task.from_item(item)


def claim(task_id: str, stage: str, *, lease_s: int, min_check_gap_ms: int | None = None) -> Task | None:
    """Take the lease on `stage` of a live task. None if another worker holds it or the stage has moved.

    With `min_check_gap_ms` (checks of an async upstream) it is also None when the last check began less than
    that long ago: however many readers and sweeps there are, an upstream is asked at most that often."""
    now = clock.now_ms()
    until = now + lease_s * 1000
    sets = {"lease_id": uuid.uuid4().hex, "lease_until": until, "next_check_at": until, "status": "in_progress",
            "updated_at": now, "sweep": shards.partition(shards.LIVE, task_id)}
    condition = f"#stage = :stage AND {LIVE} AND (attribute_not_exists(lease_until) OR lease_until < :now)"
    values = {":stage": stage, ":now": now, **LIVE_VALUES}
    if stage == "queued":
        sets["progress"] = 5  # taken up: show movement before the upstream answers
    if min_check_gap_ms is not None:
        sets["checked_at"] = now
        condition += " AND (attribute_not_exists(checked_at) OR checked_at <= :checked_before)"
        values[":checked_before"] = now - min_check_gap_ms
    return update(task_id, sets, condition=condition, values=values, adds={"claims": 1})


def advance(task: Task, stage: str, *, next_check_at: int, **fields: Any) -> Task | None:
    """Move a claimed task to `stage`, releasing the lease; None if the lease was lost or it was cancelled."""
    sets = {"stage": stage, "next_check_at": next_check_at, "updated_at": clock.now_ms(), "claims": 0,
            "sweep": shards.partition(shards.LIVE, task.id), **fields}
    return update(task.id, sets, condition=f"lease_id = :lease AND {LIVE}",
                  values={":lease": task.lease_id, **LIVE_VALUES}, removes=("lease_id", "lease_until"))


def release(task: Task, *, retry_at: int, count_attempt: bool = False) -> Task | None:
    """Give the lease back without progress (e.g. an upstream check that is not ready yet). `count_attempt`
    keeps the claim counted, so a stage that keeps failing (a download) runs out of attempts."""
    sets: dict[str, Any] = {"next_check_at": retry_at, "updated_at": clock.now_ms(),
                            "sweep": shards.partition(shards.LIVE, task.id)}
    if not count_attempt:
        sets["claims"] = 0
    return update(task.id, sets, condition=f"lease_id = :lease AND {LIVE}",
                  values={":lease": task.lease_id, **LIVE_VALUES}, removes=("lease_id", "lease_until"))


def wait(task: Task, *, retry_at: int, **fields: Any) -> Task | None:
    """Put a claimed task back in line without progress: the upstream took nothing (no slot, or a 429), so the
    task is `queued` again (the one way back in `status`), unleased, its claims not counted, tried again by
    `retry_at` (or sooner, when a slot is handed to it); None if the lease was lost or it was cancelled."""
    sets = {"status": "queued", "stage": "queued", "next_check_at": retry_at, "updated_at": clock.now_ms(),
            "claims": 0, "progress": 0, "sweep": shards.partition(shards.LIVE, task.id), **fields}
    return update(task.id, sets, condition=f"lease_id = :lease AND {LIVE}",
                  values={":lease": task.lease_id, **LIVE_VALUES}, removes=("lease_id", "lease_until"))


def touch(task: Task, *, next_check_at: int) -> Task | None:
    """Push back the next check of an unclaimed (or abandoned) stage; None if someone moved it meanwhile."""
    now = clock.now_ms()
    return update(task.id, {"next_check_at": next_check_at, "updated_at": now,
                            "sweep": shards.partition(shards.LIVE, task.id)},
                  condition=f"#stage = :stage AND {LIVE} AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                  values={":stage": task.stage, ":now": now, **LIVE_VALUES})


def nudge(task_id: str, *, next_check_at: int) -> bool:
    """Have a queued task that nobody holds come due for the sweep by `next_check_at` (a task woken in its
    provider's line: should its "Task Queued" be lost, the sweep sends it again); False when it is not such a
    task (taken meanwhile, or ended)."""
    now = clock.now_ms()
    return update(task_id, {"next_check_at": next_check_at, "updated_at": now,
                            "sweep": shards.partition(shards.LIVE, task_id)},
                  condition="#stage = :stage AND #status = :queued AND (attribute_not_exists(lease_until) OR "
                            "lease_until < :now)",
                  values={":stage": "queued", ":queued": "queued", ":now": now}) is not None


_ENDED_REMOVES = ("lease_id", "lease_until", "next_check_at", "sweep", "sources")


def finish(task: Task, status: str, **fields: Any) -> Task | None:
    """End a claimed task (succeeded or failed), leaving the sweep index; None if it was cancelled."""
    now = clock.now_ms()
    sets = {"status": status, "stage": "done", "updated_at": now, "completed_at": now, **fields}
    if status == "succeeded":
        sets["progress"] = 100
    return update(task.id, sets, condition=f"lease_id = :lease AND {LIVE}",
                  values={":lease": task.lease_id, **LIVE_VALUES}, removes=_ENDED_REMOVES)


def fail_unclaimed(task_id: str, error: dict[str, Any]) -> Task | None:
    """Fail a live task without holding its lease (the sweep giving up on a task whose workers keep dying)."""
    now = clock.now_ms()
    return update(task_id, {"status": "failed", "stage": "done", "error": error, "updated_at": now,
                            "completed_at": now}, condition=LIVE, values=LIVE_VALUES, removes=_ENDED_REMOVES)


def cancel(task_id: str, owner: str) -> Task:
    get(task_id, owner)  # 404 for a missing or foreign task, before anything else
    now = clock.now_ms()
    task = update(task_id, {"status": "cancelled", "updated_at": now, "completed_at": now},
                  condition=f"{LIVE} AND #owner = :owner", values={":owner": owner, **LIVE_VALUES},
                  removes=("next_check_at", "sweep", "lease_id", "lease_until"))
    if task is None:
        current = get(task_id, owner)
        raise Conflict(f"Task '{task_id}' is already {current.status} and cannot be cancelled.",
                       code="task_not_cancellable")
    return task


def list_for(owner: str, *, limit: int = 20, after: str | None = None) -> tuple[list[Task], bool]:
    """The owner's tasks, newest first, `limit` at a time after the task id `after` (a cursor). One query of the
    owner index; for the event tenant, whose tasks spread over several owner keys, one per key, merged."""
    cursor = None
    if after:
        try:
            cursor = get(after, owner)
        except NotFound:
            raise BadRequest(f"Invalid 'after': no task '{after}' to continue from.", param="after") from None
    keys = shards.owner_keys(owner)
    items: list[dict[str, Any]] = []
    for key in keys:
        kwargs: dict[str, Any] = {
            "IndexName": OWNER_INDEX,
            "KeyConditionExpression": Key("owner_key").eq(key),
            "ScanIndexForward": False,
            "Limit": limit + 1,
        }
        if cursor and len(keys) == 1:
            kwargs["ExclusiveStartKey"] = {"id": cursor.id, "owner_key": key}
        elif cursor:  # the cursor's own key is one of them: the others continue below its id
            kwargs["KeyConditionExpression"] &= Key("id").lt(cursor.id)
        items += [i for i in table.task_table().query(**kwargs)["Items"] if i.get("owner") == owner]
    if len(keys) > 1:  # each key's page is newest first: the newest limit + 1 of them all
        items = heapq.nlargest(limit + 1, items, key=lambda i: str(i["id"]))
    return [Task.from_item(i) for i in items[:limit]], len(items) > limit


def due(*, now: int | None = None, limit: int | None = None) -> list[str]:
    """Ids of live tasks whose `next_check_at` has passed, in every partition they may sit in (the sweep's
    work; the sweep itself reads it shard by shard)."""
    ids: list[str] = []
    for partition in shards.every(shards.LIVE):
        ids += table.due(partition, now=now)
    return ids if limit is None else ids[:limit]
