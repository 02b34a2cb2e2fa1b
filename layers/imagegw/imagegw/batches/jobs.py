"""What the submit function calls for batch jobs: an S3 "Object Created" event under batches/ starts a batch,
and "Batch Continue" carries one on (reading further, or writing its results once every task has ended)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from .. import storage
from . import reader, record, results
from .reader import is_s3_event
from .record import BATCH_CONTINUE, INPUT_PREFIX, BatchRecord

__all__ = ["BATCH_CONTINUE", "is_s3_event", "on_continue", "on_s3_event"]

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
