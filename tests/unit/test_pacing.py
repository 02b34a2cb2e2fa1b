"""Pacing: a provider's limits hold across parallel workers, and a 429 or a full provider means "wait", not "fail"."""

import threading

import pytest

import submit_handler
from imagegw import bus, lifecycle, pacing, provider_config, tasks, views, worker
from imagegw.routing import routes_for
from imagegw.schemas import Task as TaskModel
from tests.apiclient import call
from tests.conftest import API_KEY
from tests.simulators.capacity_sim import CapacitySimulator

MODEL = "dall-e-2"
MAX_ROUNDS = 40  # every loop that drives waiting tasks is bounded


@pytest.fixture(autouse=True)
def no_transport_retries(monkeypatch):
    """The transport's own 429 retries would hide the gateway's waiting; none here (each 429 reaches the worker)."""
    monkeypatch.setenv("UPSTREAM_RETRIES", "0")


def config(sim, **limits):
    route = limits.pop("route", {})
    return {"providers": {"p": {"dialect": "openai", "base_url": sim.base_url + "/v1", "api_key": sim.api_key,
                                "timeout_s": 10, **limits}},
            "models": {MODEL: [{"provider": "p", **route}]}}


def queued():
    return tasks.create("owner", MODEL, {"model": MODEL, "prompt": "a red fox", "size": "256x256",
                                         "response_format": "b64_json"})


def in_parallel(task_ids):
    threads = [threading.Thread(target=worker.submit_queued, args=(task_id,)) for task_id in task_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def drive_until_done(task_ids, fake_clock):
    """What the sweep does for a waiting task, in rounds: when its next attempt comes, hand it to a worker again."""
    for _ in range(MAX_ROUNDS):
        live = [t for t in (tasks.get(i) for i in task_ids) if not t.terminal]
        if not live:
            return
        due = max(t.next_check_at for t in live)
        fake_clock.advance(max(0, due - pacing.clock.now_ms()) + 1)
        in_parallel([t.id for t in live])
    raise AssertionError("tasks still live after the bounded rounds")


def test_tasks_answered_429_wait_and_then_all_succeed(aws, providers_file, quiet_bus, fake_clock):
    with CapacitySimulator(limit=1, delay_s=0.2, retry_after="2") as sim:
        providers_file(config(sim))  # no limit configured: the upstream's 429s are all the gateway learns
        ids = [queued().id for _ in range(4)]
        in_parallel(ids)
        assert sim.refused >= 1  # sent at once, the upstream took one
        waiting = [t for t in (tasks.get(i) for i in ids) if not t.terminal]
        assert waiting and all(t.status == "queued" and t.waiting_for == "rate_limit" for t in waiting)
        shown = views.task_object(waiting[0])
        TaskModel.model_validate(shown)
        assert shown["waiting_for"] == "rate_limit" and shown["status"] == "queued" and shown["progress"] == 0
        # Retry-After: 2 is honoured, counted from the answer (the write that records it comes a moment later)
        assert all(t.next_check_at - t.updated_at >= 1500 for t in waiting)
        assert all(t.route_index == 0 and t.claims == 0 and t.error is None for t in waiting)  # nothing counted

        drive_until_done(ids, fake_clock)
        done = [tasks.get(i) for i in ids]
        assert [t.status for t in done] == ["succeeded"] * 4
        assert sim.served == 4


def test_no_more_than_max_concurrency_calls_run_at_once_across_workers(aws, providers_file, inline_bus,
                                                                      fake_clock):
    with CapacitySimulator(limit=3, delay_s=0.3) as sim:
        providers_file(config(sim, max_concurrency=3))
        ids = [queued().id for _ in range(12)]
        in_parallel(ids)  # twelve workers at once; slots freed wake the waiting (the inline bus runs them)
        inline_bus.drain()
        drive_until_done(ids, fake_clock)  # whatever the hand-overs left for the sweep
        inline_bus.drain()
        assert [tasks.get(i).status for i in ids] == ["succeeded"] * 12
        assert sim.peak <= 3 and sim.peak >= 2
        assert sim.refused == 0 and sim.served == 12
        assert any(kind == bus.TASK_QUEUED for kind, _ in inline_bus.published)  # slots were handed over


def test_a_crashed_workers_slot_comes_back_after_its_lease(aws, providers_file, fake_clock):
    with CapacitySimulator(limit=1) as sim:
        providers_file(config(sim, max_concurrency=1))
        route = routes_for(MODEL)[0]
        crashed = pacing.acquire(route, "crashed-worker")
        assert isinstance(crashed, pacing.Permit)  # taken, and never given back
        assert isinstance(pacing.acquire(route, "next"), pacing.Busy)
        fake_clock.advance(int((route.config.timeout_s + pacing.LEASE_MARGIN_S) * 1000) - 1000)
        assert isinstance(pacing.acquire(route, "next"), pacing.Busy)  # not before the lease passes
        fake_clock.advance(2000)
        again = pacing.acquire(route, "next")
        assert isinstance(again, pacing.Permit)
        pacing.release(crashed)  # the crashed worker's late release does not free the new holder's slot
        assert isinstance(pacing.acquire(route, "third"), pacing.Busy)
        pacing.release(again)
        assert isinstance(pacing.acquire(route, "third"), pacing.Permit)


def test_requests_per_minute_holds_across_workers(aws, providers_file, quiet_bus, fake_clock):
    fake_clock.advance(60_000 - pacing.clock.now_ms() % 60_000 + 1000)  # one second into a minute
    with CapacitySimulator(limit=100) as sim:
        providers_file(config(sim, requests_per_minute=3))
        ids = [queued().id for _ in range(7)]
        in_parallel(ids)
        assert sim.calls == 3
        waiting = [t for t in (tasks.get(i) for i in ids) if not t.terminal]
        assert len(waiting) == 4 and all(t.waiting_for == "capacity" for t in waiting)
        assert all(t.next_check_at >= (pacing.clock.now_ms() // 60_000 + 1) * 60_000 for t in waiting)
        in_parallel([t.id for t in waiting])  # tried again within the same minute: still no upstream call
        assert sim.calls == 3
        fake_clock.advance(60_000)
        in_parallel([t.id for t in waiting])
        assert sim.calls == 6  # the next minute's three
        drive_until_done(ids, fake_clock)
        assert [tasks.get(i).status for i in ids] == ["succeeded"] * 7 and sim.calls == 7


def test_a_route_limit_is_needed_on_top_of_the_providers(aws, providers_file, fake_clock):
    with CapacitySimulator(limit=10) as sim:
        providers_file(config(sim, max_concurrency=5, route={"max_concurrency": 1}))
        route = routes_for(MODEL)[0]
        first = pacing.acquire(route, "a")
        assert isinstance(first, pacing.Permit) and len(first.slots) == 2
        assert isinstance(pacing.acquire(route, "b"), pacing.Busy)
        assert pacing.has_free_slot(route) is False
        pacing.release(first)
        assert isinstance(pacing.acquire(route, "b"), pacing.Permit)


def test_the_deadline_ends_a_task_that_waited_too_long(aws, providers_file, quiet_bus, fake_clock, monkeypatch):
    monkeypatch.setenv("TASK_DEADLINE_S", "6")
    with CapacitySimulator(limit=1, retry_after="1", always_busy=True) as sim:
        providers_file(config(sim, max_concurrency=2))
        task = queued()
        first = worker.submit_queued(task.id)
        assert first.status == "queued" and first.waiting_for == "rate_limit" and first.error is None
        for _ in range(MAX_ROUNDS):
            current = tasks.get(task.id)
            if current.terminal:
                break
            fake_clock.advance(max(0, current.next_check_at - pacing.clock.now_ms()) + 1)
            worker.submit_queued(task.id)
        ended = tasks.get(task.id)
        assert ended.status == "failed" and ended.error["code"] == "upstream_rate_limited"
        assert "waited" in ended.error["message"] and "deadline (6 s)" in ended.error["message"]
        assert sim.served == 0 and sim.refused >= 2
        assert pacing.clock.now_ms() - ended.created_at <= 6000 + 1000  # never tried past its deadline


def test_a_sync_request_without_a_slot_waits_then_answers_504_and_is_handed_the_slot(
        aws, providers_file, quiet_bus, monkeypatch):
    monkeypatch.setenv("SYNC_WAIT_S", "1")
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1))
        held = pacing.acquire(routes_for(MODEL)[0], "someone-else")
        reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                     body={"model": MODEL, "prompt": "a red fox", "size": "256x256",
                           "response_format": "b64_json"})
        assert reply.status == 504 and reply.json()["error"]["code"] == "generation_in_progress"
        assert sim.calls == 0
        task_id = reply.json()["error"]["message"].split("task ")[1].split(".")[0]
        task = tasks.get(task_id)
        assert task.status == "queued" and task.waiting_for == "capacity"
        shown = call(submit_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY).json()
        assert shown["waiting_for"] == "capacity" and shown["queue_position"] == 1
        pacing.release(held)  # the slot is handed to the oldest waiting task
        assert (bus.TASK_QUEUED, task_id) in quiet_bus.hand_offs
        assert worker.submit_queued(task_id).status == "succeeded" and sim.served == 1


def test_limits_are_checked_with_json_paths_and_unknown_keys_refused():
    base = {"dialect": "openai", "base_url": "https://a.example", "api_key_env": "A_KEY"}
    found = provider_config.problems({
        "providers": {"p": {**base, "max_concurrency": 0, "requests_per_minute": "many"},
                      "q": {**base, "max_concurency": 2}},
        "models": {"m": [{"provider": "p", "requests_per_minute": 0, "max_concurrency": True}]}})
    assert any(f.startswith("providers.p.max_concurrency: input should be greater than or equal to 1") for f in found)
    assert any(f.startswith("providers.p.requests_per_minute: input should be a valid integer") for f in found)
    assert "providers.q.max_concurency: unknown field (did you mean 'max_concurrency'?)" in found
    assert any(f.startswith("models.m.0.requests_per_minute: input should be greater than or equal to 1")
               for f in found)
    assert any(f.startswith("models.m.0.max_concurrency: input should be a valid integer") for f in found)
    assert provider_config.problems({"providers": {"p": {**base, "max_concurrency": 8, "requests_per_minute": 60}},
                                     "models": {"m": [{"provider": "p", "max_concurrency": 2}]}}) == []


def test_the_line_is_one_item_per_task_woken_oldest_first_each_by_one_worker(aws, quiet_bus, fake_clock):
    now = pacing.clock.now_ms()
    for k, task_id in enumerate(["t-late", "t-first", "t-mid"]):  # joined in any order: the line sorts by `since`
        pacing.join_line("p", task_id, since=now + {0: 300, 1: 100, 2: 200}[k])
    pacing.join_line("p", "t-first", since=now + 100)  # joining again is the same write
    pacing.join_line("q", "t-other", since=now)  # another provider's line
    assert pacing.place("p", now + 250) == 3 and pacing.place("p", now) == 1
    assert tasks.table.get("limit#p#wait#t-first")["sweep"] == "line#p"
    woken: list[str | None] = []
    threads = [threading.Thread(target=lambda: woken.append(pacing.wake_oldest("p"))) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(w for w in woken if w) == ["t-first", "t-late", "t-mid"]  # each waiter woken once
    assert pacing.wake_oldest("p") is None and pacing.wake_oldest("q") == "t-other"
    assert sorted(task_id for _, task_id in quiet_bus.hand_offs) == ["t-first", "t-late", "t-mid", "t-other"]
    pacing.join_line("p", "t-gone", since=now)
    pacing.leave_line("p", "t-gone")
    assert pacing.wake_oldest("p") is None


def test_the_sweep_never_reads_a_line(aws, quiet_bus, fake_clock):
    from imagegw import shards

    pacing.join_line("p", "not-a-task", since=0)
    assert not shards.is_partition("line#p")
    assert all("line#p" not in group for group in shards.groups())
    counts = worker.sweep()
    assert counts["republished"] == counts["errors"] == counts["failed"] == 0
    assert tasks.table.get("limit#p#wait#not-a-task") is not None and quiet_bus.hand_offs == []


def test_a_task_refused_a_slot_is_left_to_the_hand_overs(aws, providers_file, quiet_bus, fake_clock, monkeypatch):
    monkeypatch.setenv("PACING_LINE_CHECK_S", "30")
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1))
        held = pacing.acquire(routes_for(MODEL)[0], "someone-else")
        first, second = queued(), queued()
        assert worker.submit_queued(first.id).status == "queued"
        fake_clock.advance(5)
        waiting = worker.submit_queued(second.id)
        assert waiting.waiting_for == "capacity"
        assert worker.with_queue_position(tasks.get(second.id)).queue_position == 2  # the first is ahead of it
        # its next check is the safety net, not a backoff: the sweep leaves it alone while slots are handed over
        assert waiting.next_check_at - pacing.clock.now_ms() >= 29_000
        fake_clock.advance(5_000)
        assert worker.sweep()["republished"] == 0
        fake_clock.advance(26_000)  # their safety net came, but every slot is still in use: no hand-over was lost
        swept = worker.sweep()
        assert swept["republished"] == 0 and swept["deferred"] == 2 and quiet_bus.hand_offs == []
        assert tasks.get(second.id).next_check_at - pacing.clock.now_ms() >= 29_000
        pacing.release(held)  # the oldest is woken first
        assert quiet_bus.hand_offs == [(bus.TASK_QUEUED, first.id)]
        assert worker.submit_queued(first.id).status == "succeeded"  # its release wakes the next
        assert quiet_bus.hand_offs[-1] == (bus.TASK_QUEUED, second.id)
        assert worker.submit_queued(second.id).status == "succeeded" and sim.served == 2


def test_a_lost_wake_is_recovered_by_the_sweep(aws, providers_file, quiet_bus, fake_clock, monkeypatch):
    monkeypatch.setenv("PACING_MAX_WAIT_S", "30")
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1))
        held = pacing.acquire(routes_for(MODEL)[0], "someone-else")
        task = queued()
        assert worker.submit_queued(task.id).status == "queued"
        pacing.release(held)  # the slot is handed to the task ...
        assert quiet_bus.hand_offs == [(bus.TASK_QUEUED, task.id)]  # ... and that event is lost
        assert quiet_bus.events[-1][1] == {"task_id": task.id, "woken_by": "p", "slot": "limit#p#slot#0"}
        assert isinstance(pacing.acquire(routes_for(MODEL)[0], "someone-else"), pacing.Busy)  # the task's slot
        fake_clock.advance(29_000)
        assert worker.sweep()["hand_overs_resent"] == 0  # its event may only be slow
        fake_clock.advance(1_001)
        # out of the line, holding a slot it was handed: the sweep's check of the lines sends it again
        assert worker.sweep()["hand_overs_resent"] == 1
        assert quiet_bus.of(bus.TASK_QUEUED)[-1] == {"task_id": task.id, "woken_by": "p", "slot": "limit#p#slot#0"}
        assert delivered(quiet_bus).status == "succeeded" and sim.served == 1  # on its own slot
        assert not isinstance(pacing.acquire(routes_for(MODEL)[0], "someone-else"), pacing.Busy)  # and gave it back


@pytest.mark.parametrize("found_by", ["sweep", "read"])
def test_a_task_still_waiting_at_its_deadline_fails_rate_limited_saying_how_long(
        aws, providers_file, quiet_bus, fake_clock, monkeypatch, found_by):
    monkeypatch.setenv("TASK_DEADLINE_S", "40")
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1, timeout_s=60))
        pacing.acquire(routes_for(MODEL)[0], "someone-else")  # never given back (its lease outlasts the test)
        task = queued()
        fake_clock.advance(3_000)
        assert worker.submit_queued(task.id).status == "queued"
        fake_clock.advance(38_000)  # past the deadline, before anyone tried it again
        if found_by == "sweep":
            assert worker.sweep()["failed"] == 1
        else:
            worker.poll_through(tasks.get(task.id))
        ended = tasks.get(task.id)
        assert ended.status == "failed" and ended.error["code"] == "upstream_rate_limited"
        assert "had no capacity" in ended.error["message"] and "waited 38 s" in ended.error["message"]
        assert sim.calls == 0


def test_a_task_not_waiting_at_its_deadline_still_times_out(aws, providers_file, quiet_bus, fake_clock,
                                                             monkeypatch):
    monkeypatch.setenv("TASK_DEADLINE_S", "40")
    with CapacitySimulator(limit=5):
        task = queued()  # its "Task Queued" was lost: never tried
        fake_clock.advance(41_000)
        assert worker.poll_through(tasks.get(task.id)).error["code"] == "upstream_timeout"


# -- hand-overs reach a task that can take them -----------------------------------------------------------------

def delivered(bus_sink):
    """Run the submit stage as the last "Task Queued" event asks (its detail: task id, woken_by, slot)."""
    return worker.submit_queued(**bus_sink.of(bus.TASK_QUEUED)[-1])


def two_waiting(sim, providers_file, fake_clock):
    """One slot, held elsewhere; two tasks waiting for it, the first ahead of the second."""
    providers_file(config(sim, max_concurrency=1))
    held = pacing.acquire(routes_for(MODEL)[0], "someone-else")
    first, second = queued(), queued()
    assert worker.submit_queued(first.id).waiting_for == "capacity"
    fake_clock.advance(5)
    assert worker.submit_queued(second.id).waiting_for == "capacity"
    return held, first.id, second.id


def test_a_task_cancelled_while_in_line_leaves_it_and_the_slot_goes_to_the_next(aws, providers_file, quiet_bus,
                                                                              fake_clock):
    with CapacitySimulator(limit=5) as sim:
        held, first, second = two_waiting(sim, providers_file, fake_clock)
        lifecycle.ended(tasks.cancel(first, "owner"))  # what the API's cancel does
        assert tasks.table.get(f"limit#p#wait#{first}") is None  # out of the line
        pacing.release(held)
        assert quiet_bus.hand_offs[-1] == (bus.TASK_QUEUED, second)
        assert delivered(quiet_bus).status == "succeeded" and sim.served == 1


def test_a_wake_that_finds_its_task_ended_goes_on_to_the_next_in_line(aws, providers_file, quiet_bus, fake_clock):
    with CapacitySimulator(limit=5) as sim:
        held, first, second = two_waiting(sim, providers_file, fake_clock)
        tasks.cancel(first, "owner")  # ended without its line item removed (that cleanup's write was lost)
        pacing.release(held)
        assert quiet_bus.hand_offs[-1] == (bus.TASK_QUEUED, first)  # the oldest in line, though it has ended
        assert delivered(quiet_bus) is None
        assert quiet_bus.hand_offs[-1] == (bus.TASK_QUEUED, second)  # the wake went on
        assert delivered(quiet_bus).status == "succeeded" and sim.served == 1


def test_a_woken_task_does_not_delete_its_line_item_again(aws, providers_file, quiet_bus, fake_clock):
    import json

    deleted = []
    with CapacitySimulator(limit=5) as sim:
        held, first, second = two_waiting(sim, providers_file, fake_clock)
        client = tasks.table.task_table().meta.client
        client.meta.events.register("before-call.dynamodb.DeleteItem",
                                    lambda params, **_: deleted.append(json.loads(params["body"])["Key"]["id"]["S"]))
        pacing.release(held)
        assert deleted == [f"limit#p#wait#{first}"]  # the wake took it out of the line
        assert delivered(quiet_bus).status == "succeeded"
        # once; its own release then woke the second (taking that one's line item)
        assert deleted == [f"limit#p#wait#{first}", f"limit#p#wait#{second}"]
        assert quiet_bus.hand_offs[-1] == (bus.TASK_QUEUED, second)


def test_a_freed_slot_goes_to_the_task_in_line_not_to_whoever_asks_first(aws, providers_file, quiet_bus,
                                                                         fake_clock):
    with CapacitySimulator(limit=5) as sim:
        held, first, second = two_waiting(sim, providers_file, fake_clock)
        pacing.release(held)
        assert isinstance(pacing.acquire(routes_for(MODEL)[0], "a-newcomer"), pacing.Busy)  # handed, not free
        slot_calls = []
        tasks.table.task_table().meta.client.meta.events.register(
            "before-call.dynamodb.*", lambda params, model, **_: slot_calls.append(model.name)
            if "#slot#" in params["body"].decode() else None)
        assert delivered(quiet_bus).status == "succeeded" and sim.served == 1
        # the woken task neither read nor took a slot: its one slot write is handing it on to the second
        assert slot_calls == ["UpdateItem"]
        assert quiet_bus.of(bus.TASK_QUEUED)[-1] == {"task_id": second, "woken_by": "p", "slot": "limit#p#slot#0"}
        assert delivered(quiet_bus).status == "succeeded" and sim.served == 2


def test_a_slot_passed_on_to_an_empty_line_is_freed(aws, providers_file, quiet_bus, fake_clock):
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1))
        held = pacing.acquire(routes_for(MODEL)[0], "someone-else")
        task = queued()
        assert worker.submit_queued(task.id).status == "queued"
        pacing.release(held)  # handed to the task
        tasks.cancel(task.id, "owner")  # ended before its event came (and still "in line" for all it knows)
        assert delivered(quiet_bus) is None
        assert not isinstance(pacing.acquire(routes_for(MODEL)[0], "a-newcomer"), pacing.Busy)  # free again


def test_a_slot_whose_worker_died_is_handed_to_the_line_once_its_lease_passes(aws, providers_file, quiet_bus,
                                                                              fake_clock):
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1, timeout_s=10))  # a lease of 10 + 30 s
        pacing.acquire(routes_for(MODEL)[0], "a-worker-that-dies")
        waiting = [queued().id for _ in range(3)]
        for task_id in waiting:
            assert worker.submit_queued(task_id).waiting_for == "capacity"
            fake_clock.advance(5)
        fake_clock.advance(30_000)
        swept = worker.sweep()
        assert swept["lines_woken"] == 0 and swept["deferred"] == 0 and quiet_bus.hand_offs == []  # still leased
        fake_clock.advance(10_100)
        assert worker.sweep()["lines_woken"] == 1 and quiet_bus.hand_offs == [(bus.TASK_QUEUED, waiting[0])]
        assert delivered(quiet_bus).status == "succeeded" and sim.served == 1  # the oldest took the slot


def test_tasks_waiting_in_line_cost_the_sweep_nothing_until_their_line_check(aws, providers_file, quiet_bus,
                                                                            fake_clock, monkeypatch):
    monkeypatch.setenv("PACING_LINE_CHECK_S", "300")
    with CapacitySimulator(limit=5) as sim:
        providers_file(config(sim, max_concurrency=1, timeout_s=600))
        pacing.acquire(routes_for(MODEL)[0], "a-long-call")
        waiting = [queued().id for _ in range(5)]
        for task_id in waiting:
            worker.submit_queued(task_id)
        fake_clock.advance(120_000)
        swept = worker.sweep()
        assert not any(swept[k] for k in ("republished", "deferred", "failed", "errors", "lines_woken"))
        fake_clock.advance(181_000)  # their line check: still in line, every slot in use
        assert worker.sweep()["deferred"] == 5 and quiet_bus.hand_offs == []
        assert all(tasks.get(i).status == "queued" for i in waiting) and sim.calls == 0
