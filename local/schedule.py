"""The template's `Schedule` events: a timer thread per event invoking its function with a scheduled event.

The event has the shape of `sam local generate-event cloudwatch scheduled-event`. The interval defaults to
the template's `rate(...)`, but the local stack usually passes a shorter one (SWEEP_INTERVAL_S) so that
async work advances at development speed.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from datetime import datetime, timezone

from .lambdas import Functions
from .template import ACCOUNT_ID, ScheduleEvent

log = logging.getLogger(__name__)

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}
CRON_FALLBACK_S = 60.0


def rate_seconds(expression: str) -> float:
    """Seconds between runs for `rate(N unit)`; cron(...) runs every minute locally (the finest cron step)."""
    match = _RATE.match(expression.strip())
    if match:
        return float(int(match[1]) * _UNIT_S[match[2].rstrip("s")])
    if expression.strip().startswith("cron("):
        return CRON_FALLBACK_S
    raise ValueError(f"unsupported schedule expression: {expression!r}")


def scheduled_event(rule_arn: str, region: str) -> dict:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


class Timer:
    """Invokes one function every `interval_s` until stopped; one run at a time, errors logged, never fatal."""

    def __init__(self, schedule: ScheduleEvent, functions: Functions, *, rule_arn: str, region: str,
                 interval_s: float, stopping: threading.Event):
        self.schedule = schedule
        self.interval_s = interval_s
        self._functions = functions
        self._rule_arn = rule_arn
        self._region = region
        self._stopping = stopping
        self.thread = threading.Thread(target=self._loop, name=f"schedule-{schedule.event}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self._functions.invoke(self.schedule.function, scheduled_event(self._rule_arn, self._region))
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("%s.%s: scheduled invocation failed", self.schedule.function, self.schedule.event)
