"""The schedule's sweep, spread over the sweep shards (see `shards`).

The schedule invokes the poll function once per SweepSchedule. With one shard (SWEEP_SHARDS=1, the default)
that invocation sweeps everything itself, as before shards. With N shards it asks batches whether they
stalled, then publishes one "Sweep Shard" event per shard (detail `{"partitions": ["inflight#k",
"webhook#k"]}`), plus one per retired partition that still holds due work, and ends. The template's rule
sends each of those to the poll function again, so the N shards are swept by N invocations in parallel, each
paging through all of its due items with SWEEP_PARALLELISM threads (`worker.sweep`). Should publishing fail,
the schedule's invocation sweeps those partitions itself: nothing waits for a second schedule.

A "Sweep Shard" event is a nudge like the task hand-offs: lost, the next schedule sends it again; delivered
twice, the second run finds the items no longer due (every step is a conditional write).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from . import bus, shards, worker
from .batches import record as batch_record

logger = Logger(child=True)


def handle(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The poll function's non-HTTP invocations: the check queue's batch, a "Sweep Shard" event, or the
    schedule."""
    if _is_check_batch(event):
        return run_checks(event, context)
    if event.get("source") == bus.SOURCE and event.get("detail-type") == bus.SWEEP_SHARD:
        return run_shard(event.get("detail") or {})
    return scheduled()


def _is_check_batch(event: dict[str, Any]) -> bool:
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)


def run_checks(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The check queue's batch (see `checks`): each record's task is checked; a record that fails is reported
    back to SQS alone (ReportBatchItemFailures), so it is retried without the others; one that names no task is
    dropped."""

    def check(record: SQSRecord) -> None:
        try:
            task_id = json.loads(record.body).get("task_id")
        except (ValueError, AttributeError):
            task_id = None
        if not isinstance(task_id, str) or not task_id:
            logger.warning("a check message without a task id; dropped", extra={"message_id": record.message_id})
            return
        worker.check_waiting(task_id)

    return dict(process_partial_response(event=event, record_handler=check,
                                         processor=BatchProcessor(EventType.SQS), context=context))


def scheduled() -> dict[str, int]:
    """The schedule's run: the whole sweep here (one shard), or one "Sweep Shard" event per group."""
    if shards.shard_count() == 1:
        return worker.sweep()
    counts = {"batches": batch_record.recheck_due(), "shard_events": 0, **worker.sweep_lines()}
    groups = shards.groups()
    try:
        bus.publish_details(bus.SWEEP_SHARD, [{"partitions": group} for group in groups])
        counts["shard_events"] = len(groups)
    except Exception:  # noqa: BLE001 - the bus is down: sweep here rather than wait for the next schedule
        logger.exception("could not publish Sweep Shard events; sweeping in this invocation")
        swept = worker.sweep(partitions=[p for group in groups for p in group])
        counts.update({k: v for k, v in swept.items() if k != "batches"})
    return counts


def run_shard(detail: dict[str, Any]) -> dict[str, int]:
    """Sweep the partitions a "Sweep Shard" event names (anything else in it is ignored)."""
    partitions = detail.get("partitions")
    if not isinstance(partitions, list):
        logger.warning("Sweep Shard event without partitions", extra={"detail": str(detail)[:200]})
        return {}
    known = [p for p in partitions if isinstance(p, str) and shards.is_partition(p)]
    if len(known) != len(partitions):
        logger.warning("Sweep Shard event names unknown partitions", extra={"partitions": str(partitions)[:200]})
    return worker.sweep(partitions=known)
