"""Advancing tasks: the one code path behind the events, the schedule sweep and poll-through reads.

    submit_queued(id)    "Task Queued"     route -> dialect.submit -> Done | Pending | Failed
    run_claimed(task)    sync request      the same, in the request's own invocation (the fast path)
    check_waiting(id)    sweep / GET       dialect.check for async upstreams
    store_generated(id)  "Task Generated"  download the upstream URLs into S3
    sweep()              schedule          whatever is due: re-publish lost events, check, give up

Each step claims its stage first (see `tasks`), so redelivered events and concurrent workers are no-ops.

The task deadline (`TASK_DEADLINE_S` after creation) holds on every path: no check is ever scheduled past it,
so the sweep finds the task by then; a read, a claim or a check that finds the task overdue fails it with
`upstream_timeout` (`upstream_rate_limited`, saying how long it waited, when it was queued waiting for its
provider's capacity). An async upstream is checked at most once a second (`CheckPolicy.min_gap_ms`), however many
clients read the task, and a client that reads about once a second sees the result within about a second.
Images of a task that ends any other way than succeeded (cancelled meanwhile, failed half-way) are removed
from the bucket: no orphan objects. What else a task's end sets off (metrics, events, webhooks, its batch's
count) is `lifecycle`'s: every path that ends a task here hands it to `lifecycle.ended`.

No exception leaves a claimed task hanging on its lease: every step after the claim runs through `_step`. A
GatewayError there (a configuration that cannot serve the task any more) ends the task failed at once with its
code; anything else is retried after a short backoff, STAGE_ATTEMPTS times in all, then the task ends
`internal_error` naming the exception's class (its message and traceback go to the log only).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aws_lambda_powertools import Logger

from . import (bus, checks, inputs, lifecycle, observability, pacing, safe_fetch, settings, shards, storage, table,
               tasks, transport, webhooks)
from .batches import record as batch_record
from .capabilities import routes_able_to
from .clock import now_ms
from .entry import time_left_ms as _time_left_ms
from .dialects import GENERATE, VARIATION, Done, Failed, HttpCall, HttpReply, Job, Outcome, Pending, get_dialect
from .errors import (GatewayError, ProviderConfigInvalid, RateLimited, ServerError, UpstreamFailed,
                     UpstreamRateLimited, UpstreamTimeout)
from .observability import count
from .request import ImageRequest, VariationRequest
from .provider_config import current_config
from .routing import Route, routes_for
from .seam import Seam
from .tasks import Task

logger = Logger(child=True)

CHECK_LEASE_S = 120
REPUBLISH_AFTER_S = 60
MAX_CLAIMS = 3  # a stage whose worker died this many times fails rather than loop forever
DOWNLOAD_PARALLELISM = 4
STAGE_ATTEMPTS = 3  # a step of a stage that raised something unexpected runs this many times in all
STAGE_BACKOFF_S = 1.0  # before its second attempt; doubled before each next one (1 s, then 2 s)
STAGE_TIME_MARGIN_S = 5  # a retry starts only while the Lambda has its backoff, one more attempt and this left
SWEEP_TIME_MARGIN_S = 15  # a sweep starts no task once its Lambda has less than this left

T = TypeVar("T")


@dataclass(frozen=True)
class CheckPolicy:
    """When an async upstream is asked about a task: never twice within `min_gap_ms` (however many clients
    read the task), and the sweep's next check backs off with the task's age, from every `min_delay_ms` to at
    most every `max_delay_ms` (a fifth of its age in between)."""

    min_gap_ms: int = 1000
    min_delay_ms: int = 2000
    max_delay_ms: int = 30_000

    def delay_ms(self, task: Task) -> int:
        age_ms = now_ms() - task.created_at
        return int(min(self.max_delay_ms, max(self.min_delay_ms, age_ms / 5)))


_check_policy: Seam[CheckPolicy] = Seam(CheckPolicy())
#: check by another policy until the block ends (e.g. checks due at once, where a test drives the sweep)
use_check_policy = _check_policy.use


def check_policy() -> CheckPolicy:
    return _check_policy.current


class _TaskEnded(Exception):
    """Raised by `_step` when the task cannot go on, or moved on meanwhile: carries the stage's answer."""

    def __init__(self, task: Task | None):
        super().__init__()
        self.task = task


def _stage(run: Callable[..., Task | None]) -> Callable[..., Task | None]:
    """A stage whose steps run through `_step`: a task one of them ended is the stage's answer."""

    @functools.wraps(run)
    def staged(*args: Any, **kwargs: Any) -> Task | None:
        try:
            return run(*args, **kwargs)
        except _TaskEnded as ended:
            return ended.task

    return staged


def submit_queued(task_id: str, *, woken_by: object = None, slot: object = None) -> Task | None:
    """The submit stage of a queued task. `woken_by` (and `slot`): its provider's line woke it (its line item is
    gone already) and handed it that slot, which its upstream call uses without asking for one. A wake the task
    does not use (it ended, or another worker has it, or it took another route) goes on to the next task in line,
    so a freed slot is never left idle."""
    wake = pacing.wake_of(woken_by, slot)
    used: list[str] = []  # what the upstream call made of the wake (see _call_upstream)
    try:
        return _submit_queued(task_id, wake, used)
    finally:
        if wake is not None and not used:
            pacing.pass_on(wake, task_id)


@_stage
def _submit_queued(task_id: str, wake: pacing.Wake | None, used: list[str]) -> Task | None:
    task = tasks.claim(task_id, "queued", lease_s=settings.current().worker_lease_s)
    if task is None:
        logger.info("task not claimable (done, cancelled or taken)", extra={"task_id": task_id})
        return None
    if _past_deadline(task):
        error = _waited_error(task) if task.waiting_for else _deadline_error()
        return _step(task, _fail_by_deadline, task, error)
    return _submit(task, wake=wake, used=used)


@_stage
def run_claimed(task: Task, *, wait_until: float | None = None) -> Task | None:
    """The sync fast path: a task its API request created already claimed (`tasks.create(claimed_for_s=)`) runs its
    submit stage in that request's own invocation, URL images downloaded there too: nothing goes over the bus,
    nothing reads the table. An async upstream's task is left waiting (the request then waits on it). A provider
    without capacity is waited for here until `wait_until` (time.monotonic()); then the task waits queued."""
    return _submit(task, fetch_now=True, wait_until=wait_until)


def _submit(task: Task, *, fetch_now: bool = False, wait_until: float | None = None,
            wake: pacing.Wake | None = None, used: list[str] | None = None) -> Task | None:
    req = _step(task, _request_of, task)
    routes = _step(task, _routes, task)
    job = _step(task, _job_of, task)
    while True:
        outcome, index = _step(task, _call_upstream, task, req, routes, job, wake, used)
        wake = None  # a second look (the sync path waiting for a slot) asks as anyone does
        if not isinstance(outcome, pacing.Busy) or wait_until is None:
            break
        pause_s = (outcome.retry_at - now_ms()) / 1000
        if outcome.reason == pacing.CAPACITY:  # a slot may come free at any time: look again soon
            pause_s = min(pause_s, random.uniform(0.1, 0.4))
        if time.monotonic() + pause_s >= wait_until or outcome.retry_at >= _deadline_ms(task):
            break
        time.sleep(max(0.0, pause_s))
    return _step(task, _apply, task, outcome, routes[index], index, fetch_now=fetch_now)


def _request_of(task: Task) -> ImageRequest:
    return (VariationRequest if task.operation == VARIATION else ImageRequest).model_validate(task.request)


def _job_of(task: Task) -> Job:
    """What the task asks of its upstream; an edit's or a variation's input files are read back from the bucket
    (the same bytes for every route and every retry)."""
    if not task.operation or task.operation == GENERATE:
        return Job()
    return Job(operation=task.operation, inputs=inputs.load(task.inputs or {}))


def _call_upstream(task: Task, req: ImageRequest, routes: list[Route], job: Job,
                   wake: pacing.Wake | None = None, used: list[str] | None = None) -> tuple[Outcome | pacing.Busy, int]:
    """Submit to the task's route, falling back to the next while failures are retriable: (outcome, route index).

    Each call first takes its route's limits (`pacing.acquire`) and gives them back when it returns. A route
    without capacity, or whose provider still answers 429 after the transport's retries, is passed over for the
    next; when no route served and one of them was only busy, the answer is that route's `pacing.Busy` (the task
    waits: nothing was taken, nothing is paid, the route index stays).

    An unexpected exception once a request was handed to the transport ends the task rather than being retried:
    the provider may have taken (and billed) it, and the gateway never pays twice (transport does not retry a read
    timeout either). One before that (building the request) is `_step`'s to retry.

    A task that waited leaves its provider's line when it gets a slot, unless that line woke it (the wake took
    its line item already). A slot handed with the wake is used on a route of that provider without asking;
    `used` records that the wake was used (its slot went into a permit, or, woken without one, the task asked),
    so that `submit_queued` passes on a wake that was not."""
    sent: list[HttpCall] = []

    def send(call: HttpCall) -> HttpReply:
        sent.append(call)
        return transport.send(call)

    try:
        outcome: Outcome = Failed(UpstreamTimeout("No route was tried."))
        index = task.route_index
        busy: tuple[pacing.Busy, int] | None = None
        able = routes_able_to(job.operation, routes)
        for index in range(task.route_index, len(routes)):
            route = routes[index]
            if route not in able:  # a route that cannot edit (or vary) is skipped, as validation promised
                continue
            handed = wake.slot if wake is not None and wake.provider == route.provider else None
            permit = pacing.acquire(route, pacing.holder_of(task.id), waits=task.waits, handed=handed)
            if used is not None and wake is not None and (
                    wake.slot is None or (handed is not None and not isinstance(permit, pacing.Busy)
                                          and handed in permit.slots)):
                used.append(wake.slot or wake.provider)
            if isinstance(permit, pacing.Busy):
                busy = busy or (permit, index)
                continue
            line = task.waiting_on or (route.provider if task.waiting_for else None)  # (or a task from before)
            if line and (wake is None or line != wake.provider):
                pacing.leave_line(line, task.id)
            started = time.monotonic()
            try:
                outcome = _refuse_unsafe_urls(get_dialect(route.dialect).submit(req, route, send, job))
            finally:
                pacing.release(permit)
            observability.upstream_call(route.provider, latency_ms=(time.monotonic() - started) * 1000,
                                        failed=isinstance(outcome, Failed))
            if isinstance(outcome, Failed) and isinstance(outcome.error, RateLimited):
                count("UpstreamRateLimited")
                logger.warning("route failed, falling back" if index + 1 < len(routes) else "route rate limited",
                               extra={"task_id": task.id, "provider": route.provider, "error": outcome.error.message})
                busy = busy or (pacing.rate_limited(route, outcome.error, waits=task.waits), index)
                continue
            if isinstance(outcome, Failed) and outcome.error.retriable and index + 1 < len(routes):
                # the route tried next (those that cannot do the operation are skipped there too)
                following = next((r for r in routes[index + 1:] if r in able), routes[index + 1])
                observability.fallback(route.provider, following.provider)
                logger.warning("route failed, falling back", extra={"task_id": task.id, "provider": route.provider,
                                                                     "error": outcome.error.message})
                continue
            break
        if busy is not None and isinstance(outcome, Failed) and outcome.error.retriable:
            return busy
        return outcome, index
    except GatewayError:
        raise
    except Exception as exc:
        if not sent:
            raise
        logger.exception("unexpected error after the upstream request went out", extra={"task_id": task.id})
        raise _unexpected(exc) from None


@_stage
def check_waiting(task_id: str, *, fetch_now: bool = False) -> Task | None:
    """One check of an async upstream. `fetch_now`: a finished result's images are stored by this invocation
    (someone is reading and waiting) instead of being handed to the fetch function."""
    task = tasks.claim(task_id, "waiting", lease_s=CHECK_LEASE_S, min_check_gap_ms=check_policy().min_gap_ms)
    if task is None:
        return None
    route = _step(task, _waiting_route, task)
    # Asking again is a read of the upstream's task (nothing is paid twice), so the whole check may be retried.
    outcome = _step(task, _check_upstream, task, route)
    return _step(task, _apply_check, task, outcome, route, fetch_now)


def _check_upstream(task: Task, route: Route) -> Outcome:
    started = time.monotonic()
    outcome = _refuse_unsafe_urls(get_dialect(route.dialect).check(task.upstream["id"], route, transport.send,
                                                                   upstream=task.upstream))
    observability.upstream_check(route.provider, latency_ms=(time.monotonic() - started) * 1000,
                                 failed=isinstance(outcome, Failed))
    return outcome


#: the longest a cancel waits on its upstream's answer (the client's cancel has already succeeded)
CANCEL_TIMEOUT_S = 10.0


def cancel_upstream(task: Task) -> bool:
    """Best-effort: ask the upstream to cancel the job of a task we just cancelled, when its dialect can
    (`Dialect.build_cancel`) and the task had an upstream id. Through the normal transport, at the route's
    configured base URL, within CANCEL_TIMEOUT_S. Never raises: a cancel that fails is logged (the client's
    cancel stands, and the upstream's late result is dropped anyway). Not once the upstream has finished (the
    task was storing its images). True when the upstream accepted it."""
    upstream_id = task.upstream.get("id") if task.status == "cancelled" and task.stage in ("queued", "waiting") \
        else None
    if not upstream_id:
        return False
    try:
        route = _waiting_route(task)
        calls = get_dialect(route.dialect).build_cancel(str(upstream_id), route, task.upstream)
        if not calls:
            return False
        for call in calls:
            transport.send(dataclasses.replace(call, timeout_s=min(call.timeout_s, CANCEL_TIMEOUT_S)))
    except Exception as exc:  # noqa: BLE001 - best effort: the task is cancelled whatever the upstream says
        message = exc.scrubbed((_route_key(task),)).message if isinstance(exc, GatewayError) else type(exc).__name__
        logger.warning("upstream cancel failed", extra={"task_id": task.id, "error": message})
        return False
    count("UpstreamCancels")
    return True


def _route_key(task: Task) -> str | None:
    try:
        return _waiting_route(task).api_key
    except Exception:  # noqa: BLE001 - only used to scrub a log line
        return None


def _apply_check(task: Task, outcome: Outcome, route: Route, fetch_now: bool) -> Task | None:
    unfinished = isinstance(outcome, Pending) or (isinstance(outcome, Failed) and outcome.error.retriable)
    if unfinished and _past_deadline(task):  # one last look was allowed; the result did not come in time
        return _fail_by_deadline(task, _deadline_error())
    if isinstance(outcome, Failed) and outcome.error.retriable:
        return _checked_later(tasks.release(task, retry_at=_next_check_at(task)))
    return _apply(task, outcome, route, task.route_index, fetch_now=fetch_now)


def _checked_later(task: Task | None) -> Task | None:
    """A task left waiting on its async upstream: its next check is scheduled for when it is due (`checks`)."""
    if task is not None and task.stage == "waiting" and task.next_check_at:
        checks.schedule(task.id, task.next_check_at)
    return task


@_stage
def store_generated(task_id: str) -> Task | None:
    task = tasks.claim(task_id, "generated", lease_s=settings.current().worker_lease_s)
    if task is None:
        return None
    # A retry downloads every image again (to the same keys): the provider is not asked for anything new.
    return _step(task, _store_sources, task)


def _store_sources(task: Task) -> Task | None:
    if _past_deadline(task):
        return _fail_by_deadline(task, _deadline_error())
    try:
        stored = _download(task, task.sources)
    except GatewayError as exc:
        if exc.retriable and exc.code != "unsafe_result_url" and task.claims < MAX_CLAIMS:
            logger.warning("download failed, will retry", extra={"task_id": task.id, "error": exc.message})
            return tasks.release(task, retry_at=min(now_ms() + 10_000, _deadline_ms(task)), count_attempt=True)
        if exc.retriable and _next_route_exists(task):
            return _resubmit_on_next_route(task, exc)
        return _finish(task, "failed", error=exc.task_error())
    images = sorted(task.images + stored, key=lambda image: image["index"])
    return _finish(task, "succeeded", images=images)


def sweep(*, partitions: list[str] | None = None) -> dict[str, int]:
    """Advance whatever is due in the sweep partitions `partitions` (a "Sweep Shard" event's); by default in
    every partition that may hold due work, and batches too (the whole sweep in one invocation). Each partition
    is paged through to its end (no cap) and its due items are advanced by SWEEP_PARALLELISM threads; no item
    is started after SWEEP_BUDGET_S or once the Lambda has less than SWEEP_TIME_MARGIN_S left (what is left is
    still due at the next run: `stopped` says so). Returns counts by action for logging and tests."""
    counts = {"republished": 0, "deferred": 0, "checked": 0, "failed": 0, "webhooks": 0, "batches": 0, "errors": 0,
              "stopped": 0}
    if partitions is None:
        counts["batches"] = batch_record.recheck_due()  # a stalled reader or a count that fell behind
        counts.update(sweep_lines())
        partitions = [p for group in shards.groups() for p in group]
    config = settings.current()
    started = time.monotonic()
    time_left_ms = _time_left_ms.get()

    def time_is_up() -> bool:
        return (time.monotonic() - started > config.sweep_budget_s
                or (time_left_ms is not None and time_left_ms() < SWEEP_TIME_MARGIN_S * 1000))

    def one(kind: str, task_id: str) -> str | None:
        try:
            if kind == shards.WEBHOOK:  # a retry came due, or its "Webhook Due" event was lost
                return "webhooks" if webhooks.republish(task_id) else None
            return _sweep_task(task_id)
        except Exception:  # noqa: BLE001 - one task's trouble must not keep the sweep from the others
            logger.exception("the sweep could not advance a task", extra={"task_id": task_id})
            return "errors"

    parallelism = max(1, config.sweep_parallelism)
    slots = threading.BoundedSemaphore(parallelism)  # never more queued than running: the budget stays exact
    futures = []
    table.task_table()  # created once, before the threads share it
    oldest_created: int | None = None  # of the live tasks found due (see _emit_oldest_in_flight)
    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="sweep") as pool:
        for partition in partitions:
            kind = shards.kind_of(partition)
            for page in table.due_pages(partition):
                if kind == shards.LIVE:
                    oldest_created = min(filter(None, [oldest_created, *map(_created_ms_of, page)]), default=None)
                for task_id in page:
                    if counts["stopped"] or time_is_up():
                        counts["stopped"] += 1
                        continue
                    slots.acquire()
                    future = pool.submit(contextvars.copy_context().run, one, kind, task_id)
                    future.add_done_callback(lambda _: slots.release())
                    futures.append(future)
                if counts["stopped"]:
                    break
            if counts["stopped"]:
                logger.info("the sweep ran out of time; the rest is due at the next run",
                            extra={"partition": partition})
                break
    for future in futures:
        action = future.result()
        if action:
            counts[action] += 1
    if any(shards.kind_of(partition) == shards.LIVE for partition in partitions):
        _emit_oldest_in_flight(oldest_created)
    return counts


def _created_ms_of(task_id: str) -> int | None:
    """A task's creation time, read off its id (`tasks.task_id`: `imgtask_` and 13 digits of milliseconds)."""
    digits = task_id.removeprefix("imgtask_")[:13]
    return int(digits) if len(digits) == 13 and digits.isdigit() else None


def _emit_oldest_in_flight(oldest_created: int | None) -> None:
    """OldestInFlightAgeSeconds: the age of the oldest live task this sweep found due, read off the ids it reads
    anyway (no extra query; 0 when none was due). A task not yet due is younger than the deadline (no check is
    scheduled past it), so every task older than TASK_DEADLINE_S is among those read: above the deadline the value
    is the true age of the oldest in-flight task, which is what its alarm watches (a task the sweep does not end
    on time); below it, a lower bound. Each sweep shard's invocation emits its own: read it as the Maximum."""
    age_s = max(0, now_ms() - oldest_created) // 1000 if oldest_created is not None else 0
    observability.gauge("OldestInFlightAgeSeconds", age_s)


def sweep_lines() -> dict[str, int]:
    """The hand-overs' safety net, once per scheduled run (a read of each limit's slots, whatever the lines'
    length): a slot free while its provider's line holds tasks (a worker died holding it, a wake found nobody)
    wakes the oldest; a slot handed to a task that is still queued HAND_RESEND_S later (its "Task Queued" was
    lost) is sent to it again. So a task waiting in line needs no look of its own but every PACING_LINE_CHECK_S."""
    counts = {"lines_woken": 0, "hand_overs_resent": 0}
    try:
        config = current_config()
    except GatewayError:
        return counts
    for provider, limit in pacing.line_limits(config):
        state = pacing.slot_state(limit)
        for task_id, slot, leased in state.handed:
            if tasks.nudge(task_id, next_check_at=now_ms() + int(settings.current().pacing_max_wait_s * 1000)):
                bus.publish(bus.TASK_QUEUED, task_id, woken_by=provider, **({"slot": slot} if leased else {}))
                counts["hand_overs_resent"] += 1
        for _ in range(state.free):
            if pacing.wake_oldest(provider) is None:
                break
            counts["lines_woken"] += 1
    return counts


def _sweep_task(task_id: str) -> str | None:
    """Advance one live task that is due; what was done, as a key of the sweep's counts."""
    try:
        task = tasks.get(task_id)
    except GatewayError:
        return None
    if task.terminal:
        return None
    if _give_up_if_overdue(task):
        return "failed"
    if task.stage == "waiting":
        check_waiting(task_id)
        return "checked"
    if task.stage == "queued" and task.waiting_for == pacing.CAPACITY and _left_to_hand_overs(task):
        # Still in its provider's line while every slot is in use: those slots' releases hand over, nothing was
        # lost. Look again a safety net later rather than send it to be refused (and rejoin the line). Woken
        # (out of the line: its "Task Queued" was lost), or a slot free with nobody taking it: re-sent below.
        if tasks.touch(task, next_check_at=_next_check_at(task, int(settings.current().pacing_line_check_s * 1000))):
            return "deferred"
        return None
    if task.stage in ("queued", "generated"):
        # Its event was lost or its worker died (lease expired): nudge the stage's function again.
        if tasks.touch(task, next_check_at=_next_check_at(task, REPUBLISH_AFTER_S * 1000)):
            bus.publish(bus.TASK_QUEUED if task.stage == "queued" else bus.TASK_GENERATED, task_id)
            return "republished"
    return None


def _left_to_hand_overs(task: Task) -> bool:
    """Whether a waiting task gets its slot by a hand-over: no route it may still take has a slot free now (a
    route without a concurrency limit always has one) and it is still in a line; False when its routes cannot
    be had."""
    try:
        routes = routes_for(task.model)[task.route_index:]
    except GatewayError:
        return False
    return (bool(routes) and not any(pacing.has_free_slot(route) for route in routes)
            and pacing.in_line([route.provider for route in routes], task.id))


def poll_through(task: Task) -> Task:
    """A read of a task waiting on an async upstream asks upstream first (at most every `min_gap_ms` of the check
    policy: a client polling once a second sees a result within about a second); a read of an overdue task
    fails it."""
    if task.terminal:
        return task
    if _give_up_if_overdue(task, only_past_deadline=True):
        return tasks.get(task.id)
    if task.stage == "waiting" and now_ms() - (task.checked_at or 0) >= check_policy().min_gap_ms:
        return check_waiting(task.id, fetch_now=True) or tasks.get(task.id)
    return task


def with_queue_position(task: Task) -> Task:
    """A task waiting in a provider's line with its place in it now (one query): counted for a client reading
    the task, rather than at every wait of every task of a burst, when nobody may read it."""
    if task.status == "queued" and task.waiting_on and task.waiting_since:
        return dataclasses.replace(task, queue_position=pacing.place(task.waiting_on, task.waiting_since))
    return task


# -- applying an outcome ----------------------------------------------------------------------------------

def _apply(task: Task, outcome: Outcome | pacing.Busy, route: Route, route_index: int, *,
           fetch_now: bool = False) -> Task | None:
    if isinstance(outcome, pacing.Busy):
        return _apply_wait(task, outcome, route)
    upstream = {**task.upstream, "provider": route.provider, "model": route.upstream_model}
    if isinstance(outcome, Failed):
        return _finish(task, "failed", error=outcome.error.task_error(), upstream=upstream,
                            route_index=route_index)
    upstream.update(outcome.meta)
    if outcome.upstream_id:
        upstream["id"] = outcome.upstream_id
    if isinstance(outcome, Pending):
        moved = _checked_later(tasks.advance(task, "waiting", next_check_at=_next_check_at(task), upstream=upstream,
                                             route_index=route_index, progress=max(task.progress, outcome.progress)))
        if moved is None and outcome.upstream_id and tasks.get(task.id).status == "cancelled":
            # cancelled while the upstream was taking the job: the cancel had no id to send, so send it now
            cancel_upstream(dataclasses.replace(task, status="cancelled", upstream=upstream))
        return moved
    return _apply_done(task, outcome, upstream, route_index, fetch_now=fetch_now)


def _apply_wait(task: Task, busy: pacing.Busy, route: Route) -> Task | None:
    """No route could take the task now: it waits queued in its provider's line, never past its deadline; one
    whose next try would come after it fails upstream_rate_limited.

    Refused a slot, it is left to the hand-overs (a worker giving a slot back wakes the oldest waiter): its next
    check is only the safety net, PACING_MAX_WAIT_S away, for hand-overs that were lost. Refused a minute's count
    or answered 429, it is tried again at `busy.retry_at` (a woken task may come sooner). The task is put back
    before it joins the line (a wake reaches a task that can be claimed), and a slot freed while it joined is
    handed over all the same (the re-check)."""
    since = task.waiting_since or now_ms()
    waiting = dataclasses.replace(task, waiting_since=since, waiting_for=busy.reason)
    if busy.retry_at >= _deadline_ms(task):
        return _fail_by_deadline(task, _waited_error(waiting))
    count("TasksWaiting")
    logger.info("task waits for its provider", extra={"task_id": task.id, "provider": busy.provider,
                                                      "reason": busy.reason, "retry_at": busy.retry_at})
    retry_at = busy.retry_at
    if busy.no_slot:
        retry_at = max(retry_at, now_ms() + int(settings.current().pacing_line_check_s * 1000))
    moved = tasks.wait(task, retry_at=min(retry_at, _deadline_ms(task) + 1), waiting_for=busy.reason,
                       waiting_since=since, waits=task.waits + 1, waiting_on=busy.provider)
    if moved is None:
        return None
    pacing.join_line(busy.provider, task.id, since)
    if busy.no_slot and pacing.has_free_slot(route):  # freed while it joined: not lost
        pacing.wake_oldest(busy.provider)
    return moved


def _waited_error(task: Task) -> UpstreamRateLimited:
    waited_s = max(0, now_ms() - (task.waiting_since or task.created_at)) // 1000
    why = "answered 429" if task.waiting_for == pacing.RATE_LIMIT else "had no capacity"
    return UpstreamRateLimited(f"The provider {why} for this task: it waited {waited_s} s, and its deadline "
                               f"({settings.current().task_deadline_s} s) leaves no time to try again.")


def _apply_done(task: Task, outcome: Done, upstream: dict[str, Any], route_index: int, *,
                fetch_now: bool = False) -> Task | None:
    stored, sources = [], []
    try:
        for index, image in enumerate(outcome.images):
            if image.data is not None:  # bytes in hand (b64 answers, local): store them now
                kept = storage.store_bytes(_key_prefix(task, index), image.data)
                stored.append(_image_item(index, kept, image.revised_prompt))
            else:
                sources.append({"index": index, "url": image.url, "revised_prompt": image.revised_prompt,
                                "tile": list(image.tile) if image.tile else None})
    except GatewayError as exc:
        return _finish(task, "failed", error=exc.task_error(), upstream=upstream)
    fields = {"upstream": upstream, "route_index": route_index, "usage": outcome.usage or {"images": len(stored)}}
    sources = [{k: v for k, v in s.items() if v is not None} for s in sources]
    # Someone waits: download here, rather than hand the stage to the fetch function; tiles are cut by the fetch
    # stage only (Pillow stays out of an API request's invocation).
    if sources and fetch_now and not any("tile" in source for source in sources):
        try:
            stored += _download(task, sources)
            sources = []
        except GatewayError as exc:  # the fetch stage retries, or falls back, as for any download
            logger.warning("download failed, handing it to the fetch stage", extra={"task_id": task.id,
                                                                                    "error": exc.message})
    if not sources:
        return _finish(task, "succeeded", images=sorted(stored, key=lambda image: image["index"]), **fields)
    moved = tasks.advance(task, "generated", next_check_at=_next_check_at(task, REPUBLISH_AFTER_S * 1000),
                          images=stored, sources=sources, progress=max(task.progress, 90), **fields)
    if moved:
        bus.publish(bus.TASK_GENERATED, task.id)
    else:  # cancelled while the images were being stored: they must not outlive it
        storage.discard_images(task.id)
    return moved


def _finish(task: Task, status: str, **fields: Any) -> Task | None:
    """End the task and hand it to `lifecycle` (metrics, events, webhook, batch count, images of a task that
    did not succeed removed).

    Whatever was stored for a task that a cancel ended meanwhile is removed here: the bucket holds the images
    of succeeded tasks only."""
    done = tasks.finish(task, status, **fields)
    if done is not None:
        lifecycle.ended(done)
    elif tasks.get(task.id).status != "succeeded":  # cancelled meanwhile: its images must not outlive it
        storage.discard_images(task.id)  # (a succeeded task here is our own write whose answer was lost)
    return done


def _download(task: Task, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store the images at `sources` (in parallel, streamed, SSRF-guarded); their task image items. Sources
    that are tiles of one URL (`ImageOut.tile`) are one download, cut into its tiles."""
    grids: dict[str, list[dict[str, Any]]] = {}
    jobs: list[Callable[[], list[dict[str, Any]]]] = []
    for source in sources:
        if source.get("tile"):
            grids.setdefault(source["url"], []).append(source)
        else:
            jobs.append(functools.partial(_store_urls, task, [source]))
    jobs += [functools.partial(_store_tiles, task, url, tiled) for url, tiled in grids.items()]
    with ThreadPoolExecutor(max_workers=DOWNLOAD_PARALLELISM) as pool:
        return [item for items in pool.map(lambda job: job(), jobs) for item in items]


def _store_url(task: Task, source: dict[str, Any]) -> dict[str, Any]:
    try:
        kept = storage.store_from_url(source["url"], _key_prefix(task, source["index"]))
    except safe_fetch.UnsafeURL as exc:  # the provider's URL, not the caller's request, is at fault
        raise _unsafe_result_url(exc.message) from None
    return _image_item(source["index"], kept, source.get("revised_prompt"))


def _store_urls(task: Task, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_store_url(task, source) for source in sources]


def _store_tiles(task: Task, url: str, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fetch `url` once and store each source's tile of it as its own image."""
    from . import tiles  # Pillow: loaded by the fetch stage when it has tiles to cut, never at start

    try:
        data, content_type = storage.fetch_image(url)
    except safe_fetch.UnsafeURL as exc:
        raise _unsafe_result_url(exc.message) from None
    cells = [(int(index), int(columns), int(rows)) for index, columns, rows in (s["tile"] for s in sources)]
    parts = tiles.cut(data, content_type, cells)
    return [_image_item(source["index"], storage.store_bytes(_key_prefix(task, source["index"]), part),
                        source.get("revised_prompt")) for source, part in zip(sources, parts, strict=True)]


def _unsafe_result_url(reason: str) -> UpstreamFailed:
    return UpstreamFailed(f"The provider returned an image URL the gateway will not fetch: {reason}",
                          code="unsafe_result_url", retriable=True)


def _refuse_unsafe_urls(outcome: Outcome) -> Outcome:
    """A result whose image URLs the SSRF guard refuses on sight (scheme, credentials, a literal private
    address) fails like an upstream error, so the next route is tried; names are checked when downloaded."""
    if isinstance(outcome, Done):
        for image in outcome.images:
            if image.url is not None:
                try:
                    safe_fetch.check_url(image.url, allow_loopback=safe_fetch.loopback_allowed())
                except safe_fetch.UnsafeURL as exc:
                    return Failed(_unsafe_result_url(exc.message))
    return outcome


def _next_route_exists(task: Task) -> bool:
    try:
        return task.route_index + 1 < len(routes_for(task.model))
    except GatewayError:
        return False


def _resubmit_on_next_route(task: Task, error: GatewayError) -> Task | None:
    """The images of this route cannot be had: start over on the next route (its submit stage)."""
    _count_fallback(task)
    logger.warning("route's images unusable, falling back", extra={"task_id": task.id, "error": error.message})
    moved = tasks.advance(task, "queued", next_check_at=_next_check_at(task, REPUBLISH_AFTER_S * 1000),
                          route_index=task.route_index + 1, images=[], sources=[], usage=None)
    storage.discard_images(task.id)
    if moved:
        bus.publish(bus.TASK_QUEUED, task.id)
    return moved


def _count_fallback(task: Task) -> None:
    """RouteFallbacks from the task's route to the next one (providers unnamed when the configuration changed)."""
    try:
        routes = routes_for(task.model)
    except GatewayError:
        routes = []

    def provider(index: int) -> str:
        return routes[index].provider if index < len(routes) else "unknown"

    observability.fallback(provider(task.route_index), provider(task.route_index + 1))


def _image_item(index: int, kept: storage.StoredImage, revised_prompt: str | None) -> dict[str, Any]:
    item = {"index": index, **kept.to_item()}
    if revised_prompt:
        item["revised_prompt"] = revised_prompt
    return item


def _key_prefix(task: Task, index: int) -> str:
    return f"images/{task.id}/{index}"


def _routes(task: Task) -> list[Route]:
    """The routes of the task's model, checked from the one the task is on: each has a dialect a module speaks.
    A GatewayError (through `_step`, the task's end) when the configuration in force cannot serve it any more."""
    routes = routes_for(task.model)
    if task.route_index >= len(routes):
        raise ProviderConfigInvalid(f"The provider configuration changed: model '{task.model}' no longer has "
                                    f"route {task.route_index + 1}, which this task was on.")
    for route in routes[task.route_index:]:
        get_dialect(route.dialect)
    return routes


def _waiting_route(task: Task) -> Route:
    """The route an async upstream's task id belongs to; never another provider's, which would not know the id."""
    route = _routes(task)[task.route_index]
    if route.provider != task.upstream.get("provider", route.provider):
        raise ProviderConfigInvalid(f"The provider configuration changed: model '{task.model}' no longer routes "
                                    f"to the provider this task was submitted to.")
    return route


# -- steps that never leave a task hanging ------------------------------------------------------------------

def _step(task: Task, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one step of a claimed task's stage, so that no exception leaves the task on its lease.

    A GatewayError is an answer no retry changes (a configuration that cannot serve the task, a dialect no module
    speaks, a route gone): the task ends failed with it at once. Anything else is unexpected (a bug, a throttled
    AWS call): logged with its traceback, then the step runs again after STAGE_BACKOFF_S (doubling), while the
    Lambda has time, STAGE_ATTEMPTS times in all; then the task ends `internal_error`. A step is not run again
    once the task is no longer held (its write landed before the exception, or a cancel came): that ends it."""
    for attempt in range(1, STAGE_ATTEMPTS + 1):
        started = time.monotonic()
        try:
            return step(*args, **kwargs)
        except GatewayError as exc:
            logger.warning("task cannot go on", extra={"task_id": task.id, "step": step.__name__,
                                                       "error": exc.message})
            raise _TaskEnded(_finish(task, "failed", error=exc.task_error())) from None
        except Exception as exc:  # noqa: BLE001 - unexpected: retried, then the task fails naming its class
            logger.exception("stage step failed", extra={"task_id": task.id, "step": step.__name__,
                                                         "attempt": attempt})
            failure = exc
        current = tasks.get(task.id)
        if current.lease_id != task.lease_id:
            raise _TaskEnded(current)
        backoff_s = STAGE_BACKOFF_S * 2 ** (attempt - 1)
        if attempt == STAGE_ATTEMPTS or not _time_for(backoff_s + time.monotonic() - started):
            break
        time.sleep(backoff_s)
    raise _TaskEnded(_finish(task, "failed", error=_unexpected(failure).task_error()))


def _unexpected(exc: BaseException) -> ServerError:
    """The task's error for an unexpected exception: its class only (its message may hold anything)."""
    return ServerError(f"The task failed unexpectedly ({type(exc).__name__}).")


def _time_for(seconds: float) -> bool:
    """Whether this invocation has `seconds` (and the margin) left; outside a Lambda there is no bound."""
    time_left_ms = _time_left_ms.get()
    return time_left_ms is None or time_left_ms() > (seconds + STAGE_TIME_MARGIN_S) * 1000


def _deadline_ms(task: Task) -> int:
    return task.created_at + settings.current().task_deadline_s * 1000


def _past_deadline(task: Task) -> bool:
    return now_ms() > _deadline_ms(task)


def _deadline_error() -> UpstreamTimeout:
    return UpstreamTimeout(f"The task did not finish within its deadline ({settings.current().task_deadline_s} s).")


def _next_check_at(task: Task, delay_ms: int | None = None) -> int:
    """When the sweep should look at the task next: after `delay_ms` (the check backoff by default), but
    never past its deadline, so the sweep finds an overdue task even when nobody reads it."""
    delay = check_policy().delay_ms(task) if delay_ms is None else delay_ms
    return min(now_ms() + delay, _deadline_ms(task) + 1)


def _give_up_if_overdue(task: Task, *, only_past_deadline: bool = False) -> bool:
    """Fail a live task past its deadline (or, for the sweep, one whose stage keeps failing: its workers
    die); True when it was failed here. A task found waiting for its provider's capacity fails
    `upstream_rate_limited` (saying how long it waited), any other `upstream_timeout`."""
    overdue = _past_deadline(task)
    if not overdue and (only_past_deadline or task.claims < MAX_CLAIMS):
        return False
    if not overdue:
        reason: GatewayError = UpstreamTimeout("The task kept failing to make progress.")
    elif task.stage == "queued" and task.waiting_for:  # it waited for its provider's capacity all along
        reason = _waited_error(task)
    else:
        reason = _deadline_error()
    failed = tasks.fail_unclaimed(task.id, reason.task_error())
    if failed:
        if overdue:
            count("TasksFailedByDeadline")
        lifecycle.ended(failed)
    return failed is not None


def _fail_by_deadline(task: Task, error: GatewayError) -> Task | None:
    """End a claimed task that its deadline ran out on (`error`: upstream_timeout, or upstream_rate_limited when
    it waited for its provider), counted as TasksFailedByDeadline (the alarm of that name) once the write lands."""
    done = _finish(task, "failed", error=error.task_error())
    if done is not None:
        count("TasksFailedByDeadline")
    return done
