"""A total time budget over one upstream exchange: an API call with its retries (`transport`), or an image
download with its redirects (`safe_fetch`).

Socket timeouts bound each read, and a server that drips a byte at a time never trips them. So a timer shuts
down every socket of the exchange when the budget is spent: a read blocked on it returns at once, and whatever
follows (an error, or a clean-looking end of the body) is reported as a timeout (`expired`, `check`). Sockets
are watched through a plain dup of their descriptor: it shuts the connection down at the TCP level under TLS
too, it can never name another socket later, and it is closed when the exchange ends (the connection itself
may go back to a pool).
"""

from __future__ import annotations

import os
import socket
import threading
import time

from .errors import UpstreamTimeout


class Deadline:
    """`seconds` from now; `message` is the UpstreamTimeout's. Use as a context manager (it is then the calling
    thread's `current()`, for code that cannot be handed it, such as urllib3's connection classes), or call
    `close()` when the exchange ends."""

    _local = threading.local()

    def __init__(self, seconds: float, message: str = "The provider did not answer in time."):
        self.seconds = seconds
        self.message = message
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._fired = False
        self._closed = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    @classmethod
    def current(cls) -> Deadline | None:
        """The deadline the calling thread entered (`with Deadline(...)`), if any."""
        return getattr(cls._local, "deadline", None)

    def remaining(self) -> float:
        return max(0.0, self._at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self._at

    def error(self) -> UpstreamTimeout:
        return UpstreamTimeout(self.message)

    def check(self) -> None:
        if self.expired:
            raise self.error()

    def capped(self, timeout: float | None) -> float:
        """A socket timeout that never outlasts the budget."""
        left = self.remaining()
        return left if timeout is None else min(timeout, left)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock`'s connection down at the deadline (at once if it has passed)."""
        if sock is None:
            return
        with self._lock:
            if self._closed:
                return
            if not self._fired:
                try:  # a plain socket on a copy of the descriptor: SSLSocket cannot dup() itself
                    self._watched.append(socket.socket(sock.family, sock.type, sock.proto,
                                                       fileno=os.dup(sock.fileno())))
                except OSError:
                    pass  # already closed: nothing left to cut
                return
        _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self._fired = True
            for sock in self._watched:
                _shut(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            watched, self._watched = self._watched, []
        for sock in watched:
            sock.close()

    def __enter__(self) -> Deadline:
        Deadline._local.deadline = self
        return self

    def __exit__(self, *exc: object) -> None:
        Deadline._local.deadline = None
        self.close()


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown: on an SSLSocket its own would tear the TLS state down mid-read
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
