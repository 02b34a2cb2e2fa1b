"""Sweep shards: live tasks spread over SWEEP_SHARDS partitions, every due task found in one run (no cap), nothing
stranded when the shard count changes, one "Sweep Shard" event per shard, and a bounded number of threads."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import poll_handler
from imagegw import bus, shards, table, tasks, webhooks, worker
from tests.apiclient import FakeContext
from tests.fakes import RecordingBus

SCHEDULE = {"version": "0", "id": "s", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-21T12:00:00Z", "region": "us-east-1", "resources": [],
            "detail": {}}


def due_tasks(count: int) -> list[str]:
    """`count` queued tasks whose "Task Queued" was lost: due for the sweep at once."""
    return [tasks.create("owner", "gpt-image-1", {"prompt": f"p{i}"}, check_after_s=0).id for i in range(count)]


def partition_of(task_id: str) -> str:
    return table.get(task_id)["sweep"]


@pytest.fixture
def recording():
    with bus.use(RecordingBus()) as sink:
        yield sink


def test_one_shard_keeps_the_partition_of_before_shards(aws):
    [task_id] = due_tasks(1)
    assert partition_of(task_id) == "inflight"


def test_live_tasks_spread_over_the_shards_by_a_stable_hash(aws, monkeypatch):
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    ids = due_tasks(40)
    spread = Counter(partition_of(i) for i in ids)
    assert set(spread) == {"inflight#0", "inflight#1", "inflight#2", "inflight#3"}
    assert all(partition_of(i) == f"inflight#{shards.shard_of(i, 4)}" for i in ids)
    assert shards.shard_of("imgtask_x", 4) == shards.shard_of("imgtask_x", 4)  # no per-process salt (not hash())


def test_a_sweep_over_four_shards_finds_every_due_task(aws, monkeypatch, recording):
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    ids = due_tasks(30)
    counts = worker.sweep()
    assert counts["republished"] == 30 and counts["errors"] == 0
    assert sorted(i for _, i in recording.hand_offs) == sorted(ids)


def test_a_sweep_has_no_ceiling_of_a_hundred(aws, recording):
    ids = due_tasks(250)
    counts = worker.sweep()
    assert counts["republished"] == 250 and counts["stopped"] == 0
    assert len({i for _, i in recording.hand_offs}) == 250 == len(ids)


@pytest.mark.parametrize("before, after", [(1, 4), (4, 1), (4, 2), (8, 3)])
def test_tasks_written_under_another_shard_count_are_still_swept_and_move_to_their_new_shard(
        aws, monkeypatch, recording, before, after):
    monkeypatch.setenv("SWEEP_SHARDS", str(before))
    ids = due_tasks(24)
    old = {partition_of(i) for i in ids}
    monkeypatch.setenv("SWEEP_SHARDS", str(after))
    stranded = old - set(shards.current(shards.LIVE))
    assert stranded  # some tasks sit where nothing is written any more
    assert worker.sweep()["republished"] == 24
    assert {i for _, i in recording.hand_offs} == set(ids)
    assert all(partition_of(i) == shards.partition(shards.LIVE, i) for i in ids)  # re-homed by their step


def test_pending_webhooks_are_sharded_and_swept_too(aws, monkeypatch, recording):
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    ids = []
    for _ in range(12):
        task = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, webhook="https://hooks.example/cb",
                            claimed_for_s=60)
        done = tasks.finish(task, "succeeded")
        webhooks.queue_first(done, check_after_s=0)
        ids.append(task.id)
    assert {partition_of(i) for i in ids} <= {f"webhook#{k}" for k in range(4)}
    assert worker.sweep()["webhooks"] == 12
    assert sorted(recording.of(bus.WEBHOOK_DUE), key=str) == sorted(({"task_id": i} for i in ids), key=str)


def test_the_schedule_publishes_one_sweep_shard_event_per_shard(aws, monkeypatch, recording):
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    due_tasks(8)
    counts = poll_handler.lambda_handler(SCHEDULE, FakeContext())
    assert counts["shard_events"] == 4 and recording.hand_offs == []  # the schedule's run advanced nothing itself
    assert recording.of(bus.SWEEP_SHARD) == [{"partitions": [f"inflight#{k}", f"webhook#{k}"]} for k in range(4)]
    swept = [poll_handler.lambda_handler({**SCHEDULE, "source": bus.SOURCE, "detail-type": bus.SWEEP_SHARD,
                                          "detail": detail}, FakeContext())
             for detail in recording.of(bus.SWEEP_SHARD)]
    assert sum(c["republished"] for c in swept) == 8


def test_the_schedule_also_sends_retired_partitions_that_hold_due_work(aws, monkeypatch, recording):
    due_tasks(3)  # under `inflight`, one shard
    monkeypatch.setenv("SWEEP_SHARDS", "2")
    poll_handler.lambda_handler(SCHEDULE, FakeContext())
    assert recording.of(bus.SWEEP_SHARD) == [{"partitions": ["inflight#0", "webhook#0"]},
                                             {"partitions": ["inflight#1", "webhook#1"]},
                                             {"partitions": ["inflight"]}]


def test_with_one_shard_the_schedule_sweeps_in_its_own_invocation(aws, recording):
    due_tasks(3)
    counts = poll_handler.lambda_handler(SCHEDULE, FakeContext())
    assert counts["republished"] == 3 and recording.of(bus.SWEEP_SHARD) == []


def test_a_sweep_shard_event_naming_something_else_sweeps_nothing_else(aws, monkeypatch, recording):
    due_tasks(2)
    event = {**SCHEDULE, "source": bus.SOURCE, "detail-type": bus.SWEEP_SHARD,
             "detail": {"partitions": ["batch", "owner", "inflight#64"]}}
    assert not any(poll_handler.lambda_handler(event, FakeContext()).values())
    assert recording.hand_offs == []


def test_when_the_bus_is_down_the_schedule_sweeps_the_shards_itself(aws, monkeypatch):
    from tests.fakes import DownBus

    monkeypatch.setenv("SWEEP_SHARDS", "3")
    ids = due_tasks(6)
    with bus.use(DownBus()):
        counts = poll_handler.lambda_handler(SCHEDULE, FakeContext())
    assert counts["shard_events"] == 0 and counts["errors"] == 6  # each task looked at (its republish failed too)
    assert all(tasks.get(i).next_check_at > tasks.get(i).created_at for i in ids)  # touched: next look in a minute


class SlowBus(RecordingBus):
    """Records how many sends run at once (each takes a while)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def send(self, detail_type, details):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        super().send(detail_type, details)


def test_the_sweep_runs_at_most_sweep_parallelism_tasks_at_once(aws, monkeypatch):
    monkeypatch.setenv("SWEEP_PARALLELISM", "3")
    due_tasks(30)
    with bus.use(SlowBus()) as slow:
        assert worker.sweep()["republished"] == 30
    assert 2 <= slow.most <= 3


def test_a_sweep_out_of_budget_starts_nothing_and_leaves_the_work_due(aws, monkeypatch, recording):
    ids = due_tasks(5)
    monkeypatch.setenv("SWEEP_BUDGET_S", "0")
    time.sleep(0.01)
    counts = worker.sweep()
    assert counts["stopped"] == 5 and counts["republished"] == 0 and recording.hand_offs == []
    assert set(ids) <= set(tasks.due())


def test_a_sweep_stops_when_the_lambda_has_little_time_left(aws, recording):
    ids = due_tasks(4)

    class Short(FakeContext):
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return (worker.SWEEP_TIME_MARGIN_S - 1) * 1000

    counts = poll_handler.lambda_handler(SCHEDULE, Short())
    assert counts["stopped"] == 4 and recording.hand_offs == []
    assert set(ids) <= set(tasks.due())


# -- which retired partitions a sweep reads: the shard counts recorded in the layout item -----------------------

class CountingQueries:
    """Every DynamoDB Query the gateway makes, by the partition it names (the sweep's cost per run)."""

    def __init__(self):
        import json

        self.partitions: list[str] = []

        def counted(params, **_):
            self.partitions.append(json.loads(params["body"])["ExpressionAttributeValues"][":v0"]["S"])

        table.task_table().meta.client.meta.events.register("before-call.dynamodb.Query", counted)


def test_with_one_shard_count_ever_used_a_sweep_reads_no_retired_partition(aws, monkeypatch, recording):
    due_tasks(3)
    queries = CountingQueries()
    assert worker.sweep()["republished"] == 3
    assert set(queries.partitions) == {"inflight", "webhook", "batch"}  # not inflight#0..63, webhook#0..63


def test_after_going_from_four_shards_to_one_the_sweep_reads_the_four_and_nothing_else(aws, monkeypatch,
                                                                                      recording):
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    ids = due_tasks(12)
    monkeypatch.setenv("SWEEP_SHARDS", "1")
    assert shards.retired(shards.LIVE) == [f"inflight#{k}" for k in range(4)]
    queries = CountingQueries()
    assert worker.sweep()["republished"] == 12
    assert sorted(i for _, i in recording.hand_offs) == sorted(ids)
    retired = {f"{kind}#{k}" for kind in ("inflight", "webhook") for k in range(4)}
    assert set(queries.partitions) == {"inflight", "webhook", "batch"} | retired


def test_a_table_from_before_shards_keeps_its_bare_partition_swept(aws, monkeypatch, recording):
    # written before the layout item existed: a task under the bare name, and no stamp for it
    legacy = due_tasks(1)[0]
    table.delete(shards.LAYOUT_ID)
    shards.forget()
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    due_tasks(1)  # the first write under four shards records four, and one for the tasks of before
    assert shards.retired(shards.LIVE) == ["inflight"]
    assert legacy in [i for _, i in (worker.sweep(), recording.hand_offs)[1]]


def test_a_retired_count_is_struck_off_once_unused_and_empty_and_not_before(aws, monkeypatch, recording):
    from imagegw import clock
    from tests.fakes import ShiftedClock

    monkeypatch.setenv("SWEEP_SHARDS", "4")
    [waiting] = due_tasks(1)
    tasks.touch(tasks.get(waiting), next_check_at=clock.now_ms() + 10 * 3600 * 1000)  # not due, still there
    monkeypatch.setenv("SWEEP_SHARDS", "1")
    due_tasks(1)
    later = ShiftedClock((shards.STALE_AFTER_S + 60) * 1000)
    with clock.use(later):
        shards.groups()
        assert 4 in shards.layout()  # stale, but its partition still holds a task
        tasks.cancel(waiting, "owner")  # the task leaves its partition
        shards.groups()
        assert 4 not in shards.layout() and shards.retired(shards.LIVE) == []
    # a process of the old deployment stamping four again brings it back
    monkeypatch.setenv("SWEEP_SHARDS", "4")
    shards.forget()
    due_tasks(1)
    assert 4 in shards.layout()
