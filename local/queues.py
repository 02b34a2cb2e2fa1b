"""Delivery from an SQS queue in moto to a function: the local stand-in for a Lambda event source.

EventBridge rules and S3 notifications both end in a queue (moto delivers to SQS targets itself); a loop
per queue long-polls it and hands each message to a small shared pool of daemon workers, so a slow
upstream in one invocation never holds up the others. A message is deleted after its invocation returns;
if the handler raises, the traceback is logged and the message comes back after a short delay, until its
third receive, after which it is dropped (like an async invocation's retries running out).
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from botocore.exceptions import ClientError

from .lambdas import Functions

log = logging.getLogger(__name__)

MAX_RECEIVES = 3
RETRY_DELAY_S = 2  # visibility after a failed invocation: redelivered a couple of seconds later
WAIT_TIME_S = 1  # long-poll length; also how quickly a loop notices stop()
MAX_BATCH = 10  # SQS's maximum per receive


class WorkerPool:
    """A fixed set of daemon threads (unlike concurrent.futures, a hung handler cannot block exit).

    Receive loops ask how many workers are free before receiving, and take one per message, so received
    messages never sit in memory while their visibility timeout runs, and no queue can starve another.
    """

    def __init__(self, size: int, stopping: threading.Event):
        self.size = size
        self._free = size
        self._cond = threading.Condition()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._stopping = stopping
        self._threads = [threading.Thread(target=self._run, name=f"local-worker-{i}", daemon=True)
                         for i in range(size)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_free(self) -> int:
        """How many workers are free, once at least one is (0 when stopping)."""
        with self._cond:
            while self._free == 0 and not self._stopping.is_set():
                self._cond.wait(0.5)
            return 0 if self._stopping.is_set() else self._free

    def submit(self, job: Callable[[], None]) -> bool:
        """Run `job` on the next free worker; False (not run) when stopping."""
        with self._cond:
            while self._free == 0:
                if self._stopping.is_set():
                    return False
                self._cond.wait(0.5)
            self._free -= 1
        self._jobs.put(job)
        return True

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - a worker must survive anything
                log.exception("delivery job failed")
            finally:
                with self._cond:
                    self._free += 1
                    self._cond.notify_all()

    def stop(self, timeout_s: float = 5.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=timeout_s / max(1, len(self._threads)))


@dataclass
class QueueSource:
    """One queue feeding one function. `to_event` turns a message body into the function's event (None: skip)."""

    name: str  # for logs: Function.EventName
    function: str
    queue_url: str
    visibility_timeout_s: int
    to_event: Callable[[dict[str, Any]], dict[str, Any] | None]
    failed: Callable[[Any], bool] = lambda _result: False  # an invocation's result that asks for a redelivery
    #: receives before the event is given up (None: never here, the queue's own redrive policy decides)
    max_receives: int | None = MAX_RECEIVES
    #: what becomes of an event given up (the function's on-failure destination); None: dropped
    on_give_up: Callable[[dict[str, Any], BaseException], None] | None = None


class QueueDelivery:
    """The receive loop of one queue (a daemon thread), invoking through the shared pool."""

    def __init__(self, source: QueueSource, sqs: Any, functions: Functions, pool: WorkerPool,
                 stopping: threading.Event):
        self.source = source
        self._sqs = sqs
        self._functions = functions
        self._pool = pool
        self._stopping = stopping
        self.thread = threading.Thread(target=self._loop, name=f"deliver-{source.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            free = self._pool.wait_free()
            if not free:
                return
            try:
                messages = self._sqs.receive_message(
                    QueueUrl=self.source.queue_url, MaxNumberOfMessages=min(MAX_BATCH, free),
                    WaitTimeSeconds=WAIT_TIME_S, VisibilityTimeout=self.source.visibility_timeout_s,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                ).get("Messages", [])
            except Exception:  # noqa: BLE001 - e.g. the moto server going away during stop
                if not self._stopping.is_set():
                    log.exception("%s: receive failed", self.source.name)
                    self._stopping.wait(1)
                continue
            for message in messages:
                if not self._pool.submit(functools.partial(self._deliver, message)):
                    return  # stopping: the message comes back when its visibility ends (moto stops too)

    def _deliver(self, message: dict[str, Any]) -> None:
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            event = self.source.to_event(json.loads(message["Body"]))
        except ValueError:
            log.error("%s: dropping a message that is not JSON", self.source.name)
            self._delete(message)
            return
        if event is None:
            self._delete(message)
            return
        try:
            if self.source.failed(self._functions.invoke(self.source.function, event)):
                raise RuntimeError("the function reported the message failed")
        except Exception as exc:  # noqa: BLE001 - a failed invocation is retried, not fatal
            if self.source.max_receives is not None and receives >= self.source.max_receives:
                log.exception("%s: invocation failed on receive %d; giving up on the event",
                              self.source.name, receives)
                if self.source.on_give_up is not None:
                    self.source.on_give_up(event, exc)
                self._delete(message)
            else:
                log.exception("%s: invocation failed on receive %d; retrying in %d s",
                              self.source.name, receives, RETRY_DELAY_S)
                self._retry_soon(message)
            return
        self._delete(message)

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self._sqs.delete_message(QueueUrl=self.source.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except ClientError as exc:  # e.g. the receipt expired; a redelivery is harmless (handlers are idempotent)
            log.warning("%s: could not delete a delivered message: %s", self.source.name, exc)
        except Exception:  # noqa: BLE001 - moto gone during stop
            if not self._stopping.is_set():
                raise

    def _retry_soon(self, message: dict[str, Any]) -> None:
        try:
            self._sqs.change_message_visibility(QueueUrl=self.source.queue_url,
                                                ReceiptHandle=message["ReceiptHandle"],
                                                VisibilityTimeout=RETRY_DELAY_S)
        except Exception:  # noqa: BLE001 - it then comes back when the receive's visibility ends
            log.warning("%s: could not shorten the retry delay", self.source.name)
