"""Batch jobs from S3: `batches/<name>.jsonl` in the image bucket -> one task per line -> `results/<name>.jsonl`.

    reader   the S3 event, the streamed read of the object (a lease, checkpoints, the hand-over to a next run),
             and one task per line (a bad line becomes a failed task, so it still gets its result line)
    record   the batch's record in the task table (how far it is read, how many of its tasks ended, its
             leases) and what the sweep asks of it
    results  the results file, one line per input line in input order, written once, streamed

A run reads from the saved offset until the object ends (then the record holds its `total`) or its share of
lines or time is used (then it hands over with "Batch Continue"). Every task that ends is counted on its
record (`lifecycle` calls `record.task_ended`); after the last, "Batch Continue" asks the submit function (it
may write the bucket) to write the results. Nothing is lost: until its results are written a batch sits in
the sweep index, and the sweep's "Batch Continue" (`check`) takes over a reader whose lease ran out (or
whose hand-over was lost) and recounts a batch whose count fell behind, then finishes it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from .. import storage
from . import reader, record, results
from .reader import is_s3_event
from .record import BATCH_CONTINUE, INPUT_PREFIX, RESULTS_PREFIX, SWEEP_PARTITION, BatchRecord, recheck_due

__all__ = ["BATCH_CONTINUE", "INPUT_PREFIX", "RESULTS_PREFIX", "SWEEP_PARTITION", "BatchRecord", "is_s3_event",
           "on_continue", "on_s3_event", "reader", "recheck_due", "record", "results"]

logger = Logger(child=True)


def on_s3_event(event: dict[str, Any], context: Any) -> None:
    """An object created under batches/: start (or, on redelivery, harmlessly resume) its batch."""
    for bucket, key, etag in reader.created_objects(event):
        if bucket != storage.bucket() or not key.startswith(INPUT_PREFIX):
            logger.warning("ignoring an object outside the batch prefix", extra={"bucket": bucket, "key": key})
            continue
        batch = record.start(bucket, key, etag)
        logger.append_keys(batch_id=batch.id)
        _run(batch, context)


def on_continue(event: dict[str, Any], context: Any) -> None:
    """"Batch Continue": read on from the saved offset, or write the results of a finished batch. From the
    sweep (`check`), a batch that is read but not complete is recounted first."""
    detail = event.get("detail") or {}
    batch = record.get(detail.get("batch_id", ""))
    if batch is None:
        logger.warning("no such batch", extra={"detail": detail})
        return
    logger.append_keys(batch_id=batch.id)
    _run(batch, context, recount=bool(detail.get("check")))


def _run(batch: BatchRecord, context: Any, *, recount: bool = False) -> None:
    if batch.over:
        return
    if not batch.done:
        read = reader.read(batch, context)
        if read is None or not read.done:
            return
        batch = read
    if recount and not batch.complete:
        batch = results.recount(batch)
    if batch.complete:
        results.write(batch)
