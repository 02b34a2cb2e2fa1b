"""The gateway's one clock: milliseconds since the epoch, for leases, checks, deadlines and retries.

Every module that schedules or compares times asks `now_ms()` here rather than reading the time itself, so
that the whole gateway moves together when a test moves the clock (`use`): a lease, the sweep index and a
task's deadline never disagree about what time it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .seam import Seam


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


_source: Seam[Callable[[], int]] = Seam(_system_ms)
#: read the time from another source (a callable returning epoch milliseconds) until the block ends
use = _source.use


def now_ms() -> int:
    return _source.current()
