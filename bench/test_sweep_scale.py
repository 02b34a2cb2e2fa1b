"""Benchmark: how long the sweep takes to look at 1,000 due tasks, one shard against four (`make bench
BENCH=bench/test_sweep_scale.py`).

Each run creates 1,000 queued tasks whose "Task Queued" was lost (due at once) and times the sweep until every
one of them has been looked at (read, its next check pushed back, its event re-published: three calls). Runs:

- before:    one shard, one task after the other (SWEEP_PARALLELISM=1: the sweep before shards, minus its cap)
- 1 shard:   one shard, SWEEP_PARALLELISM=P threads (one invocation)
- 4 shards:  four shards, each swept by its own thread as four "Sweep Shard" invocations would be, P threads each

three times: against moto as it is (every AWS call served in process, one at a time under the lock of
tests/conftest.py: CPU-bound, no network) with P = 8, and with a simulated round trip of ROUND_TRIP_MS added to
every DynamoDB and EventBridge call outside that lock (what parallel invocations overlap in AWS) with P = 8 and
P = 2. Printed side by side, with each run's time as a ratio to `before` and 4 shards as a ratio to 1 shard.
Speed is reported, not asserted; the bench fails only if a run missed a task. What a shard adds is another
invocation's P calls in flight: that shows where the calls wait on the network (the round trip), not where
one process's CPU serves them all (moto as is; and at P = 8 x 4 shards, 32 calls in flight already need more
CPU than moto has on two cores).

AWS is moto in process, the bus records events instead of delivering them; the sweep code is the real one.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from imagegw import bus, shards, table, tasks, worker
from tests.conftest import aws  # noqa: F401 - fixture
from tests.fakes import RecordingBus

TASKS = 1000
ROUND_TRIP_MS = 5.0  # a DynamoDB or PutEvents call from Lambda in the same region takes a few milliseconds


class LatentBus(RecordingBus):
    def __init__(self, round_trip_s: float) -> None:
        super().__init__()
        self.round_trip_s = round_trip_s
        self.lock = threading.Lock()

    def send(self, detail_type, details):
        time.sleep(self.round_trip_s)
        with self.lock:
            super().send(detail_type, details)


@contextmanager
def round_trip(seconds: float):
    """Every call of the task table's client waits `seconds` before moto serves it (outside moto's lock)."""
    events = table.task_table().meta.client.meta.events

    def wait(**_):
        time.sleep(seconds)

    if seconds:
        events.register("before-call.dynamodb", wait, unique_id="bench-round-trip")
    try:
        yield
    finally:
        events.unregister("before-call.dynamodb", unique_id="bench-round-trip")


def fresh_due_tasks() -> set[str]:
    """An empty table, then TASKS due tasks."""
    t = table.task_table()
    scan = t.scan(ProjectionExpression="id")
    with t.batch_writer() as batch:
        for item in scan["Items"]:
            batch.delete_item(Key={"id": item["id"]})
    return {tasks.create("owner", "gpt-image-1", {"prompt": f"p{i}"}, check_after_s=0).id for i in range(TASKS)}


def run(monkeypatch, *, shard_count: int, parallelism: int, round_trip_s: float) -> float:
    monkeypatch.setenv("SWEEP_SHARDS", str(shard_count))
    monkeypatch.setenv("SWEEP_PARALLELISM", str(parallelism))
    monkeypatch.setenv("SWEEP_BUDGET_S", "600")
    ids = fresh_due_tasks()
    sink = LatentBus(round_trip_s)
    groups = shards.groups()
    with bus.use(sink), round_trip(round_trip_s):
        started = time.perf_counter()
        if len(groups) == 1:
            worker.sweep(partitions=groups[0])
        else:  # one invocation per "Sweep Shard" event, all at once
            threads = [threading.Thread(target=worker.sweep, kwargs={"partitions": g}) for g in groups]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - started
    looked_at = {task_id for _, task_id in sink.hand_offs}
    assert looked_at == ids, f"{len(ids - looked_at)} due tasks were not looked at"
    assert not tasks.due(), "tasks left due"
    return elapsed


@pytest.mark.parametrize("round_trip_ms, threads", [(0.0, 8), (ROUND_TRIP_MS, 8), (ROUND_TRIP_MS, 2)],
                         ids=["moto-P8", f"moto+{ROUND_TRIP_MS:g}ms-P8", f"moto+{ROUND_TRIP_MS:g}ms-P2"])
def test_sweep_of_1000_due_tasks_one_shard_against_four(aws, monkeypatch, round_trip_ms, threads):  # noqa: F811
    s = round_trip_ms / 1000
    before = run(monkeypatch, shard_count=1, parallelism=1, round_trip_s=s)
    one = run(monkeypatch, shard_count=1, parallelism=threads, round_trip_s=s)
    four = run(monkeypatch, shard_count=4, parallelism=threads, round_trip_s=s)
    label = "moto as is" if not round_trip_ms else f"moto + {round_trip_ms:g} ms a call"
    print(f"\nsweep of {TASKS} due tasks ({label}, SWEEP_PARALLELISM={threads}):")
    print(f"  before (1 shard, sequential)     {before:7.2f} s   {TASKS / before:7.0f} tasks/s   1.00x")
    print(f"  1 shard, {threads} threads               {one:7.2f} s   {TASKS / one:7.0f} tasks/s   "
          f"{before / one:.2f}x")
    print(f"  4 shards, 4 invocations x {threads}      {four:7.2f} s   {TASKS / four:7.0f} tasks/s   "
          f"{before / four:.2f}x")
    print(f"  4 shards / 1 shard: {one / four:.2f}x faster")
