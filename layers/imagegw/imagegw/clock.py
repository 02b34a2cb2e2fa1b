"""The gateway's one clock: milliseconds since the epoch, for leases, checks, deadlines and retries.

Every module that schedules or compares times asks `now_ms()` here rather than reading the time itself, so
that the whole gateway moves together when a test moves the clock (`use`): a lease, the sweep index and a
task's deadline never disagree about what time it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


_source: Callable[[], int] = _system_ms


def now_ms() -> int:
    return _source()


@contextmanager
def use(source: Callable[[], int]) -> Iterator[Callable[[], int]]:
    """Read the time from `source` (a callable returning epoch milliseconds) until the block ends. One clock
    for every thread: workers a test runs in threads see the same time as the test."""
    global _source
    previous, _source = _source, source
    try:
        yield source
    finally:
        _source = previous
