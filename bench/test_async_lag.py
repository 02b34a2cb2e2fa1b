"""Benchmark: how soon a client that polls once a second sees an async upstream's result (`make bench`).

An async relay (tests/simulators/async_relay_sim.py) finishes each task `FINISH_AFTER_S` after its submit, however
often it is checked. Each client submits with `?async=true` and then reads its task once a second, its reads
offset from the submit by a different fraction of a second, so together they sample every phase. The lag is
the time from the upstream finishing to the first read that answers `succeeded` (the image downloaded and
stored by then). Run twice in one process: with the gateway's read policy (a read asks upstream when the last
check is a second old: `worker.CheckPolicy.min_gap_ms`) and with the earlier one (a read asks only when the sweep's
backoff says a check is due: 2 s at first, growing with age). Printed: median and 90th percentile lag of
each, their ratio, and the shortest gap between two upstream checks of one task (at least a second: the
upstream is never asked more often, however many reads).

AWS is moto in process, the bus runs its rules inline (as in tests/); the handlers are the real ones.
"""

from __future__ import annotations

import statistics
import threading
import time


import poll_handler
import submit_handler
from imagegw import clock, tasks, worker
from tests.apiclient import call as _call
from tests.conftest import API_KEY, aws, inline_bus, loopback_fetch, providers_file  # noqa: F401 - fixtures
from tests.simulators.async_relay_sim import AsyncRelaySimulator, Behaviour

FINISH_AFTER_S = 3.0
CLIENTS = 10
POLL_S = 1.0
MAX_POLLS = 30  # a client gives up after this many reads (the bench then fails)


_INVOCATION = threading.Lock()


def call(*args, **kwargs):
    """One API invocation at a time, as in a Lambda execution environment: Powertools keeps the current
    request and its context on the shared resolver, so two handler calls in threads would read each other's."""
    with _INVOCATION:
        return _call(*args, **kwargs)


def _earlier_poll_through(task: tasks.Task) -> tasks.Task:
    """The read policy before: check upstream only when the sweep's backoff says a check is due."""
    if task.stage == "waiting" and not task.terminal and (task.next_check_at or 0) <= clock.now_ms():
        return worker.check_waiting(task.id) or tasks.get(task.id)
    return task


def _client(task_id: str, finished_at: float, phase_s: float, lags: list[float], lock: threading.Lock) -> None:
    time.sleep(phase_s)
    for _ in range(MAX_POLLS):
        seen = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY).json()
        if seen["status"] == "succeeded":
            with lock:
                lags.append(time.monotonic() - finished_at)
            return
        assert seen["status"] == "in_progress", seen
        time.sleep(POLL_S)


def _submit(sim: AsyncRelaySimulator) -> tuple[str, float]:
    """One async request; its task id and when its relay task finishes upstream."""
    before = len(sim.tasks)
    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 query={"async": "true"}, body={"model": "dall-e-3", "prompt": "a lighthouse"})
    deadline = time.monotonic() + 10
    while len(sim.tasks) == before and time.monotonic() < deadline:  # the bus hands it to the relay
        time.sleep(0.005)
    upstream = sim.tasks[max(sim.tasks)]
    return reply.json()["id"], upstream.finished_at(FINISH_AFTER_S)


def _run(sim: AsyncRelaySimulator) -> dict[str, float]:
    lags: list[float] = []
    lock = threading.Lock()
    clients = []
    for i in range(CLIENTS):
        task_id, finished_at = _submit(sim)
        clients.append(threading.Thread(target=_client, args=(task_id, finished_at, i * POLL_S / CLIENTS, lags,
                                                              lock)))
        clients[-1].start()
    for thread in clients:
        thread.join(MAX_POLLS * POLL_S + 30)
    assert len(lags) == CLIENTS, f"{CLIENTS - len(lags)} clients never saw their task succeed"
    gaps = []
    by_task: dict[str, list[float]] = {}
    for request in sim.checks:
        by_task.setdefault(request.path, []).append(request.received_at)
    for times in by_task.values():
        gaps += [b - a for a, b in zip(times, times[1:])]
    return {"median": statistics.median(lags), "p90": sorted(lags)[int(0.9 * (len(lags) - 1))],
            "checks": len(sim.checks) / CLIENTS, "min_gap": min(gaps) if gaps else float("nan")}


def test_a_client_polling_once_a_second_sees_the_result_within_a_second(inline_bus, providers_file,
                                                                         loopback_fetch, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # keep the table readable
    results = {}
    for policy in ("earlier", "now"):
        with AsyncRelaySimulator(behaviour=Behaviour(finish_after_s=FINISH_AFTER_S)) as sim:
            providers_file({"providers": {"relay": {"dialect": "async-relay", "base_url": sim.base_url + "/v1",
                                                    "api_key": sim.api_key}},
                            "models": {"dall-e-3": [{"provider": "relay"}]}})
            with monkeypatch.context() as patched:
                if policy == "earlier":
                    patched.setattr(worker, "poll_through", _earlier_poll_through)
                results[policy] = _run(sim)
        inline_bus.drain()
    earlier, now = results["earlier"], results["now"]
    print(f"\nAsync relay finishing {FINISH_AFTER_S:g} s after submit; {CLIENTS} clients reading once a second")
    print(f"{'':32}{'earlier':>10}{'now':>10}{'ratio':>10}")
    for name, label in (("median", "lag median (s)"), ("p90", "lag p90 (s)"), ("checks", "upstream checks a task"),
                        ("min_gap", "shortest check gap (s)")):
        ratio = now[name] / earlier[name] if earlier[name] else float("nan")
        print(f"{label:32}{earlier[name]:>10.2f}{now[name]:>10.2f}{ratio:>10.2f}")
    assert now["median"] < 1.5, now
    assert now["min_gap"] >= worker.check_policy().min_gap_ms / 1000 - 0.05, now  # never more than one check a second
