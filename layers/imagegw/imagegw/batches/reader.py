"""Reading a batch object into tasks: the S3 event, the streamed read with its lease and checkpoints, the
hand-over to a next run, and one task per line.

Each input line is `{"custom_id": "...", "body": {<image request>}}`; the OpenAI Batch line shape
`{"custom_id", "method": "POST", "url": "/v1/images/generations", "body"}` is accepted too. Blank lines are
skipped (they are not lines of the batch). A bad line (not JSON, not an object, invalid request) becomes a
failed task with a clear error, so it still gets its result line and never sinks the batch.

The object is read streamed with a ranged GET from the record's `offset` (IfMatch the ETag: an overwritten
object is a new batch) by one run at a time (the record's reading lease). Every CHECKPOINT_LINES lines the
offset is saved, and when the run has read BATCH_LINES_PER_RUN lines or little time is left, it publishes
"Batch Continue" and the next submit run resumes there. Task ids derive from the record and the line number,
so re-reading a line creates nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from .. import bus, lifecycle, settings, storage, tasks
from ..capabilities import validate_routable
from ..errors import BadRequest, GatewayError
from ..request import load_json_object, parse_request
from . import record
from .record import BatchRecord

logger = Logger(child=True)

CHECKPOINT_LINES = 100
MAX_LINE_BYTES = 256 * 1024
MIN_REMAINING_MS = 60_000  # stop reading and hand over while this much of the run is left
READ_CHUNK = 64 * 1024


def lines_per_run() -> int:
    return settings.current().batch_lines_per_run


def is_s3_event(event: dict[str, Any]) -> bool:
    """An object created in a bucket: as S3 sends it to EventBridge (the template's trigger), or as a direct
    S3 notification (`Records`), which is accepted too."""
    if event.get("source") == "aws.s3":
        return event.get("detail-type") == "Object Created"
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and records[0].get("eventSource") == "aws:s3"


def created_objects(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, key, etag) of every object the event says was created."""
    if event.get("source") == "aws.s3":
        detail = event.get("detail") or {}
        obj = detail.get("object") or {}
        return [((detail.get("bucket") or {}).get("name", ""), str(obj.get("key", "")),
                 str(obj.get("etag") or obj.get("eTag") or "").strip('"'))]
    return [(rec["s3"]["bucket"]["name"],
             unquote_plus(rec["s3"]["object"]["key"]),  # S3 notifications URL-encode the key
             str(rec["s3"]["object"].get("eTag") or rec["s3"]["object"].get("etag") or "").strip('"'))
            for rec in event["Records"] if str(rec.get("eventName", "")).startswith("ObjectCreated")]


def read(batch: BatchRecord, context: Any) -> BatchRecord | None:
    """Create tasks for lines from the saved offset on; hand over to a new run before time runs out. The record
    once the whole object is read; None when another run is reading (it holds the lease) or this run handed
    over."""
    claimed = record.claim_reading(batch.id)
    if claimed is None:
        logger.info("another run is reading this batch")
        return None
    try:
        return _read_claimed(claimed, context)
    except Exception:
        record.release_reading(claimed.id)  # a retry of this event, or the sweep, can read on at once
        raise


def _read_claimed(batch: BatchRecord, context: Any) -> BatchRecord | None:
    offset, line_no, budget = batch.offset, batch.lines, lines_per_run()
    since_checkpoint = 0
    try:
        obj = storage.s3().get_object(Bucket=batch.bucket, Key=batch.key, Range=f"bytes={offset}-",
                                      **({"IfMatch": batch.etag} if batch.etag else {}))
        body, end_of_object = obj["Body"], offset + int(obj["ContentLength"])
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "InvalidRange":  # nothing (more) to read: an empty object, or read to its very end
            return _finish_reading(batch, offset, line_no)
        if code in ("PreconditionFailed", "NoSuchKey", "404"):
            logger.warning("batch object replaced or deleted; its new version is a batch of its own",
                           extra={"key": batch.key, "error": code})
            record.abandon(batch.id, f"The batch file was replaced or deleted ({code}) before it was read.")
            return None
        raise
    queued: list[str] = []  # tasks whose "Task Queued" is still to send: PutEvents takes 10 at a time

    def send_queued() -> None:
        bus.publish_all(bus.TASK_QUEUED, queued)
        queued.clear()

    try:
        for raw, end in _lines(body, offset):
            offset = end
            if raw is not None and not raw.strip():
                continue  # a blank line is not a line of the batch
            line_no += 1
            if task_id := accept_line(batch, line_no, raw):
                queued.append(task_id)
                if len(queued) >= bus.PUT_EVENTS_MAX:
                    send_queued()
            since_checkpoint += 1
            budget -= 1
            if since_checkpoint >= CHECKPOINT_LINES:
                send_queued()  # before the offset moves past their lines (a lost one waits for the sweep)
                record.checkpoint(batch.id, offset, line_no)
                since_checkpoint = 0
            if offset < end_of_object and (budget <= 0 or _time_left_ms(context) < MIN_REMAINING_MS):
                send_queued()
                record.checkpoint(batch.id, offset, line_no, hand_over=True)
                logger.info("batch continues in a new run", extra={"lines": line_no, "offset": offset})
                record.publish_continue(batch.id)
                return None
        send_queued()
    except Exception:
        if queued:  # tasks already created: start them now rather than at the sweep's next look
            send_queued()
        raise
    finally:
        body.close()
    return _finish_reading(batch, offset, line_no)


def _finish_reading(batch: BatchRecord, offset: int, lines: int) -> BatchRecord:
    done = record.finish_reading(batch.id, offset, lines)
    logger.info("batch read", extra={"lines": lines})
    return done


def _lines(body: Any, offset: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, byte offset after it) for each line; a line over MAX_LINE_BYTES comes as None, never buffered."""
    parts: list[bytes] = []
    pending = 0  # bytes of the current line seen so far (kept in `parts` unless it is too long)
    for chunk in body.iter_chunks(READ_CHUNK):
        start = 0
        while True:
            cut = chunk.find(b"\n", start)
            piece = chunk[start:] if cut < 0 else chunk[start:cut]
            pending += len(piece)
            if pending <= MAX_LINE_BYTES:
                parts.append(piece)
            else:
                parts = []
            if cut < 0:
                break
            offset += pending + 1
            yield (b"".join(parts) if pending <= MAX_LINE_BYTES else None), offset
            parts, pending, start = [], 0, cut + 1
    if pending:
        yield (b"".join(parts) if pending <= MAX_LINE_BYTES else None), offset + pending


def _time_left_ms(context: Any) -> int:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return int(getter()) if getter else 10**9


# -- one line, one task ----------------------------------------------------------------------------------------

def accept_line(batch: BatchRecord, line_no: int, raw: bytes | None) -> str | None:
    """One task for the line: queued (its id is returned, for "Task Queued"), or failed at once with what
    is wrong with the line (and announced as any failed task is). None too when the line's task exists
    already (a re-read).

    Ownership: batch tasks belong to the deployment's event tenant (`EVENT_TENANT`, as bus-requested tasks
    do); each task's `reference` is its `custom_id` (or `<name>#<line>` without one)."""
    custom_id, body = None, None
    try:
        try:
            custom_id, body = _parse_line(raw)
        except BadRequest:
            custom_id = _salvage_custom_id(raw)
            raise
        req = parse_request(body)
        validate_routable(req)
    except GatewayError as exc:
        model = str(body.get("model", "unknown")) if isinstance(body, dict) else "unknown"
        failed = tasks.create(settings.current().event_tenant, model or "unknown",
                              body if isinstance(body, dict) else {}, failed_with=exc.task_error(),
                              **_line_fields(batch, line_no, custom_id))
        if failed is not None:  # None: this line's task exists (a re-read)
            lifecycle.ended(failed)  # "Image Task Failed", and the batch's count
        return None
    task = tasks.create(settings.current().event_tenant, req.model, req.upstream_fields(), webhook=req.webhook,
                        **_line_fields(batch, line_no, custom_id))
    return task.id if task is not None else None


def _line_fields(batch: BatchRecord, line_no: int, custom_id: str | None) -> dict[str, Any]:
    return {"task_id": batch.task_id(line_no), "batch": batch.id, "line": line_no, "custom_id": custom_id,
            "reference": custom_id or f"{batch.key}#{line_no}"}


def _parse_line(raw: bytes | None) -> tuple[str | None, Any]:
    """(custom_id, request body) of a line; raises BadRequest with what is wrong with it."""
    if raw is None:
        raise BadRequest(f"The line is longer than {MAX_LINE_BYTES} bytes.", code="line_too_long")
    try:  # the API's own checks: one object, bounded depth, no lone surrogates, no overlong numbers
        line = load_json_object(raw.decode("utf-8"))
    except (BadRequest, UnicodeDecodeError) as exc:
        detail = f" ({exc.message})" if isinstance(exc, BadRequest) and exc.param else ""
        raise BadRequest("The line is not valid JSON: each line must be a JSON object {\"custom_id\", \"body\"}"
                         f"{detail}.", code="invalid_json") from None
    custom_id = line.get("custom_id")
    custom_id = None if custom_id is None else str(custom_id)[:512]
    if "method" in line and str(line["method"]).upper() != "POST":
        raise BadRequest(f"Invalid 'method': {line['method']!r}; batch lines must be POST.", param="method")
    if "url" in line and str(line["url"]).rstrip("/") not in ("/v1/images/generations", "/images/generations"):
        raise BadRequest(f"Invalid 'url': {line['url']!r}; only /v1/images/generations is supported.", param="url")
    if not isinstance(line.get("body"), dict):
        raise BadRequest("The line must carry `body`: an image request object.", param="body")
    return custom_id, line["body"]


def _salvage_custom_id(raw: bytes | None) -> str | None:
    """The custom_id of a line refused for its body, so its result line still says which it was."""
    try:
        line = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(line, dict) or line.get("custom_id") is None:
        return None
    return str(line["custom_id"])[:512].encode("utf-8", "replace").decode("utf-8")  # a lone surrogate -> ?
