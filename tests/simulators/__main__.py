"""`make simulators`: every upstream simulator on fixed loopback ports, matching config/providers.simulators.json.

Run it beside `PROVIDERS_FILE=config/providers.simulators.json make run`; each request a simulator receives is
printed, so you can see the exact translated body every dialect sent. Ctrl-C stops them.
"""

from __future__ import annotations

import json
import os
import signal
import threading

from .async_relay_sim import AsyncRelaySimulator
from .bedrock_sim import BedrockSimulator
from .envelope_sim import EnvelopeSimulator
from .fal_sim import FalSimulator
from .gemini_sim import GeminiSimulator
from .grok_sim import GrokSimulator
from .jimeng_sim import JimengSimulator
from .loopback import Captured, LoopbackSimulator
from .midjourney_sim import MidjourneySimulator
from .openai_sim import OpenAISimulator
from .replicate_sim import ReplicateSimulator

BASE_PORT = int(os.environ.get("SIM_BASE_PORT", "4701"))
SIMULATORS = (("openai", OpenAISimulator), ("jimeng", JimengSimulator), ("envelope", EnvelopeSimulator),
              ("grok", GrokSimulator), ("async-relay", AsyncRelaySimulator), ("gemini", GeminiSimulator),
              ("midjourney", MidjourneySimulator),
              ("bedrock", BedrockSimulator), ("replicate", ReplicateSimulator), ("fal", FalSimulator))


def _printing(name: str, sim: LoopbackSimulator) -> None:
    answer = sim.answer

    def answer_and_print(request: Captured):
        query = "?" + "&".join(f"{k}={v}" for k, v in request.query.items()) if request.query else ""
        print(f"[{name}] {request.method} {request.path}{query} "
              f"{json.dumps(request.body, ensure_ascii=False, default=lambda form: form.as_json())}",
              flush=True)
        return answer(request)

    sim.answer = answer_and_print


def main() -> None:
    running = []
    for offset, (name, cls) in enumerate(SIMULATORS):
        sim = cls(port=BASE_PORT + offset)
        _printing(name, sim)
        running.append(sim.__enter__())
        print(f"{name:12} {sim.base_url}  key {sim.api_key}", flush=True)
    print("simulators ready: PROVIDERS_FILE=config/providers.simulators.json make run", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for sim in running:
        sim.__exit__(None, None, None)


if __name__ == "__main__":
    main()
