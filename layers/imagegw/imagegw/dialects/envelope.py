"""`envelope` (seed 001). Being written: see the dialect issue."""

from __future__ import annotations

from .base import Dialect


class EnvelopeDialect(Dialect):
    name = "envelope"
