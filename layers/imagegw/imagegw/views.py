"""The public shapes of the API: the task object and the OpenAI Images response, built from a task."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import storage
from .tasks import Task


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def task_object(task: Task) -> dict[str, Any]:
    """The task object (README "The API"), with presigned URLs of the stored images."""
    obj = task_object_base(task)
    if task.status == "succeeded":
        obj["data"] = [_image_entry(image) for image in task.images]
    if task.reference is not None:
        obj["reference"] = task.reference
    if task.request_id:
        obj["request_id"] = task.request_id
    if task.webhook:
        obj["webhook"] = webhook_state(task)
    return obj


def task_object_base(task: Task) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": task.id,
        "task_id": task.id,
        "object": "image.task",
        "status": task.status,
        "progress": 100 if task.status == "succeeded" else int(task.progress),
        "model": task.model,
        "created_at": _seconds(task.created_at),
        "updated_at": _seconds(task.updated_at),
    }
    if task.status == "queued" and task.waiting_for:  # back in line for a provider's capacity (see `pacing`)
        obj["waiting_for"] = task.waiting_for
        if task.queue_position is not None:
            obj["queue_position"] = int(task.queue_position)
        if task.next_check_at and task.waiting_for != "capacity":  # a slot comes by hand-over, not at a time
            obj["next_attempt_at"] = _seconds(task.next_check_at)
    if task.completed_at:
        obj["completed_at"] = _seconds(task.completed_at)
    if task.usage:
        obj["usage"] = task.usage
    if task.error:
        obj["error"] = task.error
    return obj


def webhook_state(task: Task) -> dict[str, Any]:
    """Where the task's webhook delivery stands: `{url, status, attempts, last_error}`, status one of waiting
    (the task is not finished), pending (due or retrying), delivered, failed (given up) or skipped (cancelled)."""
    status = task.webhook_status
    last_error = task.webhook_error
    if status not in (None, "pending", "delivered", "failed"):  # written before `failed`: the reason itself
        status, last_error = "failed", last_error or status
    if status is None:
        status = "waiting" if not task.terminal else "skipped" if task.status == "cancelled" else "pending"
    return {"url": task.webhook, "status": status, "attempts": int(task.webhook_attempts or 0),
            "last_error": last_error}


def event_task(task: Task) -> dict[str, Any]:
    """The task as lifecycle events and webhooks carry it: S3 URIs, not presigned URLs (they would expire)."""
    obj = {k: v for k, v in task_object_base(task).items()}
    if task.status == "succeeded":
        bucket = storage.bucket()
        obj["data"] = [{"s3_uri": f"s3://{bucket}/{image['key']}", "content_type": image.get("content_type"),
                        **({"revised_prompt": image["revised_prompt"]} if image.get("revised_prompt") else {})}
                       for image in task.images]
    if task.reference is not None:
        obj["reference"] = task.reference
    return obj


def images_response(task: Task, response_format: str) -> dict[str, Any]:
    """The OpenAI Images answer for a succeeded task; b64_json is read back from our stored copy."""
    data = [_image_entry(image) for image in task.images]
    if response_format == "b64_json":
        with ThreadPoolExecutor(max_workers=4) as pool:
            for entry, b64 in zip(data, pool.map(lambda image: storage.read_base64(image["key"]), task.images),
                                  strict=True):
                entry["b64_json"] = b64
    body: dict[str, Any] = {"created": _seconds(task.created_at), "data": data}
    if task.usage:
        body["usage"] = task.usage
    return body


def _image_entry(image: dict[str, Any]) -> dict[str, Any]:
    entry = {"url": storage.presigned_url(image["key"])}
    if image.get("revised_prompt"):
        entry["revised_prompt"] = image["revised_prompt"]
    return entry
