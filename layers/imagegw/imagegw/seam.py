"""A seam: one collaborator the gateway uses by default and a test may swap for a block (the bus sink, the
clock, the async check policy). One value for every thread, so workers a test runs in threads see the fake."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class Seam(Generic[T]):
    def __init__(self, default: T):
        self.current = default

    @contextmanager
    def use(self, value: T) -> Iterator[T]:
        """`value` in place of the current one until the block ends."""
        previous, self.current = self.current, value
        try:
            yield value
        finally:
            self.current = previous
