"""Advancing tasks: the one code path behind the events, the schedule sweep and poll-through reads.

    submit_queued(id)    "Task Queued"     route -> dialect.submit -> Done | Pending | Failed
    check_waiting(id)    sweep / GET       dialect.check for async upstreams
    store_generated(id)  "Task Generated"  download the upstream URLs into S3
    sweep()              schedule          whatever is due: re-publish lost events, check, give up

Each step claims its stage first (see `tasks`), so redelivered events and concurrent workers are no-ops.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from . import batches, bus, storage, tasks, transport, views, webhooks
from .dialects import Done, Failed, Outcome, Pending, get_dialect
from .errors import GatewayError, UpstreamTimeout
from .request import ImageRequest
from .routing import Route, routes_for
from .tasks import Task, now_ms

logger = Logger(child=True)
# One metrics sink for the layer; each handler flushes it with @worker.metrics.log_metrics.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImageGateway"))

LEASE_S = int(os.environ.get("WORKER_LEASE_S", "900"))  # >= the function timeout: a live worker keeps it
CHECK_LEASE_S = 120
REPUBLISH_AFTER_S = 60
MAX_CLAIMS = 3  # a stage whose worker died this many times fails rather than loop forever
TASK_DEADLINE_S = int(os.environ.get("TASK_DEADLINE_S", "3600"))
DOWNLOAD_PARALLELISM = 4


def submit_queued(task_id: str) -> Task | None:
    task = tasks.claim(task_id, "queued", lease_s=LEASE_S)
    if task is None:
        logger.info("task not claimable (done, cancelled or taken)", extra={"task_id": task_id})
        return None
    req = ImageRequest.model_validate(task.request)
    routes = _routes(task)
    if routes is None:
        return tasks.get(task_id)
    outcome: Outcome = Failed(UpstreamTimeout("No route was tried."))
    index = task.route_index
    for index in range(task.route_index, len(routes)):
        route = routes[index]
        outcome = get_dialect(route.dialect).submit(req, route, transport.send)
        if isinstance(outcome, Failed) and outcome.error.retriable and index + 1 < len(routes):
            metrics.add_metric(name="RouteFallbacks", unit=MetricUnit.Count, value=1)
            logger.warning("route failed, falling back", extra={"task_id": task_id, "provider": route.provider,
                                                                 "error": outcome.error.message})
            continue
        break
    return _apply(task, outcome, routes[index], index)


def check_waiting(task_id: str) -> Task | None:
    task = tasks.claim(task_id, "waiting", lease_s=CHECK_LEASE_S)
    if task is None:
        return None
    routes = _routes(task)
    if routes is None:
        return tasks.get(task_id)
    route = routes[task.route_index]
    outcome = get_dialect(route.dialect).check(task.upstream["id"], route, transport.send)
    if isinstance(outcome, Failed) and outcome.error.retriable and not _past_deadline(task):
        return tasks.release(task, retry_at=now_ms() + _check_delay_ms(task))
    return _apply(task, outcome, route, task.route_index)


def store_generated(task_id: str) -> Task | None:
    task = tasks.claim(task_id, "generated", lease_s=LEASE_S)
    if task is None:
        return None
    try:
        with ThreadPoolExecutor(max_workers=DOWNLOAD_PARALLELISM) as pool:
            stored = list(pool.map(lambda s: _store_url(task, s), task.sources))
    except GatewayError as exc:
        if exc.retriable and task.claims < MAX_CLAIMS:
            logger.warning("download failed, will retry", extra={"task_id": task_id, "error": exc.message})
            return tasks.release(task, retry_at=now_ms() + 10_000)
        return _finish(task, "failed", error=exc.task_error())
    images = sorted(task.images + stored, key=lambda image: image["index"])
    return _finish(task, "succeeded", images=images)


def sweep(*, limit: int = 100) -> dict[str, int]:
    """Advance every live task whose check is due; returns counts by action for logging and tests."""
    counts = {"republished": 0, "checked": 0, "failed": 0, "webhooks": 0, "batches": 0}
    for task_id in tasks.due(limit=limit, partition=tasks.WEBHOOK_PARTITION):
        if tasks.webhook_touch(task_id, next_at=now_ms() + REPUBLISH_AFTER_S * 1000):
            bus.publish(bus.WEBHOOK_DUE, task_id)
            counts["webhooks"] += 1
    for batch_id in tasks.due(limit=limit, partition=batches.SWEEP_PARTITION):
        if batches.due_for_check(batch_id):  # a stalled reader or a count that fell behind: see batches
            bus.publish_detail(batches.BATCH_CONTINUE, {"batch_id": batch_id, "check": True})
            counts["batches"] += 1
    for task_id in tasks.due(limit=limit):
        try:
            task = tasks.get(task_id)
        except GatewayError:
            continue
        if task.terminal:
            continue
        if _past_deadline(task) or task.claims >= MAX_CLAIMS:
            reason = "did not finish in time" if _past_deadline(task) else "kept failing to make progress"
            failed = tasks.fail_unclaimed(task_id, UpstreamTimeout(f"The task {reason}.").task_error())
            if failed:
                announce(failed)
                counts["failed"] += 1
            continue
        if task.stage == "waiting":
            check_waiting(task_id)
            counts["checked"] += 1
        elif task.stage in ("queued", "generated"):
            # Its event was lost or its worker died (lease expired): nudge the stage's function again.
            if tasks.touch(task, next_check_at=now_ms() + REPUBLISH_AFTER_S * 1000):
                bus.publish(bus.TASK_QUEUED if task.stage == "queued" else bus.TASK_GENERATED, task_id)
                counts["republished"] += 1
    return counts


def poll_through(task: Task) -> Task:
    """A read of a task waiting on an async upstream checks upstream first when a check is due."""
    if task.stage == "waiting" and not task.terminal and (task.next_check_at or 0) <= now_ms():
        return check_waiting(task.id) or tasks.get(task.id)
    return task


# -- applying an outcome ----------------------------------------------------------------------------------

def _apply(task: Task, outcome: Outcome, route: Route, route_index: int) -> Task | None:
    upstream = {**task.upstream, "provider": route.provider, "model": route.upstream_model}
    if isinstance(outcome, Failed):
        logger.info("task failed", extra={"task_id": task.id, "error": outcome.error.message})
        return _finish(task, "failed", error=outcome.error.task_error(), upstream=upstream,
                            route_index=route_index)
    upstream.update(outcome.meta)
    if outcome.upstream_id:
        upstream["id"] = outcome.upstream_id
    if isinstance(outcome, Pending):
        return tasks.advance(task, "waiting", next_check_at=now_ms() + _check_delay_ms(task), upstream=upstream,
                             route_index=route_index, progress=max(task.progress, outcome.progress))
    return _apply_done(task, outcome, upstream, route_index)


def _apply_done(task: Task, outcome: Done, upstream: dict[str, Any], route_index: int) -> Task | None:
    stored, sources = [], []
    try:
        for index, image in enumerate(outcome.images):
            if image.data is not None:  # bytes in hand (b64 answers, local): store them now
                kept = storage.store_bytes(_key_prefix(task, index), image.data)
                stored.append(_image_item(index, kept, image.revised_prompt))
            else:
                sources.append({"index": index, "url": image.url, "revised_prompt": image.revised_prompt})
    except GatewayError as exc:
        return _finish(task, "failed", error=exc.task_error(), upstream=upstream)
    fields = {"upstream": upstream, "route_index": route_index, "usage": outcome.usage or {"images": len(stored)}}
    if not sources:
        return _finish(task, "succeeded", images=stored, **fields)
    moved = tasks.advance(task, "generated", next_check_at=now_ms() + REPUBLISH_AFTER_S * 1000, images=stored,
                          sources=[{k: v for k, v in s.items() if v is not None} for s in sources],
                          progress=max(task.progress, 90), **fields)
    if moved:
        bus.publish(bus.TASK_GENERATED, task.id)
    return moved


def _finish(task: Task, status: str, **fields: Any) -> Task | None:
    """End the task, count the outcome (TasksSucceeded / TasksFailed, ImagesStored) and announce it."""
    done = tasks.finish(task, status, **fields)
    if done is not None:
        announce(done)
    return done


def announce(task: Task) -> None:
    """A task reached a terminal status: metrics, the lifecycle event the team's own rules can match
    (succeeded or failed; a cancel was the caller's own doing), and its batch's count."""
    metrics.add_metric(name=f"Tasks{task.status.capitalize()}", unit=MetricUnit.Count, value=1)
    if task.status == "succeeded":
        metrics.add_metric(name="ImagesStored", unit=MetricUnit.Count, value=len(task.images))
    kind = {"succeeded": bus.TASK_SUCCEEDED, "failed": bus.TASK_FAILED}.get(task.status)
    try:
        if kind:
            bus.publish_detail(kind, views.event_task(task))
    except Exception:  # noqa: BLE001 - the task itself is final and readable; the event is a notification
        logger.exception("could not publish the lifecycle event", extra={"task_id": task.id})
    if webhooks.wants_delivery(task) and tasks.webhook_pending(task):
        try:
            bus.publish(bus.WEBHOOK_DUE, task.id)
        except Exception:  # noqa: BLE001 - the sweep publishes it when its check comes due
            logger.exception("could not publish Webhook Due", extra={"task_id": task.id})
    try:
        batches.task_terminal(task)  # a batch's task: count it, and have the batch finished after its last
    except Exception:  # noqa: BLE001 - the task is final either way; a lost count leaves the batch unfinished
        logger.exception("could not count the task on its batch", extra={"task_id": task.id})


def _store_url(task: Task, source: dict[str, Any]) -> dict[str, Any]:
    kept = storage.store_from_url(source["url"], _key_prefix(task, source["index"]))
    return _image_item(source["index"], kept, source.get("revised_prompt"))


def _image_item(index: int, kept: storage.StoredImage, revised_prompt: str | None) -> dict[str, Any]:
    item = {"index": index, **kept.to_item()}
    if revised_prompt:
        item["revised_prompt"] = revised_prompt
    return item


def _key_prefix(task: Task, index: int) -> str:
    return f"images/{task.id}/{index}"


def _routes(task: Task) -> list[Route] | None:
    """The task's routes, or None after failing the task when its configuration is gone."""
    try:
        return routes_for(task.model)
    except GatewayError as exc:
        _finish(task, "failed", error=exc.task_error())
        return None


def _past_deadline(task: Task) -> bool:
    return now_ms() - task.created_at > TASK_DEADLINE_S * 1000


def _check_delay_ms(task: Task) -> int:
    """Checks back off with the task's age: every 2 s at first, at most every 30 s."""
    age_s = (now_ms() - task.created_at) / 1000
    return int(min(30.0, max(2.0, age_s / 5)) * 1000)
