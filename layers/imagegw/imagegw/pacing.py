"""Pacing: no provider gets more than its limits, across every function instance, and a task waits its turn.

A provider's `max_concurrency` (requests in flight) and `requests_per_minute` (provider configuration; on a route
entry too, for a model's own limit) hold for the provider's account, so they are kept in the task table, where
every instance sees them, under their own ids (never in the sweep index nor the owner index, so the sweep and the
task listings never read them; a line's items sit in the sweep index, but under a partition of their own that
the sweep never reads, see `shards.line`):

    limit#<key>#slot#<k>      a leased slot, k < max_concurrency: {holder, lease_until, expires_at}
    limit#<key>#rpm#<minute>  a fixed one-minute window: {n, expires_at}
    limit#<provider>#wait#<task id>  a task waiting in the provider's line: {sweep: "line#<provider>",
                              next_check_at: when the task first had to wait, expires_at}

`<key>` is the provider's name, or `<provider>@<upstream model>` for a route's own limit. A slot is taken with
a conditional write (`attribute_not_exists(holder) OR lease_until < :now`) and given back by a conditional
write on its holder after the upstream call; a crashed worker's slot comes back when its lease passes (the
route's `timeout_s` plus LEASE_MARGIN_S). A minute's count goes up by a conditional ADD while it is under the
limit. A task needs every limit of its route (the provider's, then the route's); what it took is given back
when one is refused.

A task refused a slot (or answered 429 by the provider) waits `queued` in its provider's line: a worker that
gives a slot back hands it to the oldest task in that line, rather than freeing it for whoever asks first: it
takes the task out of the line, writes the task as the slot's holder (`task#<id>`, a fresh lease), and
publishes the task's "Task Queued" with `woken_by` (the provider) and `slot`. The woken task's worker calls
upstream on that slot without asking for one (no read, no write), or, should the task no longer need it (ended,
or taken by another worker), hands it on to the next in line (`pass_on`). A permit holding more than the
provider's one slot (a route's own limit too) is given back and the oldest waiter only woken. Joining and
waking cost the same however long the line is: a join is one put, a wake one query reading the oldest few index
keys, one conditional delete and the hand-over's one conditional write. A task refused a slot is then left to the
hand-overs: its next check is PACING_MAX_WAIT_S away (never past its deadline), so the sweep re-sends it only
when hand-overs were lost (a wake whose event never came, a worker that died holding a slot). A task refused a
minute's count or answered 429 waits its jittered, bounded backoff (or Retry-After), in the line meanwhile.
`worker` decides when to ask (`acquire`, `release`) and what a task does meanwhile; this module only counts.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from aws_lambda_powertools import Logger

from . import bus, clock, settings, shards, table, tasks
from .errors import RateLimited
from .observability import count
from .provider_config import GatewayConfig
from .routing import WILDCARD, Route

logger = Logger(child=True)

LEASE_MARGIN_S = 30  # a slot's lease: the route's timeout_s plus this (the call ends by then, or its worker died)
MINUTE_MS = 60_000
BACKOFF_MS = 1000  # a task refused capacity is tried again after about this, doubling, up to PACING_MAX_WAIT_S
HAND_RESEND_S = 30  # a slot handed this long ago to a task still queued: its "Task Queued" was lost
PASS_ON_LEASE_MS = 150_000  # a slot passed on by a task that did not use it: leased to the next this long
WAKE_TRIES = 3  # a release tries to wake this many of the oldest waiters before giving up (they left meanwhile)
_NAMES = {"#h": "holder", "#l": "lease_until", "#e": "expires_at", "#n": "n", "#a": "handed_at"}


def _names(*aliases: str) -> dict[str, str]:
    """The ExpressionAttributeNames an expression uses (DynamoDB refuses unused ones)."""
    return {alias: _NAMES[alias] for alias in aliases}


CAPACITY = "capacity"  # the gateway's own limit is reached
RATE_LIMIT = "rate_limit"  # the provider answered 429 (or a dialect's rate-limited error)


@dataclass(frozen=True)
class Limit:
    key: str
    max_concurrency: int | None
    requests_per_minute: int | None


@dataclass(frozen=True)
class Busy:
    """No capacity for the task now: which provider, why (CAPACITY or RATE_LIMIT), and when to try again (ms)."""

    provider: str
    reason: str
    retry_at: int
    no_slot: bool = False  # refused a slot (not a minute's count, not a 429): one freed meanwhile is handed over


@dataclass
class Permit:
    """What a task took to make one upstream call: the slots to give back, the lines to wake."""

    holder: str
    slots: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    lease_ms: int = 0  # how long a slot handed on from this permit is leased to its new holder


@dataclass(frozen=True)
class Wake:
    """A task woken in `provider`'s line, with the `slot` handed to it (None: only woken, it asks for one)."""

    provider: str
    slot: str | None = None


def holder_of(task_id: str) -> str:
    """Who holds a slot for the task `task_id`: the same for every worker of the task, so a slot handed to it,
    or held by a worker of it that died, is its own again when it asks (at most one worker runs a task)."""
    return f"task#{task_id}"


def wake_of(provider: object, slot: object) -> Wake | None:
    """The wake a "Task Queued" event's detail names (`woken_by`, `slot`), checked; None when it names none. A
    slot that is not one of the provider's is ignored (the task then asks for one)."""
    if not isinstance(provider, str) or not provider:
        return None
    if isinstance(slot, str) and slot.startswith(f"limit#{provider}#slot#"):
        return Wake(provider, slot)
    return Wake(provider)


def limits(route: Route) -> list[Limit]:
    """The limits a call on `route` needs, the provider's first; empty when it has none."""
    found = []
    if route.config.max_concurrency or route.config.requests_per_minute:
        found.append(Limit(route.provider, route.config.max_concurrency, route.config.requests_per_minute))
    if route.max_concurrency or route.requests_per_minute:
        found.append(Limit(f"{route.provider}@{route.upstream_model}", route.max_concurrency,
                           route.requests_per_minute))
    return found


def acquire(route: Route, holder: str | None = None, *, waits: int = 0, handed: str | None = None) -> Permit | Busy:
    """Every limit of `route` for one upstream call, or Busy (nothing kept) when one of them is reached. `handed`:
    a slot already leased to `holder` by a hand-over, used for its limit without asking again."""
    lease_ms = int((route.config.timeout_s + LEASE_MARGIN_S) * 1000)
    permit = Permit(holder or uuid.uuid4().hex, providers=[route.provider], lease_ms=lease_ms)
    for limit in limits(route):
        if limit.max_concurrency:
            mine = handed is not None and handed.startswith(f"limit#{limit.key}#slot#")
            slot = handed if mine else _take_slot(limit, permit.holder, lease_ms)
            if slot is None:
                release(permit, wake=False)
                return Busy(route.provider, CAPACITY, clock.now_ms() + backoff_ms(waits), no_slot=True)
            permit.slots.append(slot)
        if limit.requests_per_minute and not _count_request(limit):
            release(permit, wake=False)
            next_minute = (clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS
            return Busy(route.provider, CAPACITY, next_minute + random.randint(0, BACKOFF_MS))
    return permit


def release(permit: Permit, *, wake: bool = True) -> None:
    """Give the permit's slots back (only while still their holder) and wake the oldest waiting task; a permit of
    the provider's one slot hands it to that task instead."""
    slots, permit.slots = permit.slots, []
    if wake and len(slots) == 1 and len(permit.providers) == 1 \
            and slots[0].startswith(f"limit#{permit.providers[0]}#slot#"):
        if wake_oldest(permit.providers[0], slot=slots[0], holder=permit.holder, lease_ms=permit.lease_ms):
            return
    for slot in slots:
        _free(slot, permit.holder)
    if wake and slots:
        for provider in permit.providers:
            wake_oldest(provider)  # nobody was in line, or a permit of several slots: a task that joined meanwhile


def pass_on(wake: Wake, task_id: str, lease_ms: int = PASS_ON_LEASE_MS) -> None:
    """A woken task that will not use its wake (it ended, or another worker has it): the slot it was handed goes
    to the next task in line (freed when there is none), or the next task is woken."""
    if wake.slot is None:
        wake_oldest(wake.provider)
    elif not wake_oldest(wake.provider, slot=wake.slot, holder=holder_of(task_id), lease_ms=lease_ms):
        _free(wake.slot, holder_of(task_id))
        wake_oldest(wake.provider)


def _free(slot: str, holder: str) -> None:
    table.update_if(slot, UpdateExpression="REMOVE #h, #l, #a", ConditionExpression="#h = :h",
                    ExpressionAttributeNames=_names("#h", "#l", "#a"), ExpressionAttributeValues={":h": holder})


def rate_limited(route: Route, error: RateLimited, *, waits: int = 0) -> Busy:
    """The provider answered 429 after the transport's retries: wait its Retry-After, or a backoff."""
    after_ms = backoff_ms(waits)
    if error.retry_after_s is not None:
        after_ms = max(after_ms, int(error.retry_after_s * 1000) + random.randint(0, BACKOFF_MS // 4))
    return Busy(route.provider, RATE_LIMIT, clock.now_ms() + after_ms)


def backoff_ms(waits: int) -> int:
    """A jittered exponential backoff (half to all of 1 s doubling per wait), at most PACING_MAX_WAIT_S."""
    ceiling = min(BACKOFF_MS * 2 ** min(waits, 16), settings.current().pacing_max_wait_s * 1000)
    return int(random.uniform(ceiling / 2, ceiling))


def _slot_id(key: str, k: int) -> str:
    return f"limit#{key}#slot#{k}"


def _take_slot(limit: Limit, holder: str, lease_ms: int) -> str | None:
    """One free (or abandoned) slot of `limit`, leased to `holder`; None when every slot is held."""
    assert limit.max_concurrency
    now = clock.now_ms()
    ids = [_slot_id(limit.key, k) for k in range(limit.max_concurrency)]
    held = table.get_many(ids, attributes=["holder", "lease_until"])
    own = [i for i in ids if held.get(i, {}).get("holder") == holder]  # handed to it, its event lost
    free = [i for i in ids if "holder" not in held.get(i, {}) or held[i].get("lease_until", 0) < now]
    random.shuffle(free)  # concurrent takers rarely race for the same slot
    for slot in own[:1] + free:
        taken = table.update_if(
            slot, UpdateExpression="SET #h = :h, #l = :until, #e = :exp REMOVE #a",
            ConditionExpression="attribute_not_exists(#h) OR #l < :now OR #h = :h",
            ExpressionAttributeNames=_names("#h", "#l", "#e", "#a"),
            ExpressionAttributeValues={":h": holder, ":until": now + lease_ms, ":now": now,
                                       ":exp": (now + lease_ms) // 1000 + 86400},
            ReturnValues="UPDATED_NEW")
        if taken is not None:
            return slot
    return None


def _count_request(limit: Limit) -> bool:
    """Count one request in this minute's window of `limit`; False (not counted) when the window is full."""
    minute = clock.now_ms() // MINUTE_MS
    counted = table.update_if(
        f"limit#{limit.key}#rpm#{minute}", UpdateExpression="ADD #n :one SET #e = :exp",
        ConditionExpression="attribute_not_exists(#n) OR #n < :limit", ExpressionAttributeNames=_names("#n", "#e"),
        ExpressionAttributeValues={":one": 1, ":limit": limit.requests_per_minute,
                                   ":exp": (minute + 2) * MINUTE_MS // 1000 + 3600},
        ReturnValues="UPDATED_NEW")
    return counted is not None


# -- the line of waiting tasks ----------------------------------------------------------------------------------

def _wait_id(provider: str, task_id: str) -> str:
    return f"limit#{provider}#wait#{task_id}"


def place(provider: str, since: int) -> int | None:
    """The place (1 = next) a task waiting since `since` (ms) takes in the provider's line: one query counting
    the index keys of the waiters ahead of it, at most PACING_LINE_MAX of them (None when there are more)."""
    most = settings.current().pacing_line_max
    ahead = table.count_in_index(shards.line(provider), before=since, limit=most)
    return ahead + 1 if ahead < most else None


def join_line(provider: str, task_id: str, since: int) -> None:
    """Put the task in the provider's line: one item of its own, in the sweep index under the line's partition
    (`line#<provider>`, never swept) sorted by `since` (when the task first had to wait), so a task that is
    refused again keeps its place. Joining again is the same write."""
    table.task_table().put_item(Item={
        "id": _wait_id(provider, task_id), "sweep": shards.line(provider), "next_check_at": since,
        "expires_at": clock.now_ms() // 1000 + settings.current().task_deadline_s + 86400})


def leave_line(provider: str, task_id: str) -> None:
    table.delete(_wait_id(provider, task_id))


def in_line(providers: list[str], task_id: str) -> bool:
    """Whether the task waits in one of these providers' lines (one read): not when it was woken meanwhile."""
    return bool(table.get_many([_wait_id(p, task_id) for p in dict.fromkeys(providers)], attributes=["id"]))


def wake_oldest(provider: str, *, slot: str | None = None, holder: str = "", lease_ms: int = 0) -> str | None:
    """Take the oldest task out of the provider's line (one query reading WAKE_TRIES index keys, then a
    conditional delete: one worker wins each waiter) and publish its "Task Queued", marked `woken_by` the
    provider (its worker then knows its line item is gone, and passes the wake on should the task have ended
    meanwhile). With `slot` (leased to `holder`): the slot is handed to that task, one conditional write making
    it the holder with a fresh lease of `lease_ms`, and named in the event. The id woken, or None when the line
    is empty (or every waiter read was taken by other workers meanwhile)."""
    prefix = f"limit#{provider}#wait#"
    for item_id in table.oldest_in_index(shards.line(provider), limit=WAKE_TRIES):
        if table.delete_if_exists(item_id):
            oldest = item_id[len(prefix):]
            count("PacingWakes")
            if slot is not None and _hand(slot, holder, holder_of(oldest), lease_ms):
                bus.publish(bus.TASK_QUEUED, oldest, woken_by=provider, slot=slot)
            else:  # nothing to hand, or the slot's lease passed and someone else took it: only woken
                # out of the line and holding no slot, the task is found by its next check should the event be lost
                tasks.nudge(oldest, next_check_at=clock.now_ms() + int(settings.current().pacing_max_wait_s * 1000))
                bus.publish(bus.TASK_QUEUED, oldest, woken_by=provider)
            return oldest
    return None


def _hand(slot: str, holder: str, to: str, lease_ms: int) -> bool:
    now = clock.now_ms()
    return table.update_if(
        slot, UpdateExpression="SET #h = :to, #l = :until, #e = :exp, #a = :now", ConditionExpression="#h = :h",
        ExpressionAttributeNames=_names("#h", "#l", "#e", "#a"),
        ExpressionAttributeValues={":h": holder, ":to": to, ":until": now + lease_ms, ":now": now,
                                   ":exp": (now + lease_ms) // 1000 + 86400}) is not None


def line_limits(config: GatewayConfig) -> list[tuple[str, Limit]]:
    """(provider, limit) for every concurrency limit the configuration sets: a provider's own, and a route's own
    (for a named model; a `*` route's model is each request's), whose slots that provider's line is handed."""
    found = [(name, Limit(name, p.max_concurrency, p.requests_per_minute))
             for name, p in config.providers.items() if p.max_concurrency]
    for public, entries in config.models.items():
        for entry in entries:
            model = entry.model or (None if public == WILDCARD else public)
            if entry.max_concurrency and model:
                found.append((entry.provider, Limit(f"{entry.provider}@{model}", entry.max_concurrency,
                                                    entry.requests_per_minute)))
    return found


@dataclass(frozen=True)
class SlotState:
    """What the sweep sees of a limit's slots: how many are free, and the slots handed to tasks HAND_RESEND_S
    ago or more (task id, slot id, whether the lease still runs)."""

    free: int
    handed: list[tuple[str, str, bool]]


def slot_state(limit: Limit) -> SlotState:
    """The slots of `limit` as they are now (one read)."""
    assert limit.max_concurrency
    now = clock.now_ms()
    ids = [_slot_id(limit.key, k) for k in range(limit.max_concurrency)]
    held = table.get_many(ids, attributes=["holder", "lease_until", "handed_at"])
    free = sum(1 for i in ids if "holder" not in held.get(i, {}) or held[i].get("lease_until", 0) < now)
    handed = [(str(item["holder"])[len("task#"):], slot, item.get("lease_until", 0) >= now)
              for slot, item in held.items()
              if str(item.get("holder", "")).startswith("task#") and "handed_at" in item
              and now - item["handed_at"] >= HAND_RESEND_S * 1000]
    return SlotState(free, handed)


def has_free_slot(route: Route) -> bool:
    """Whether every concurrency limit of `route` has a slot free now (a read; nothing is taken)."""
    now = clock.now_ms()
    for limit in limits(route):
        if limit.max_concurrency:
            ids = [_slot_id(limit.key, k) for k in range(limit.max_concurrency)]
            held = table.get_many(ids, attributes=["holder", "lease_until"])
            if all("holder" in held.get(i, {}) and held[i].get("lease_until", 0) >= now for i in ids):
                return False
    return True
