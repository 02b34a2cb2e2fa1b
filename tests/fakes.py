"""Fakes for the gateway's seams: the bus (`bus.use`) and the clock (`clock.use`). AWS itself is moto's."""

from __future__ import annotations

import time
from typing import Any


class RecordingBus:
    """A bus sink that records every event and delivers none (nobody picks the tasks up). `hand_offs` lists
    the internal hand-offs among them (events whose detail is just a task id) as (detail type, task id)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.hand_offs: list[tuple[str, str]] = []

    def send(self, detail_type: str, details: list[dict]) -> None:
        for detail in details:
            self.events.append((detail_type, detail))
            if "task_id" in detail and set(detail) <= {"task_id", "woken_by", "slot"}:
                self.hand_offs.append((detail_type, detail["task_id"]))

    def of(self, detail_type: str) -> list[dict[str, Any]]:
        """The details published as `detail_type`, in order."""
        return [detail for kind, detail in self.events if kind == detail_type]


class DownBus:
    """A bus that refuses every event (EventBridge unavailable)."""

    def send(self, detail_type: str, details: list[dict]) -> None:
        raise RuntimeError("EventBridge is down")


class ShiftedClock:
    """The real time plus an offset a test moves forward (`advance`), so retries and checks come due."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def advance(self, ms: int) -> None:
        self.offset_ms += ms

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms
