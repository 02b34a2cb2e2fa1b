"""The sync contract: what a plain sync `POST /v1/images/generations` (no `Prefer`, no `?async`) gets.

OpenAI SDKs only speak sync, and read any 2xx as an images response. So a plain sync request gets its images
(200) or an error, never a task object:

- **Fast path.** The request's own invocation runs its task: `tasks.create(claimed_for_s=)` (one put), the upstream
  call, one S3 put per image (URL answers are downloaded right there), one update to finish, one lifecycle
  event. Nothing goes over the bus and nothing reads the table while the work runs. An upstream call that is
  running is never abandoned: Lambda keeps the invocation going even after API Gateway's integration timeout
  has answered the client, so the task finishes whatever the client saw.
- **Not in time.** When the answer cannot come in time, the client gets 504 `generation_in_progress` naming
  the task, with `x-should-retry: true`, `retry-after-ms` and `Retry-After`: the SDKs wait and send the
  request again by themselves. The function answers so itself when it is waiting (an async upstream, a
  re-attached retry) past `SYNC_WAIT_S`; API Gateway answers the same for it when the invocation is busy past
  the integration timeout (template.yaml, `GatewayResponses`): the task id derives from the request
  (`tasks.sync_task_id`), so that answer names it too.
- **Re-attach.** A retry (the SDKs' `x-stainless-retry-count` >= 1) with the same key and the same body finds
  the task its first attempt started (live, or finished within REATTACH_WINDOW_S) and waits on it instead of
  generating again. An explicit `Idempotency-Key` keeps its own protocol, and wins.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Mapping
from typing import Any

from . import inputs, settings, tasks, worker
from .errors import ServerError
from .clock import now_ms
from .dialects import GENERATE
from .request import ImageRequest
from .tasks import Task

RETRY_HEADER = "x-stainless-retry-count"
REATTACH_WINDOW_S = 600  # a retry finds a task started (or finished) this recently
WAIT_POLL_S = (0.1, 0.2, 0.4, 0.5)  # a waiting request reads its task after these pauses, then every 0.5 s


def request_hash(request: ImageRequest, operation: str = GENERATE, form: inputs.Form | None = None) -> str:
    """The request as the client set it, hashed: the same body (fields in any order, the same files) gives the
    same hash; a generation's is what it was before edits existed."""
    fields: dict[str, Any] = request.model_dump(mode="json", exclude_unset=True)
    if operation != GENERATE:
        fields = {"fields": fields, "operation": operation, "files": file_digests(form)}
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_digests(form: inputs.Form | None) -> list[str]:
    """The input files, as digests in order (the mask last), for comparing requests."""
    if form is None:
        return []
    files = [*form.images, *([form.mask] if form.mask else [])]
    return [f"{file.field}:{hashlib.sha256(file.data).hexdigest()}" for file in files]


def job_fields(task_id: str, operation: str, form: inputs.Form | None) -> dict[str, Any]:
    """The task fields of an edit or a variation, its files put in the bucket first (before any upstream call,
    so every attempt and every route sends the same bytes); nothing for a generation."""
    if operation == GENERATE or form is None:
        return {}
    return {"operation": operation, "inputs": inputs.store(task_id, form)}


def is_retry(headers: Mapping[str, str]) -> bool:
    """Whether an SDK marked the request as a retry of an earlier attempt."""
    value = next((v for k, v in headers.items() if k.lower() == RETRY_HEADER), "")
    return value.strip().isascii() and value.strip().isdigit() and int(value.strip()) >= 1


def run(owner: str, request: ImageRequest, *, request_context: Mapping[str, Any], retried: bool,
        wait_until: float, operation: str = GENERATE, form: inputs.Form | None = None) -> Task:
    """The task of a plain sync request, ended or (past `wait_until`, a time.monotonic() value) still live."""
    digest = request_hash(request, operation, form)
    if retried:
        found = tasks.find_recent(owner, digest, since_ms=now_ms() - REATTACH_WINDOW_S * 1000)
        if found is not None and (not found.terminal or
                                  (found.completed_at or 0) >= now_ms() - REATTACH_WINDOW_S * 1000):
            return wait_for(found.id, wait_until)
    task_id = tasks.sync_task_id(dict(request_context)) or tasks.new_task_id()
    fields = {"webhook": request.webhook, "request_hash": digest, **job_fields(task_id, operation, form)}
    task = tasks.create(owner, request.model, request.upstream_fields(), task_id=task_id,
                        claimed_for_s=settings.current().worker_lease_s, **fields)
    if task is None:  # that id is taken (a replayed event): a fresh one, and its own copy of the files
        task_id = tasks.new_task_id()
        fields = {**fields, **job_fields(task_id, operation, form)}
        task = tasks.create(owner, request.model, request.upstream_fields(), task_id=task_id,
                            claimed_for_s=settings.current().worker_lease_s, **fields)
        if task is None:  # a new id is never taken
            raise ServerError("The task could not be stored.")
    ended = worker.run_claimed(task, wait_until=wait_until)
    if ended is not None and ended.terminal:
        return ended
    return wait_for(task.id, wait_until)  # an async upstream's task, or one cancelled meanwhile


def wait_for(task_id: str, wait_until: float) -> Task:
    """The task once it ended, or as it is at `wait_until`; an async upstream is checked as it comes due."""
    pauses = itertools.chain(WAIT_POLL_S, itertools.repeat(WAIT_POLL_S[-1]))  # quick at first: most waits are short
    while True:
        task = worker.poll_through(tasks.get(task_id))
        if task.terminal or time.monotonic() >= wait_until:
            return task
        time.sleep(min(next(pauses), max(0.0, wait_until - time.monotonic())))


def wait_bound_s() -> float:
    """How long a sync request waits on a task it does not run itself (`SYNC_WAIT_S`, template SyncWaitSeconds)."""
    return settings.current().sync_wait_s

