"""Live progress and bounded polling.

On a terminal, one line rewritten in place (`\\r`); otherwise (a pipe, a log, CI) one line per change, so
logs stay readable. Polling waits 0.5 s at first, growing by half each time up to a ceiling, until a
deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self._last: str | None = None
        self._width = 0

    def show(self, line: str) -> None:
        """Show the current state; on a non-terminal only when it changed."""
        if line == self._last:
            return
        self._last = line
        if self.tty:
            pad = " " * max(0, self._width - len(line))
            self.stream.write("\r" + line + pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the updating line (on a terminal), so what follows starts on a line of its own."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0


def task_line(task: dict) -> str:
    """`imgtask_…  in_progress   45%`"""
    return f"{task.get('id', '?')}  {task.get('status', '?'):<11} {int(task.get('progress') or 0):>3}%"


def intervals(first: float = 0.5, ceiling: float = 2.0, factor: float = 1.5) -> Iterator[float]:
    """0.5, 0.75, 1.125, ... up to `ceiling`, then `ceiling` for ever."""
    wait = first
    while True:
        yield wait
        wait = min(ceiling, wait * factor)


def poll[T](read: Callable[[], T], done: Callable[[T], bool], timeout_s: float, *,
            sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
            ceiling: float = 2.0) -> tuple[T, bool]:
    """Call `read` until `done(value)` or `timeout_s` passes: (the last value, whether it is done)."""
    deadline = clock() + timeout_s
    for wait in intervals(ceiling=ceiling):
        value = read()
        if done(value):
            return value, True
        left = deadline - clock()
        if left <= 0:
            return value, False
        sleep(min(wait, left))
    raise AssertionError("unreachable")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
