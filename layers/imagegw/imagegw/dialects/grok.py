"""`grok` (seed 003). Being written: see the dialect issue."""

from __future__ import annotations

from .base import Dialect


class GrokDialect(Dialect):
    name = "grok"
