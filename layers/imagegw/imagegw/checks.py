"""Async checks scheduled per task: a task waiting on an async upstream is checked when its check is due, not at
the next sweep.

When a task starts waiting on an async upstream (or a check finds it still running), its next check is a time
(`next_check_at`, the backoff of `worker.CheckPolicy`). `schedule` sends the task id to the check queue (SQS,
CHECK_QUEUE) with that delay (SQS delays a message up to 15 minutes: a later check is left to the sweep), and the
queue's event source hands it to the poll function (`sweeper.handle`), which checks the task then. So a task nobody
polls is checked seconds after it is due rather than at the schedule's next minute, and the sweep stays the
safety net: a message lost, or one that could not be sent, leaves the check due in the sweep index, where the
next run finds it. A message delivered twice, or after a client's GET checked the task, finds the check made
(`worker.check_waiting` claims it with a minimum gap) and does nothing.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from . import clock, settings
from .observability import count

logger = Logger(child=True)

MAX_DELAY_S = 900  # SQS's longest message delay


@lru_cache(maxsize=1)
def _queue() -> tuple[Any, str] | None:
    """The SQS client and the check queue's URL (the template passes the URL; the local stack may pass a name)."""
    queue = settings.current().check_queue
    if not queue:
        return None
    sqs = boto3.client("sqs")
    url = queue if queue.startswith(("https://", "http://")) else sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    return sqs, url


def forget() -> None:
    """Forget the queue's client and URL (tests start each with a new account)."""
    _queue.cache_clear()


def schedule(task_id: str, at_ms: int) -> bool:
    """Have the task checked at `at_ms` (epoch ms) through the check queue; False when it is left to the sweep
    (no queue configured, due after SQS's longest delay, or the send failed: logged, never raised)."""
    delay_s = max(0, -(-(at_ms - clock.now_ms()) // 1000))  # rounded up: never before it is due
    if delay_s > MAX_DELAY_S:
        return False
    try:
        queue = _queue()
        if queue is None:
            return False
        sqs, url = queue
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"task_id": task_id}), DelaySeconds=int(delay_s))
    except Exception:  # noqa: BLE001 - the check stays due in the sweep index: the next sweep makes it
        logger.exception("could not schedule the task's check; the sweep will make it", extra={"task_id": task_id})
        count("ChecksNotScheduled")
        return False
    count("ChecksScheduled")
    return True
