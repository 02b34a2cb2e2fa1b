"""Benchmark: a burst of tasks against a provider that takes L requests at once (`make bench BENCH=bench/test_paced_burst.py`).

N tasks arrive as one S3 batch file (N lines; BENCH_PACED_N, default 2,000) through the real submit handler:
S3's "Object Created", then one "Task Queued" per line. The upstream (tests/simulators/capacity_sim.py) takes
L = 8 generations at once, each taking T seconds (BENCH_PACED_T_S, default 1.0), and answers 429 with
`Retry-After: 1` above that; the provider is configured with `max_concurrency: 8`. Each bus event runs the
handler on a pool of WORKERS threads (Lambda instances at once); the sweep runs every SWEEP_EVERY_S, as the
local stack's schedule does (the safety net for a task whose hand-over was lost).

Printed: successes / N, the simulator's peak concurrency, 429s as a share of upstream calls, and the wall time
(from the S3 event to the results file) as a ratio to the ideal N x T / L. Targets: all succeed, peak <= L,
429s <= 1 %, ratio <= 1.3.

AWS is moto in process (one request at a time, as in tests/), the handlers are the real ones.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.client

import submit_handler
from imagegw import bus, storage, worker
from imagegw.batches import jobs as batch_jobs
from tests.apiclient import FakeContext, bus_event
from tests.conftest import aws, providers_file  # noqa: F401 - fixtures
from tests.simulators.capacity_sim import CapacitySimulator

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("BENCH_PACED_N", "2000"))
T_S = float(os.environ.get("BENCH_PACED_T_S", "1.0"))
L = 8
WORKERS = 64
SWEEP_EVERY_S = 2.0


class PooledBus:
    """EventBridge and the submit function's rules: each "Task Queued" or "Batch Continue" is one invocation on a
    pool of WORKERS threads; lifecycle events go nowhere (the team's own rules)."""

    def __init__(self, pool: ThreadPoolExecutor):
        self.pool = pool
        self.invocations = 0
        self.errors: list[BaseException] = []

    def send(self, detail_type: str, details: list[dict]) -> None:
        if detail_type == bus.TASK_QUEUED:
            for detail in details:
                self._invoke(bus_event(detail_type, **detail))
        elif detail_type == batch_jobs.BATCH_CONTINUE:
            for detail in details:
                self._invoke({**bus_event(detail_type, ""), "detail": detail})

    def _invoke(self, event: dict) -> None:
        self.invocations += 1
        future = self.pool.submit(submit_handler.lambda_handler, event, FakeContext())
        future.add_done_callback(lambda f: f.exception() and self.errors.append(f.exception()))


def _s3_event(key: str, size: int, etag: str) -> dict:
    event = json.loads((ROOT / "events" / "s3-batch-created.json").read_text())
    event["detail"]["bucket"]["name"] = os.environ["IMAGE_BUCKET"]
    event["detail"]["object"].update(key=key, size=size, etag=etag)
    return event


class AwsCalls:
    """Every AWS call the gateway makes (moto in process here): how many, of which operation, and how long they
    took in all (summed over threads: above the wall time when calls overlap)."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.by_operation: Counter[str] = Counter()
        self.seconds_by_operation: Counter[str] = Counter()
        self.seconds = 0.0
        original = botocore.client.BaseClient._make_api_call
        calls = self

        def timed(client, operation, params):
            started = time.monotonic()
            try:
                return original(client, operation, params)
            finally:
                with calls.lock:
                    calls.by_operation[operation] += 1
                    calls.seconds += time.monotonic() - started
                    calls.seconds_by_operation[operation] += time.monotonic() - started

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", timed)


def test_a_paced_burst_keeps_the_provider_at_its_limit(aws, providers_file, monkeypatch):  # noqa: F811
    aws_calls = AwsCalls(monkeypatch)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("UPSTREAM_RETRIES", "0")  # each 429 reaches the gateway (and is counted here)
    monkeypatch.setenv("SWEEP_BUDGET_S", "10")  # a sweep ends within the join below, before moto is torn down
    with CapacitySimulator(limit=L, delay_s=T_S, retry_after="1") as sim:
        providers_file({"providers": {"p": {"dialect": "openai", "base_url": sim.base_url + "/v1",
                                            "api_key": sim.api_key, "max_concurrency": L, "timeout_s": 60}},
                        "models": {"dall-e-2": [{"provider": "p"}]}})
        lines = "".join(json.dumps({"custom_id": f"id-{i}", "body": {
            "model": "dall-e-2", "prompt": f"poster {i}", "size": "256x256", "response_format": "b64_json"}}) + "\n"
            for i in range(N)).encode()
        key = "batches/paced.jsonl"
        etag = storage.s3().put_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key, Body=lines)["ETag"].strip('"')
        stop = threading.Event()
        sweeps = []

        def sweeper():
            while not stop.wait(SWEEP_EVERY_S):
                sweeps.append(worker.sweep())

        with ThreadPoolExecutor(max_workers=WORKERS) as pool, bus.use(PooledBus(pool)) as pooled:
            sweep_thread = threading.Thread(target=sweeper, daemon=True)
            started = time.monotonic()
            sweep_thread.start()
            submit_handler.lambda_handler(_s3_event(key, len(lines), etag), FakeContext())
            ideal_s = N * T_S / L
            results = None
            while time.monotonic() - started < 5 * ideal_s + 120:  # bounded: the bench fails past it
                try:
                    results = storage.s3().get_object(Bucket=os.environ["IMAGE_BUCKET"],
                                                      Key="results/paced.jsonl")["Body"].read()
                    break
                except storage.s3().exceptions.NoSuchKey:
                    time.sleep(0.5)
            elapsed = time.monotonic() - started
            stop.set()
            sweep_thread.join(60)
        assert not sweep_thread.is_alive(), "the sweeper did not stop"
        assert results is not None, f"no results file after {elapsed:.0f} s (served {sim.served} of {N})"
        statuses = [json.loads(line)["status"] for line in results.splitlines() if line.strip()]
        succeeded = statuses.count("succeeded")
        share_429 = sim.refused / max(1, sim.calls)
        ratio = elapsed / ideal_s
        republished = sum(s.get("republished", 0) for s in sweeps)
        print(f"\nPaced burst: {N} tasks (S3 batch file), upstream takes L={L} at once, T={T_S:g} s each, "
              f"max_concurrency {L}, {WORKERS} workers")
        print(f"  successes / N            {succeeded} / {N}")
        print(f"  peak upstream concurrency {sim.peak} (L = {L})")
        print(f"  429s / upstream calls    {sim.refused} / {sim.calls} = {share_429:.2%}")
        print(f"  wall time / ideal        {elapsed:.1f} s / {ideal_s:.1f} s = {ratio:.2f}")
        print(f"  invocations              {pooled.invocations} ({pooled.invocations / N:.2f} per task; "
              f"{republished} re-published by the sweep)")
        print(f"  AWS calls                {sum(aws_calls.by_operation.values())} taking {aws_calls.seconds:.1f} s "
              f"in all ({', '.join(f'{op} {n}' for op, n in aws_calls.by_operation.most_common(6))})")
        print(f"  AWS seconds by operation {', '.join(f'{op} {s:.0f} s' for op, s in aws_calls.seconds_by_operation.most_common(6))}")
        assert not pooled.errors, pooled.errors[:3]
        assert succeeded == N and len(statuses) == N
        assert sim.peak <= L
        assert share_429 <= 0.01
        assert ratio <= 1.3
