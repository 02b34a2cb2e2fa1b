"""A capacity-limited `openai` upstream: it takes `limit` generations at once, each taking `delay_s`, and answers
429 with `Retry-After` to any request above that, as a provider's per-key concurrency limit does.

It records the most requests it saw in flight at once (`peak`), how many it served and how many it refused.
A request leaves the count before its answer is written, so a client that sends its next request after reading
an answer is never refused for it. With `always_busy` every generation is refused (a provider that stays full).
"""

from __future__ import annotations

from typing import Any

from .loopback import Answer
from .openai_sim import Behaviour, OpenAISimulator

__all__ = ["CapacitySimulator"]


class CapacitySimulator(OpenAISimulator):
    def __init__(self, limit: int, delay_s: float = 0.0, retry_after: str = "1", always_busy: bool = False,
                 api_key: str = "sk-upstream", port: int = 0):
        super().__init__(api_key=api_key, behaviour=Behaviour(delay_s=delay_s), port=port)
        self.limit = limit
        self.retry_after = retry_after
        self.always_busy = always_busy
        self.in_flight = 0
        self.peak = 0
        self.served = 0
        self.refused = 0

    def generate(self, headers: dict[str, str], body: Any) -> Answer:
        with self.lock:
            if self.always_busy or self.in_flight >= self.limit:
                self.refused += 1
                return Answer(429, {"error": {"message": "Rate limit reached: too many concurrent requests.",
                                              "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
                              {"Retry-After": self.retry_after})
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            answer = super().generate(headers, body)
        finally:
            with self.lock:
                self.in_flight -= 1
        if answer.status == 200:
            with self.lock:
                self.served += 1
        return answer

    @property
    def calls(self) -> int:
        return self.served + self.refused
