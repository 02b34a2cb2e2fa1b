"""A batch job's record in the task table: what has been read, how many of its tasks ended, and its leases.

One item per batch object, id `batch#<hash of bucket, key, ETag>` (an overwritten object is a new batch), with
no `owner` (listings never see it). `offset` and `lines` say how far the object has been read (only ever
forward); `done` and `total` are set once it is read to its end; `terminal` counts the batch's tasks that
ended, by an atomic ADD from each task's end (`task_ended`). `read_lease` lets one run read at a time and
`results_lease` one run write the results; `results_written` ends the batch (`abandoned` too, with why).

Until its results are written the record sits in the sweep index (partition `batch`), checked every
BATCH_CHECK_S: the sweep asks `recheck_due`, which sends those batches a "Batch Continue" with `check: true`
(a reader that died, a hand-over that was lost, a count that fell behind; see `batches`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from .. import bus, clock, settings, table, tasks
from ..tasks import Task

logger = Logger(child=True)

BATCH_CONTINUE = "Batch Continue"
SWEEP_PARTITION = "batch"  # unfinished batches in the sweep index
INPUT_PREFIX = "batches/"
RESULTS_PREFIX = "results/"
READ_LEASE_MS = 900_000  # longer than the submit function's timeout: a live reader always holds it
RESULTS_LEASE_MS = 600_000


def check_after_ms() -> int:
    """How long an unfinished batch waits before the sweep looks at it."""
    return settings.current().batch_check_s * 1000


def record_id(bucket: str, key: str, etag: str) -> str:
    return "batch#" + hashlib.sha256(f"{bucket}/{key}#{etag}".encode()).hexdigest()[:24]


def results_key(key: str) -> str:
    return RESULTS_PREFIX + key[len(INPUT_PREFIX):] if key.startswith(INPUT_PREFIX) else RESULTS_PREFIX + key


@dataclass
class BatchRecord:
    id: str
    bucket: str
    key: str
    etag: str
    results_key: str
    base_ns: int  # when the batch started: its tasks' ids begin with it
    created_at: int
    offset: int = 0  # bytes of the object read (and turned into tasks) so far
    lines: int = 0  # lines read so far (blank lines are not lines)
    terminal: int = 0  # tasks of the batch that ended
    done: bool = False  # read to its end
    total: int | None = None  # its number of lines, once done
    results_written: int | None = None  # when its results were written
    abandoned: str | None = None  # why it cannot go on (its object replaced or deleted before it was read)
    read_lease: int | None = None
    results_lease: int | None = None
    next_check_at: int | None = None
    sweep: str | None = None
    expires_at: int | None = None
    kind: str = "batch"

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> BatchRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in table.plain(item).items() if k in known})

    def to_item(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def task_id(self, line: int) -> str:
        """Time-ordered like every task id (the batch's start, then the line number), the same on every re-read:
        re-reading a line (a redelivered S3 event, a crashed run) creates nothing twice."""
        return tasks.task_id(self.base_ns // 1_000_000, f"{line:08d}{self.id[6:14]}")

    @property
    def complete(self) -> bool:
        """Read to its end and every task ended, the results not yet written."""
        return self.done and self.terminal >= (self.total if self.total is not None else -1) \
            and not self.results_written

    @property
    def over(self) -> bool:
        """Nothing more to do: its results are written, or it was abandoned."""
        return bool(self.results_written or self.abandoned)


def _record(item: dict[str, Any] | None) -> BatchRecord | None:
    return None if item is None else BatchRecord.from_item(item)


# -- reading -----------------------------------------------------------------------------------------------

def start(bucket: str, key: str, etag: str) -> BatchRecord:
    """The batch of this object: a new record, or (a redelivered event) the one saved, to resume from."""
    now = clock.now_ms()
    batch = BatchRecord(id=record_id(bucket, key, etag), bucket=bucket, key=key, etag=etag,
                        results_key=results_key(key), base_ns=now * 1_000_000, created_at=now,
                        expires_at=table.retention_expiry(), sweep=SWEEP_PARTITION,
                        next_check_at=now + check_after_ms())
    if table.put_if_absent(batch.to_item()):
        logger.info("batch started", extra={"batch_id": batch.id, "key": key})
        return batch
    return get(batch.id) or batch


def get(batch_id: str) -> BatchRecord | None:
    if not batch_id.startswith("batch#"):
        return None
    return _record(table.get(batch_id))


def claim_reading(batch_id: str) -> BatchRecord | None:
    """Take the reading lease (one reader at a time); the record as it is now, or None if it is held."""
    now = clock.now_ms()
    return _record(table.update_if(
        batch_id, UpdateExpression="SET read_lease = :until, next_check_at = :until",
        ConditionExpression="done = :no AND (attribute_not_exists(read_lease) OR read_lease < :now)",
        ExpressionAttributeValues={":no": False, ":now": now, ":until": now + READ_LEASE_MS}, ReturnValues="ALL_NEW"))


def release_reading(batch_id: str) -> None:
    """Give the reading lease back (a run that failed: a retry, or the sweep, can read on at once)."""
    try:
        table.update(batch_id, UpdateExpression="REMOVE read_lease")
    except ClientError:
        logger.exception("could not release the reading lease; it runs out by itself")


def checkpoint(batch_id: str, offset: int, lines: int, *, hand_over: bool = False) -> None:
    """Save progress, only ever forward; on hand-over also give the reading lease back."""
    expr, values = "SET #o = :o, #l = :l", {":o": offset, ":l": lines}
    if hand_over:
        expr = "SET #o = :o, #l = :l, next_check_at = :next REMOVE read_lease"
        values[":next"] = clock.now_ms() + check_after_ms()
    table.update_if(batch_id, UpdateExpression=expr, ConditionExpression="#o <= :o",
                    ExpressionAttributeNames={"#o": "offset", "#l": "lines"}, ExpressionAttributeValues=values)


def finish_reading(batch_id: str, offset: int, lines: int) -> BatchRecord:
    """The whole object is read: `lines` is its total."""
    return BatchRecord.from_item(table.update(
        batch_id,
        UpdateExpression="SET #o = :o, #l = :l, #t = :l, done = :yes, next_check_at = :next REMOVE read_lease",
        ExpressionAttributeNames={"#o": "offset", "#l": "lines", "#t": "total"},
        ExpressionAttributeValues={":o": offset, ":l": lines, ":yes": True,
                                   ":next": clock.now_ms() + check_after_ms()},
        ReturnValues="ALL_NEW"))


def abandon(batch_id: str, reason: str) -> None:
    """A batch that cannot go on leaves the sweep index, with the reason on its record."""
    table.update(batch_id, UpdateExpression="SET abandoned = :why REMOVE sweep, next_check_at, read_lease",
                 ExpressionAttributeValues={":why": reason})


# -- counting and results ------------------------------------------------------------------------------------

def task_ended(task: Task) -> None:
    """A task ended (see `lifecycle`): count it on its batch; after the batch's last, have its results written
    (by the submit function, which may write the bucket). Nothing for a task that is not a batch's."""
    if not task.batch:
        return
    counted = table.update_if(task.batch, UpdateExpression="ADD terminal :one",
                              ConditionExpression="attribute_exists(id)", ExpressionAttributeValues={":one": 1},
                              ReturnValues="ALL_NEW")
    if counted is None:
        logger.warning("the task's batch record is gone; not counted", extra={"task_id": task.id,
                                                                              "batch_id": task.batch})
        return
    if BatchRecord.from_item(counted).complete:
        publish_continue(task.batch)


def count_at_least(batch_id: str, finished: int) -> BatchRecord | None:
    """Raise the count to `finished` (tasks counted from the tasks themselves); None if it was already there."""
    return _record(table.update_if(batch_id, UpdateExpression="SET terminal = :n", ConditionExpression="terminal < :n",
                                   ExpressionAttributeValues={":n": finished}, ReturnValues="ALL_NEW"))


def claim_results(batch_id: str) -> bool:
    """Take the lease on writing the results of a complete batch: one writer wins."""
    now = clock.now_ms()
    return table.update_if(
        batch_id, UpdateExpression="SET results_lease = :until",
        ConditionExpression="done = :yes AND terminal >= #t AND attribute_not_exists(results_written) AND "
                            "(attribute_not_exists(results_lease) OR results_lease < :now)",
        ExpressionAttributeNames={"#t": "total"},
        ExpressionAttributeValues={":yes": True, ":now": now, ":until": now + RESULTS_LEASE_MS}) is not None


def mark_results_written(batch_id: str) -> None:
    """The batch is over: it leaves the sweep index."""
    table.update(batch_id, UpdateExpression="SET results_written = :now REMOVE sweep, next_check_at",
                 ExpressionAttributeValues={":now": clock.now_ms()})


def publish_continue(batch_id: str, *, check: bool = False) -> None:
    """Ask the submit function to carry the batch on: read on, or write its results. `check` (from the sweep):
    recount it first, and take over a reader whose lease ran out."""
    bus.publish_detail(BATCH_CONTINUE, {"batch_id": batch_id, **({"check": True} if check else {})})


# -- the sweep -----------------------------------------------------------------------------------------------

def recheck_due(*, limit: int | None = None) -> int:
    """The sweep's question: send every unfinished batch whose check came due a "Batch Continue" with `check`,
    its next check pushed back first (so two sweeps do not both send it); how many were sent."""
    sent = 0
    for batch_id in table.due(SWEEP_PARTITION, limit=limit):
        now = clock.now_ms()
        pushed = table.update_if(batch_id, UpdateExpression="SET next_check_at = :next",
                                 ConditionExpression="next_check_at <= :now",
                                 ExpressionAttributeValues={":now": now, ":next": now + check_after_ms()})
        if pushed is not None:
            publish_continue(batch_id, check=True)
            sent += 1
    return sent
