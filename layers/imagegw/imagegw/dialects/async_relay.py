"""`async-relay` (seed 004). Being written: see the dialect issue."""

from __future__ import annotations

from .base import Dialect


class AsyncRelayDialect(Dialect):
    name = "async-relay"
