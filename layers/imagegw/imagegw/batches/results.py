"""A finished batch's results file: `results/<name>.jsonl`, one line per input line, in input order.

Each line is `{"custom_id", "task_id", "status", "data", "error"}`. The tasks are read back 100 at a time and
the lines uploaded as they are made (multipart, at most two 5 MiB parts in memory), so a batch of any size
is written in bounded memory. A conditional claim on the record makes one writer win.

Result URLs: `url` is presigned for PRESIGN_EXPIRES_S (S3 caps presigned URLs at 7 days), so each line also
carries `s3_uri`, the durable reference; `GET /v1/images/tasks/{task_id}/images/{i}` with the event tenant's
key gives a fresh URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aws_lambda_powertools import Logger

from .. import storage, table, tasks
from . import record
from .record import BatchRecord

logger = Logger(child=True)

# Results are uploaded as they are made: at most 2 parts of 5 MiB (S3's smallest) in memory, whatever the size.
RESULTS_TRANSFER = storage.transfer_config(part_mib=5, in_memory_parts=2)
_READ_BACK = 100  # tasks read back per BatchGetItem (its limit)
_FIELDS = ["status", "images", "error", "custom_id"]


def write(batch: BatchRecord) -> bool:
    """Write the results once: claim the write on the record, stream the lines, mark the batch written."""
    if not record.claim_results(batch.id):
        return False
    storage.s3().upload_fileobj(Stream(_result_lines(batch)), batch.bucket, batch.results_key,
                                ExtraArgs={"ContentType": "application/jsonl"}, Config=RESULTS_TRANSFER)
    record.mark_results_written(batch.id)
    logger.info("batch results written", extra={"key": batch.results_key, "lines": batch.total})
    return True


def recount(batch: BatchRecord) -> BatchRecord:
    """Count the batch's finished tasks from the tasks themselves, for a count that fell behind (a lost ADD,
    a lost last event)."""
    finished = sum(1 for _, item in _tasks_of(batch) if item is not None and item.get("status") in tasks.TERMINAL)
    if finished <= batch.terminal:
        return batch
    logger.warning("batch count fell behind; recounted", extra={"counted": batch.terminal, "finished": finished})
    return record.count_at_least(batch.id, finished) or record.get(batch.id) or batch  # None: counted past it


def _tasks_of(batch: BatchRecord) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, its task as an item or None) for every line, in order, read back 100 tasks at a time."""
    total = batch.total or 0
    for first in range(1, total + 1, _READ_BACK):
        numbers = range(first, min(first + _READ_BACK, total + 1))
        found = table.get_many([batch.task_id(n) for n in numbers], attributes=_FIELDS)
        for n in numbers:
            yield n, found.get(batch.task_id(n))


def _result_lines(batch: BatchRecord) -> Iterator[bytes]:
    for n, item in _tasks_of(batch):
        yield (json.dumps(_result_line(batch, n, item), ensure_ascii=False) + "\n").encode()


def _result_line(batch: BatchRecord, n: int, item: dict[str, Any] | None) -> dict[str, Any]:
    task_id = batch.task_id(n)
    if item is None:
        missing = {"code": "task_missing", "type": "server_error", "message": f"The task of line {n} is missing."}
        return {"custom_id": None, "task_id": task_id, "status": "failed", "data": None, "error": missing}
    data = None
    if item.get("status") == "succeeded":
        data = [{"url": storage.presigned_url(image["key"]), "s3_uri": f"s3://{batch.bucket}/{image['key']}"}
                for image in item.get("images", [])]
    return {"custom_id": item.get("custom_id"), "task_id": task_id, "status": item.get("status"), "data": data,
            "error": item.get("error")}


class Stream:
    """A read()-able file over a generator of byte strings: the results are uploaded as they are made."""

    def __init__(self, parts: Iterator[bytes]):
        self._parts = parts
        self._buf = bytearray()  # grows in place: appending many short lines stays linear

    @property
    def buffered(self) -> int:
        """Bytes made but not yet read."""
        return len(self._buf)

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            part = next(self._parts, None)
            if part is None:
                break
            self._buf += part
        if size < 0 or size >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:size])
            del self._buf[:size]
        return out
