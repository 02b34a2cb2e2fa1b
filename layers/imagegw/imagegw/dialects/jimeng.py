"""`jimeng` (seed 000). Being written: see the dialect issue."""

from __future__ import annotations

from .base import Dialect


class JimengDialect(Dialect):
    name = "jimeng"
