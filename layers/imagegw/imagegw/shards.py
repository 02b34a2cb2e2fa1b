"""Where items sit in the task table's index partitions: the one place that names a partition key value.

The sparse sweep index (`sweep`, `next_check_at`) is read by the schedule, and every state change of a live
task writes to it. Under one partition value that is one GSI partition, about 1,000 writes a second, and a
throttled GSI throttles the table. So live tasks and pending webhooks are spread over SWEEP_SHARDS partitions
by a stable hash of the task id:

    SWEEP_SHARDS = 1    `inflight`, `webhook`                (the layout before shards: nothing moves)
    SWEEP_SHARDS = N    `inflight#0` .. `inflight#<N-1>`, `webhook#0` .. `webhook#<N-1>`

Changing N strands nothing. Every transition of a live task (claim, advance, release, touch) writes its
partition again under the N in force, so a task moves to its new shard on its next step; and until every
task has moved, the sweep also reads the partitions N does not use (`retired`: the bare name and shards N up
to MAX_SHARDS), each with one cheap query for due items first. SWEEP_SHARDS is at most MAX_SHARDS.

Batch records keep their one partition `batch`: one record per batch file, written a few times per run of
BATCH_LINES_PER_RUN lines, far from any partition's limit.

The owner index has the same trouble for one owner: every task that arrives over the bus or as a batch file
belongs to the event tenant. Its tasks are spread over OWNER_SHARDS owner keys (`<tenant>#<k>`), every
other owner keeps one owner key (the owner itself), so an API key lists its tasks with one query as before.
"""

from __future__ import annotations

import hashlib

from . import settings, table

LIVE = "inflight"  # live tasks
WEBHOOK = "webhook"  # terminal tasks whose webhook is still to be delivered
KINDS = (LIVE, WEBHOOK)
LINE = "line"  # a provider's line of waiting tasks (`pacing`): in the sweep index, but never swept
MAX_SHARDS = 64  # the template's SweepShards MaxValue: no item ever sits in a higher shard
OWNER_SHARDS = 16  # owner keys of the event tenant (a constant: changing it would strand listings)


def shard_of(key: str, count: int) -> int:
    """A stable shard in [0, count) for `key` (the same in every process and every Python version)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_count() -> int:
    """SWEEP_SHARDS, checked: 1 to MAX_SHARDS."""
    count = settings.current().sweep_shards
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"SWEEP_SHARDS={count} is not between 1 and {MAX_SHARDS}.")
    return count


def _name(kind: str, shard: int | None) -> str:
    return kind if shard is None else f"{kind}#{shard}"


def partition(kind: str, task_id: str) -> str:
    """The sweep partition of a task of `kind` (LIVE or WEBHOOK) under the shard count in force."""
    count = shard_count()
    return _name(kind, None if count == 1 else shard_of(task_id, count))


def current(kind: str, shard: int | None = None) -> list[str]:
    """The partitions of `kind` that items are written to now (all of them, or shard `shard`'s)."""
    count = shard_count()
    if count == 1:
        return [kind]
    return [_name(kind, k) for k in (range(count) if shard is None else [shard])]


def every(kind: str) -> list[str]:
    """Every partition of `kind` an item may sit in, whatever shard counts were used before."""
    return [kind] + [_name(kind, k) for k in range(MAX_SHARDS)]


def retired(kind: str) -> list[str]:
    """The partitions of `kind` that nothing is written to now, but where items written under an earlier
    shard count may still wait."""
    now = set(current(kind))
    return [p for p in every(kind) if p not in now]


def groups() -> list[list[str]]:
    """What one scheduled run sweeps, a group per "Sweep Shard" event: each shard in force (its live tasks and
    its webhooks), then each retired partition where something is due (one query each, reading one entry)."""
    count = shard_count()
    found = [[_name(kind, None if count == 1 else k) for kind in KINDS] for k in range(count)]
    return found + [[p] for kind in KINDS for p in retired(kind) if table.has_due(p)]


def is_partition(value: str) -> bool:
    """Whether `value` names a sweep partition (what a "Sweep Shard" event may ask for)."""
    return any(value in every(kind) for kind in KINDS)


def kind_of(value: str) -> str:
    return value.split("#", 1)[0]


def line(provider: str) -> str:
    """The sweep-index partition of the tasks waiting in `provider`'s line (`pacing`), sorted by when they began
    to wait. Not a sweep partition: `every`, `groups` and `is_partition` never name it, so no sweep reads it."""
    return f"{LINE}#{provider}"


def owner_key(owner: str, task_id: str) -> str:
    """The owner-index key of a task: the owner, or for the event tenant one of its OWNER_SHARDS keys."""
    if owner != settings.current().event_tenant:
        return owner
    return f"{owner}#{shard_of(task_id, OWNER_SHARDS)}"


def owner_keys(owner: str) -> list[str]:
    """Every owner-index key holding `owner`'s tasks (one, except for the event tenant)."""
    if owner != settings.current().event_tenant:
        return [owner]
    return [f"{owner}#{k}" for k in range(OWNER_SHARDS)]
