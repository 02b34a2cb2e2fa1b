"""What happens when a task ends, whichever path ended it: a worker's stage, the sweep giving up, a cancel, a
request that came invalid over the bus or in a batch file.

`ended(task)` does it all, once per task (its caller is whoever made the write that ended it):

- metrics: TasksSucceeded / TasksFailed / TasksCancelled, and ImagesStored / ImageBytesStored (what a
  succeeded task keeps in the bucket);
- the images of a task that did not succeed are removed (the bucket keeps succeeded tasks' images only);
- the lifecycle event a team's own rules can match ("Image Task Succeeded" / "Image Task Failed"; a cancel
  was the caller's own doing);
- its webhook's first delivery, when it asked for one (`webhooks.schedule`);
- its batch's count, when it came from a batch file (`batches.record.task_ended`), which has the batch's
  results written after its last task;
- its place in a provider's line, when it ends while waiting there (cancelled, or failed by its deadline), so
  that no freed slot is handed to it (`pacing.leave_line`).

Each of these is a notification about a task that is already final and readable: one that fails is logged
and the others still happen (the sweep index re-drives webhooks and batches whose step was lost).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from . import bus, pacing, storage, views, webhooks
from .batches import record as batch_record
from .observability import count
from .tasks import Task

logger = Logger(child=True)

_EVENTS = {"succeeded": bus.TASK_SUCCEEDED, "failed": bus.TASK_FAILED}


def ended(task: Task) -> None:
    """A task reached a terminal status: count it, clean up after it and tell whoever waits on it."""
    count(f"Tasks{task.status.capitalize()}")
    if task.status == "failed":  # every failure, whichever stage or path ended it (messages are scrubbed)
        logger.info("task failed", extra={"task_id": task.id, "code": (task.error or {}).get("code"),
                                           "error": (task.error or {}).get("message")})
    if task.status == "succeeded":
        count("ImagesStored", len(task.images))
        count("ImageBytesStored", sum(int(image.get("size") or 0) for image in task.images))
    else:
        try:
            storage.discard_images(task.id)
        except Exception:  # noqa: BLE001 - the task is final either way; the bucket's lifecycle rule expires them
            logger.exception("could not remove the images of an unsucceeded task", extra={"task_id": task.id})
    try:
        if task.status in _EVENTS:
            bus.publish_detail(_EVENTS[task.status], views.event_task(task))
    except Exception:  # noqa: BLE001 - the task itself is final and readable; the event is a notification
        logger.exception("could not publish the lifecycle event", extra={"task_id": task.id})
    try:
        webhooks.schedule(task)
    except Exception:  # noqa: BLE001 - the sweep publishes it when its check comes due
        logger.exception("could not queue or publish Webhook Due", extra={"task_id": task.id})
    if task.waiting_on and task.status != "succeeded":
        try:
            pacing.leave_line(task.waiting_on, task.id)
        except Exception:  # noqa: BLE001 - a wake that finds it ended passes the slot on (worker.submit_queued)
            logger.exception("could not take the task out of its provider's line", extra={"task_id": task.id})
    try:
        batch_record.task_ended(task)  # a batch's task: count it, and have the batch finished after its last
    except Exception:  # noqa: BLE001 - the task is final either way; a lost count leaves the batch to the sweep
        logger.exception("could not count the task on its batch", extra={"task_id": task.id})
