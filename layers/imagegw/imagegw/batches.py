"""Batch jobs from S3: `batches/<name>.jsonl` in the image bucket -> one task per line -> `results/<name>.jsonl`.

Each input line is `{"custom_id": "...", "body": {<image request>}}`; the OpenAI Batch line shape
`{"custom_id", "method": "POST", "url": "/v1/images/generations", "body"}` is accepted too. Blank lines are
skipped (they are not lines of the batch). A bad line (not JSON, not an object, invalid request) becomes a
failed task with a clear error, so it still gets its result line and never sinks the batch.

Ownership: batch tasks belong to the deployment's event tenant (`EVENT_TENANT`, as bus-requested tasks do);
each task's `reference` is its `custom_id` (or `<name>#<line>` without one).

State: one batch record in the task table, id `batch#<hash of bucket, key, ETag>` (no `owner`: listings
never see it) holding the byte `offset` and the number of `lines` read so far, `done`/`total` once the whole
object is read, and `terminal`, a counter of finished tasks. The object is read streamed with a ranged GET
from `offset` (IfMatch the ETag: an overwritten object is a new batch) by one run at a time (`read_lease`);
every `CHECKPOINT_LINES` lines the offset is saved, and when the run has read `BATCH_LINES_PER_RUN` lines or
little time is left, it publishes "Batch Continue" and the next submit run resumes there. Task ids derive
from the record and the line number, so re-reading a line (a redelivered S3 event, a crashed run) creates
nothing twice.

Completion: every task that ends is announced (worker.announce), which calls `task_terminal`: an atomic ADD
on the record. When `terminal` reaches `total`, "Batch Continue" asks the submit function (it may write the
bucket) to write the results: one line per input line, in input order, read back 100 tasks at a time and
uploaded as a stream. A conditional claim on the record makes one writer win.

Nothing lost: until its results are written the record sits in the sweep index (partition `batch`), checked
every BATCH_CHECK_S. A due batch gets a "Batch Continue" from the schedule with `check: true`: a reader
that died (or whose hand-over event was lost) is taken over once its lease has run out, and a batch whose
count fell behind (a lost ADD, a lost last event) is recounted from its tasks and finished.

Result URLs: `url` is presigned for PRESIGN_EXPIRES_S (S3 caps presigned URLs at 7 days), so each line also
carries `s3_uri`, the durable reference; `GET /v1/images/tasks/{task_id}/images/{i}` with the event tenant's
key gives a fresh URL.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from . import bus, settings, storage, table, tasks
from .capabilities import validate_routable
from .clock import now_ms
from .errors import BadRequest, GatewayError
from .request import load_json_object, parse_request
from .tasks import Task

logger = Logger(child=True)

BATCH_CONTINUE = "Batch Continue"
INPUT_PREFIX = "batches/"
RESULTS_PREFIX = "results/"
CHECKPOINT_LINES = 100
MAX_LINE_BYTES = 256 * 1024
MIN_REMAINING_MS = 60_000  # stop reading and hand over while this much of the run is left
RESULTS_LEASE_MS = 600_000
READ_LEASE_MS = 900_000  # longer than the submit function's timeout: a live reader always holds it
SWEEP_PARTITION = "batch"  # unfinished batches in the sweep index
_READ_CHUNK = 64 * 1024
# Results are uploaded as they are made: at most 2 parts of 5 MiB (S3's smallest) in memory, whatever the size.
RESULTS_TRANSFER = storage.transfer_config(part_mib=5, in_memory_parts=2)


def lines_per_run() -> int:
    return settings.current().batch_lines_per_run


def _check_after_ms() -> int:
    """How long an unfinished batch waits before the sweep looks at it."""
    return settings.current().batch_check_s * 1000


def _tenant() -> str:
    return settings.current().event_tenant


def record_id(bucket: str, key: str, etag: str) -> str:
    return "batch#" + hashlib.sha256(f"{bucket}/{key}#{etag}".encode()).hexdigest()[:24]


def task_id_for(batch: dict[str, Any], line: int) -> str:
    """Time-ordered like every task id (the batch's start, then the line number), the same on every re-read."""
    return tasks.task_id(int(batch["base_ns"]) // 1_000_000, f"{line:08d}{batch['id'][6:14]}")


def results_key(key: str) -> str:
    return RESULTS_PREFIX + key[len(INPUT_PREFIX):] if key.startswith(INPUT_PREFIX) else RESULTS_PREFIX + key


# -- entry points ---------------------------------------------------------------------------------------

def is_s3_event(event: dict[str, Any]) -> bool:
    """An object created in a bucket: as S3 sends it to EventBridge (the template's trigger), or as a direct
    S3 notification (`Records`), which is accepted too."""
    if event.get("source") == "aws.s3":
        return event.get("detail-type") == "Object Created"
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and records[0].get("eventSource") == "aws:s3"


def _created_objects(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, key, etag) of every object the event says was created."""
    if event.get("source") == "aws.s3":
        detail = event.get("detail") or {}
        obj = detail.get("object") or {}
        return [((detail.get("bucket") or {}).get("name", ""), str(obj.get("key", "")),
                 str(obj.get("etag") or obj.get("eTag") or "").strip('"'))]
    return [(record["s3"]["bucket"]["name"],
             unquote_plus(record["s3"]["object"]["key"]),  # S3 notifications URL-encode the key
             str(record["s3"]["object"].get("eTag") or record["s3"]["object"].get("etag") or "").strip('"'))
            for record in event["Records"] if str(record.get("eventName", "")).startswith("ObjectCreated")]


def on_s3_event(event: dict[str, Any], context: Any) -> None:
    """An object created under batches/: start (or, on redelivery, harmlessly resume) its batch."""
    for bucket, key, etag in _created_objects(event):
        if bucket != storage.bucket() or not key.startswith(INPUT_PREFIX):
            logger.warning("ignoring an object outside the batch prefix", extra={"bucket": bucket, "key": key})
            continue
        batch = _start(bucket, key, etag)
        logger.append_keys(batch_id=batch["id"])
        _run(batch, context)


def on_continue(event: dict[str, Any], context: Any) -> None:
    """"Batch Continue": read on from the saved offset, or write the results of a finished batch. From the
    sweep (`check`), a batch that is read but not complete is recounted first."""
    detail = event.get("detail") or {}
    batch = _get(detail.get("batch_id", ""))
    if batch is None:
        logger.warning("no such batch", extra={"detail": detail})
        return
    logger.append_keys(batch_id=batch["id"])
    _run(batch, context, recount=bool(detail.get("check")))


def due_for_check(batch_id: str) -> bool:
    """The sweep found the batch due: push its next check back; False if another sweep took it meanwhile."""
    now = now_ms()
    return table.update_if(batch_id, UpdateExpression="SET next_check_at = :next",
                           ConditionExpression="next_check_at <= :now",
                           ExpressionAttributeValues={":now": now, ":next": now + _check_after_ms()}) is not None


def task_terminal(task: Task) -> None:
    """Called by worker.announce for every task that ended: count it on its batch, finish the batch."""
    if not task.batch:
        return
    batch = table.update(task.batch, UpdateExpression="ADD terminal :one", ExpressionAttributeValues={":one": 1},
                         ConditionExpression="attribute_exists(id)", ReturnValues="ALL_NEW")
    if _complete(batch):
        _publish_continue(batch["id"])  # the submit function writes the results (it may write the bucket)


# -- reading ---------------------------------------------------------------------------------------------

def _start(bucket: str, key: str, etag: str) -> dict[str, Any]:
    batch = {"id": record_id(bucket, key, etag), "kind": "batch", "bucket": bucket, "key": key, "etag": etag,
             "results_key": results_key(key), "offset": 0, "lines": 0, "terminal": 0, "done": False,
             "base_ns": time.time_ns(), "created_at": now_ms(), "expires_at": table.retention_expiry(),
             "sweep": SWEEP_PARTITION, "next_check_at": now_ms() + _check_after_ms()}
    if table.put_if_absent(batch):
        logger.info("batch started", extra={"batch_id": batch["id"], "key": key})
        return batch
    return _get(batch["id"])  # a redelivered event: resume from what was saved


def _get(batch_id: str) -> dict[str, Any] | None:
    if not batch_id.startswith("batch#"):
        return None
    return table.get(batch_id)


def _run(batch: dict[str, Any], context: Any, *, recount: bool = False) -> None:
    if batch.get("results_written") or batch.get("abandoned"):
        return
    if not batch["done"]:
        batch = _read(batch, context)
        if batch is None or not batch["done"]:
            return
    if recount and not _complete(batch):
        batch = _recount(batch)
    if _complete(batch):
        write_results(batch)


def _read(batch: dict[str, Any], context: Any) -> dict[str, Any] | None:
    """Create tasks for lines from the saved offset on; hand over to a new run before time runs out.
    None when another run is reading (it holds the lease) or this run handed over."""
    batch = _claim_reading(batch["id"])
    if batch is None:
        logger.info("another run is reading this batch")
        return None
    try:
        return _read_claimed(batch, context)
    except Exception:
        _release_reading(batch)  # a retry of this event, or the sweep, can read on at once
        raise


def _read_claimed(batch: dict[str, Any], context: Any) -> dict[str, Any] | None:
    offset, line_no, budget = int(batch["offset"]), int(batch["lines"]), lines_per_run()
    since_checkpoint = 0
    try:
        obj = storage.s3().get_object(Bucket=batch["bucket"], Key=batch["key"], Range=f"bytes={offset}-",
                                      **({"IfMatch": batch["etag"]} if batch["etag"] else {}))
        body, end_of_object = obj["Body"], offset + int(obj["ContentLength"])
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "InvalidRange":  # nothing (more) to read: an empty object, or read to its very end
            return _finish_reading(batch, offset, line_no)
        if code in ("PreconditionFailed", "NoSuchKey", "404"):
            logger.warning("batch object replaced or deleted; its new version is a batch of its own",
                           extra={"key": batch["key"], "error": code})
            _abandon(batch, f"The batch file was replaced or deleted ({code}) before it was read.")
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
            if task_id := _accept_line(batch, line_no, raw):
                queued.append(task_id)
                if len(queued) >= bus.PUT_EVENTS_MAX:
                    send_queued()
            since_checkpoint += 1
            budget -= 1
            if since_checkpoint >= CHECKPOINT_LINES:
                send_queued()  # before the offset moves past their lines (a lost one waits for the sweep)
                _checkpoint(batch, offset, line_no)
                since_checkpoint = 0
            if offset < end_of_object and (budget <= 0 or _time_left_ms(context) < MIN_REMAINING_MS):
                send_queued()
                _checkpoint(batch, offset, line_no, hand_over=True)
                logger.info("batch continues in a new run", extra={"lines": line_no, "offset": offset})
                _publish_continue(batch["id"])
                return None
        send_queued()
    except Exception:
        if queued:  # tasks already created: start them now rather than at the sweep's next look
            send_queued()
        raise
    finally:
        body.close()
    return _finish_reading(batch, offset, line_no)


def _lines(body: Any, offset: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, byte offset after it) for each line; a line over MAX_LINE_BYTES comes as None, never buffered."""
    parts: list[bytes] = []
    pending = 0  # bytes of the current line seen so far (kept in `parts` unless it is too long)
    for chunk in body.iter_chunks(_READ_CHUNK):
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


def _claim_reading(batch_id: str) -> dict[str, Any] | None:
    """Take the reading lease (one reader at a time); the record as it is now, or None if it is held."""
    now = now_ms()
    return table.update_if(
        batch_id, UpdateExpression="SET read_lease = :until, next_check_at = :until",
        ConditionExpression="done = :no AND (attribute_not_exists(read_lease) OR read_lease < :now)",
        ExpressionAttributeValues={":no": False, ":now": now, ":until": now + READ_LEASE_MS}, ReturnValues="ALL_NEW")


def _release_reading(batch: dict[str, Any]) -> None:
    try:
        table.update(batch["id"], UpdateExpression="REMOVE read_lease")
    except ClientError:
        logger.exception("could not release the reading lease; it runs out by itself")


def _checkpoint(batch: dict[str, Any], offset: int, lines: int, *, hand_over: bool = False) -> None:
    """Save progress, only ever forward; on hand-over also give the reading lease back."""
    expr, values = "SET #o = :o, #l = :l", {":o": offset, ":l": lines}
    if hand_over:
        expr = "SET #o = :o, #l = :l, next_check_at = :next REMOVE read_lease"
        values[":next"] = now_ms() + _check_after_ms()
    table.update_if(batch["id"], UpdateExpression=expr, ConditionExpression="#o <= :o",
                    ExpressionAttributeNames={"#o": "offset", "#l": "lines"}, ExpressionAttributeValues=values)


def _finish_reading(batch: dict[str, Any], offset: int, lines: int) -> dict[str, Any]:
    done = table.update(
        batch["id"],
        UpdateExpression="SET #o = :o, #l = :l, #t = :l, done = :yes, next_check_at = :next REMOVE read_lease",
        ExpressionAttributeNames={"#o": "offset", "#l": "lines", "#t": "total"},
        ExpressionAttributeValues={":o": offset, ":l": lines, ":yes": True, ":next": now_ms() + _check_after_ms()},
        ReturnValues="ALL_NEW")
    logger.info("batch read", extra={"lines": lines})
    return done


def _abandon(batch: dict[str, Any], reason: str) -> None:
    """A batch that cannot go on leaves the sweep index, with the reason on its record."""
    table.update(batch["id"], UpdateExpression="SET abandoned = :why REMOVE sweep, next_check_at, read_lease",
                 ExpressionAttributeValues={":why": reason})


def _time_left_ms(context: Any) -> int:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return int(getter()) if getter else 10**9


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


def _accept_line(batch: dict[str, Any], line_no: int, raw: bytes | None) -> str | None:
    """One task for the line: queued (its id is returned, for "Task Queued"), or failed at once with what
    is wrong with the line. None too when the line's task exists already (a re-read)."""
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
        failed = tasks.create(_tenant(), model or "unknown", body if isinstance(body, dict) else {},
                              failed_with=exc.task_error(), **_line_fields(batch, line_no, custom_id))
        if failed is not None:  # None: this line's task exists (a re-read)
            from . import worker  # late: worker imports this module

            worker.announce(failed)  # "Image Task Failed", and the batch's terminal count
        return None
    task = tasks.create(_tenant(), req.model, req.upstream_fields(), webhook=req.webhook,
                        **_line_fields(batch, line_no, custom_id))
    return task.id if task is not None else None


def _line_fields(batch: dict[str, Any], line_no: int, custom_id: str | None) -> dict[str, Any]:
    return {"task_id": task_id_for(batch, line_no), "batch": batch["id"], "line": line_no, "custom_id": custom_id,
            "reference": custom_id or f"{batch['key']}#{line_no}"}


def _salvage_custom_id(raw: bytes | None) -> str | None:
    """The custom_id of a line refused for its body, so its result line still says which it was."""
    try:
        line = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(line, dict) or line.get("custom_id") is None:
        return None
    return str(line["custom_id"])[:512].encode("utf-8", "replace").decode("utf-8")  # a lone surrogate -> ?


def _publish_continue(batch_id: str) -> None:
    bus.publish_detail(BATCH_CONTINUE, {"batch_id": batch_id})


# -- results ---------------------------------------------------------------------------------------------

def _complete(batch: dict[str, Any]) -> bool:
    return bool(batch.get("done")) and int(batch.get("terminal", 0)) >= int(batch.get("total", -1)) \
        and not batch.get("results_written")


def write_results(batch: dict[str, Any]) -> bool:
    """Write results/<name>.jsonl once: claim the write on the record, stream the lines, mark it written."""
    now = now_ms()
    claimed = table.update_if(
        batch["id"], UpdateExpression="SET results_lease = :until",
        ConditionExpression="done = :yes AND terminal >= #t AND attribute_not_exists(results_written) AND "
                            "(attribute_not_exists(results_lease) OR results_lease < :now)",
        ExpressionAttributeNames={"#t": "total"},
        ExpressionAttributeValues={":yes": True, ":now": now, ":until": now + RESULTS_LEASE_MS})
    if claimed is None:
        return False
    storage.s3().upload_fileobj(_Stream(_result_lines(batch)), batch["bucket"], batch["results_key"],
                                ExtraArgs={"ContentType": "application/jsonl"}, Config=RESULTS_TRANSFER)
    table.update(batch["id"], UpdateExpression="SET results_written = :now REMOVE sweep, next_check_at",
                 ExpressionAttributeValues={":now": now_ms()})
    logger.info("batch results written", extra={"key": batch["results_key"], "lines": batch["total"]})
    return True


def _recount(batch: dict[str, Any]) -> dict[str, Any]:
    """Count the batch's finished tasks from the tasks themselves, for a count that fell behind."""
    total, finished = int(batch["total"]), 0
    for first in range(1, total + 1, 100):
        found = _get_many([task_id_for(batch, n) for n in range(first, min(first + 100, total + 1))])
        finished += sum(1 for item in found.values() if item.get("status") in tasks.TERMINAL)
    if finished <= int(batch.get("terminal", 0)):
        return batch
    logger.warning("batch count fell behind; recounted", extra={"counted": batch.get("terminal"), "finished": finished})
    recounted = table.update_if(batch["id"], UpdateExpression="SET terminal = :n", ConditionExpression="terminal < :n",
                                ExpressionAttributeValues={":n": finished}, ReturnValues="ALL_NEW")
    return recounted or _get(batch["id"]) or batch  # None: counted past it meanwhile


def _result_lines(batch: dict[str, Any]) -> Iterator[bytes]:
    total = int(batch["total"])
    bucket = batch["bucket"]
    for first in range(1, total + 1, 100):
        ids = [task_id_for(batch, n) for n in range(first, min(first + 100, total + 1))]
        found = _get_many(ids)
        for n, task_id in zip(range(first, first + len(ids)), ids):
            item = found.get(task_id)
            if item is None:
                line = {"custom_id": None, "task_id": task_id, "status": "failed", "data": None,
                        "error": {"code": "task_missing", "type": "server_error",
                                  "message": f"The task of line {n} is missing."}}
            else:
                data = None
                if item.get("status") == "succeeded":
                    data = [{"url": storage.presigned_url(image["key"]), "s3_uri": f"s3://{bucket}/{image['key']}"}
                            for image in item.get("images", [])]
                line = {"custom_id": item.get("custom_id"), "task_id": task_id, "status": item.get("status"),
                        "data": data, "error": item.get("error")}
            yield (json.dumps(line, ensure_ascii=False) + "\n").encode()


def _get_many(ids: list[str]) -> dict[str, dict[str, Any]]:
    return table.get_many(ids, attributes=["status", "images", "error", "custom_id"])


class _Stream:
    """A read()-able file over a generator of byte strings: the results are uploaded as they are made."""

    def __init__(self, parts: Iterator[bytes]):
        self._parts = parts
        self._buf = bytearray()  # grows in place: appending many short lines stays linear

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
