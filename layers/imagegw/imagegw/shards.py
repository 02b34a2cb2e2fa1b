"""Where items sit in the task table's index partitions: the one place that names a partition key value.

The sparse sweep index (`sweep`, `next_check_at`) is read by the schedule, and every state change of a live
task writes to it. Under one partition value that is one GSI partition, about 1,000 writes a second, and a
throttled GSI throttles the table. So live tasks and pending webhooks are spread over SWEEP_SHARDS partitions
by a stable hash of the task id:

    SWEEP_SHARDS = 1    `inflight`, `webhook`                (the layout before shards: nothing moves)
    SWEEP_SHARDS = N    `inflight#0` .. `inflight#<N-1>`, `webhook#0` .. `webhook#<N-1>`

Changing N strands nothing. Every transition of a live task (claim, advance, release, touch) writes its
partition again under the N in force, so a task moves to its new shard on its next step; and until every
task has moved, the sweep also reads the partitions N does not use (`retired`), each with one cheap query for
due items first. Which those are is recorded rather than guessed: the first write under a shard count in each
process (and again every REGISTER_EVERY_S) stamps that count in one item, `meta#sweep-shards`
(`{"n1": <ms>, "n4": <ms>}`), so a sweep reads that item and the partitions of the counts it names, not every
partition any count up to MAX_SHARDS could have used. The item names `n1` from its first write (tables from
before shards keep their tasks under the bare names). A count no process has stamped for STALE_AFTER_S and
whose partitions hold nothing is struck off (set to 0, by a conditional write: a stamp meanwhile keeps it).
SWEEP_SHARDS is at most MAX_SHARDS.

Batch records keep their one partition `batch`: one record per batch file, written a few times per run of
BATCH_LINES_PER_RUN lines, far from any partition's limit.

The owner index has the same trouble for one owner: every task that arrives over the bus or as a batch file
belongs to the event tenant. Its tasks are spread over OWNER_SHARDS owner keys (`<tenant>#<k>`), every
other owner keeps one owner key (the owner itself), so an API key lists its tasks with one query as before.
"""

from __future__ import annotations

import hashlib

from . import clock, settings, table

LIVE = "inflight"  # live tasks
WEBHOOK = "webhook"  # terminal tasks whose webhook is still to be delivered
KINDS = (LIVE, WEBHOOK)
LINE = "line"  # a provider's line of waiting tasks (`pacing`): in the sweep index, but never swept
MAX_SHARDS = 64  # the template's SweepShards MaxValue: no item ever sits in a higher shard
OWNER_SHARDS = 16  # owner keys of the event tenant (a constant: changing it would strand listings)
LAYOUT_ID = "meta#sweep-shards"  # the shard counts items were written under (no index attribute: never listed)
REGISTER_EVERY_S = 300  # a process stamps its shard count again this often
STALE_AFTER_S = 4 * REGISTER_EVERY_S  # no process stamped a count for this long: none writes under it any more
_stamped: dict[tuple[str | None, int], int] = {}  # (table, count) -> when this process last stamped it (ms)


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
    """The sweep partition a task of `kind` (LIVE or WEBHOOK) is written to, under the shard count in force
    (stamped in the layout item first, when this process has not done so lately)."""
    count = shard_count()
    _stamp(count)
    return _name(kind, None if count == 1 else shard_of(task_id, count))


def _stamp(count: int) -> None:
    now = clock.now_ms()
    key = (settings.current().task_table, count)
    last = _stamped.get(key)
    if last is not None and 0 <= now - last < REGISTER_EVERY_S * 1000:
        return
    expression = "SET #n = :now" if count == 1 else "SET #n = :now, n1 = if_not_exists(n1, :now)"
    table.update(LAYOUT_ID, UpdateExpression=expression, ExpressionAttributeNames={"#n": f"n{count}"},
                 ExpressionAttributeValues={":now": now})
    _stamped[key] = now


def forget() -> None:
    """Forget this process's stamps (tests start each with an empty table)."""
    _stamped.clear()


def _names_of(count: int) -> list[int | None]:
    return [None] if count == 1 else list(range(count))


def layout() -> dict[int, int]:
    """The shard counts items may still sit under: count -> when a process last stamped it (ms); one read."""
    item = table.get(LAYOUT_ID) or {}
    return {int(name[1:]): int(stamp) for name, stamp in item.items()
            if name[:1] == "n" and name[1:].isdigit() and 1 <= int(name[1:]) <= MAX_SHARDS and stamp}


def current(kind: str, shard: int | None = None) -> list[str]:
    """The partitions of `kind` that items are written to now (all of them, or shard `shard`'s)."""
    count = shard_count()
    if count == 1:
        return [kind]
    return [_name(kind, k) for k in (range(count) if shard is None else [shard])]


def every(kind: str) -> list[str]:
    """Every partition of `kind` an item may sit in, whatever shard counts were used before."""
    return [kind] + [_name(kind, k) for k in range(MAX_SHARDS)]


def retired(kind: str, counts: dict[int, int] | None = None) -> list[str]:
    """The partitions of `kind` that nothing is written to now, but where items written under an earlier shard
    count (one of `counts`, by default those the layout item names) may still wait."""
    now = set(current(kind))
    found: list[str] = []
    for count in sorted(layout() if counts is None else counts):
        found += [p for p in (_name(kind, k) for k in _names_of(count)) if p not in now and p not in found]
    return found


def groups() -> list[list[str]]:
    """What one scheduled run sweeps, a group per "Sweep Shard" event: each shard in force (its live tasks and
    its webhooks), then each retired partition where something is due (one query each, reading one entry).
    Retired counts that nothing uses any more are struck off the layout on the way."""
    count = shard_count()
    found = [[_name(kind, None if count == 1 else k) for kind in KINDS] for k in range(count)]
    counts = layout()
    _strike_off_unused(counts, count)
    return found + [[p] for kind in KINDS for p in retired(kind, counts) if table.has_due(p)]


def _strike_off_unused(counts: dict[int, int], in_force: int) -> None:
    """Strike off the layout each count other than `in_force` that no process stamped for STALE_AFTER_S and
    whose retired partitions hold nothing (due or not); the condition keeps a count stamped meanwhile."""
    now = clock.now_ms()
    in_use = set(current(LIVE)) | set(current(WEBHOOK))
    for count, stamp in list(counts.items()):
        if count == in_force or now - stamp < STALE_AFTER_S * 1000:
            continue
        partitions = [p for kind in KINDS for p in (_name(kind, k) for k in _names_of(count)) if p not in in_use]
        if any(table.holds_any(p) for p in partitions):
            continue
        if table.update_if(LAYOUT_ID, UpdateExpression="SET #n = :zero", ConditionExpression="#n = :stamp",
                           ExpressionAttributeNames={"#n": f"n{count}"},
                           ExpressionAttributeValues={":stamp": stamp, ":zero": 0}) is not None:
            del counts[count]


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
