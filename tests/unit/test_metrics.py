"""The metrics the alarms and the dashboard read, as the layer writes them: CloudWatch embedded-metric-format
(EMF) lines on stdout, with the names and dimensions template.yaml names (test_alarms_template.py checks that
side).

Metrics are disabled for the other tests (tests/conftest.py); here they are on, and stdout is read back."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from aws_lambda_powertools.metrics.provider import cold_start

from imagegw import clock, lifecycle, observability, pacing, tasks, worker
from tests.apiclient import FakeContext
from tests.simulators.openai_sim import Behaviour, OpenAISimulator


@dataclass(frozen=True)
class Emitted:
    name: str
    dimensions: dict[str, str]
    values: list[float]
    unit: str
    namespace: str


def emitted(out: str) -> list[Emitted]:
    """Every metric in the EMF lines of `out` (each line one blob; a blob's dimension set applies to its metrics)."""
    found = []
    for line in out.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            (dimension_set,) = directive["Dimensions"]  # one dimension set per blob, as the alarms read them
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                found.append(Emitted(metric["Name"], {d: blob[d] for d in dimension_set},
                                     value if isinstance(value, list) else [value], metric["Unit"],
                                     directive["Namespace"]))
    return found


def named(out: str, name: str) -> list[Emitted]:
    return [m for m in emitted(out) if m.name == name]


@pytest.fixture
def metrics_on(aws, monkeypatch, capsys):
    """Metrics enabled, the shared sink empty; returns a function flushing it and reading what was written."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "imagegw")  # as the template sets it (read when a sink is made:
    monkeypatch.setattr(observability.metrics, "service", "imagegw")  # the shared one was made at import)
    observability.metrics.clear_metrics()
    capsys.readouterr()

    def read() -> str:
        observability.metrics.flush_metrics()
        return capsys.readouterr().out

    yield read
    observability.metrics.clear_metrics()


def config_for(*sims, model="dall-e-3"):
    providers = {f"p{i}": {"dialect": "openai", "base_url": sim.base_url + "/v1", "api_key": sim.api_key}
                 for i, sim in enumerate(sims)}
    return {"providers": providers, "models": {model: [{"provider": name} for name in providers]}}


def test_an_upstream_call_is_one_blob_per_provider(metrics_on):
    observability.upstream_call("acme", latency_ms=1234.56, failed=True)
    observability.upstream_call("other", latency_ms=10, failed=False)
    out = metrics_on()
    latencies = named(out, "UpstreamLatency")
    assert [(m.dimensions, m.values, m.unit) for m in latencies] == [
        ({"provider": "acme", "service": "imagegw"}, [1234.6], "Milliseconds"),
        ({"provider": "other", "service": "imagegw"}, [10], "Milliseconds")]
    assert [(m.dimensions["provider"], m.values) for m in named(out, "UpstreamFailures")] == [("acme", [1]),
                                                                                              ("other", [0])]
    assert all(m.namespace == "ImageGatewayTest" for m in emitted(out))
    # the provider dimension never leaks into the shared sink's blob
    assert all("provider" not in m.dimensions for m in emitted(out) if m.name.startswith("Tasks"))


def test_a_fallback_counts_the_total_and_the_provider_pair(aws, metrics_on, providers_file, loopback_fetch,
                                                           quiet_bus):
    with OpenAISimulator(behaviour=Behaviour(failures=[503, 503, 503])) as bad, OpenAISimulator() as good:
        providers_file(config_for(bad, good))
        task = tasks.create("owner", "dall-e-3", {"model": "dall-e-3", "prompt": "a red fox"})
        assert worker.submit_queued(task.id).upstream["provider"] == "p1"
    out = metrics_on()
    fallbacks = named(out, "RouteFallbacks")
    assert sorted((sorted(m.dimensions.items()), m.values) for m in fallbacks) == [
        ([("from_provider", "p0"), ("service", "imagegw"), ("to_provider", "p1")], [1]),
        ([("service", "imagegw")], [1])]
    calls = {m.dimensions["provider"]: m.values for m in named(out, "UpstreamFailures")}
    assert calls == {"p0": [1], "p1": [0]}
    latency = {m.dimensions["provider"]: m.values[0] for m in named(out, "UpstreamLatency")}
    assert set(latency) == {"p0", "p1"} and all(ms > 0 for ms in latency.values())


def test_stored_images_and_bytes_are_counted_for_a_succeeded_task(metrics_on, quiet_bus):
    task = tasks.create("owner", "dall-e-3", {"prompt": "p"}, claimed_for_s=60)
    images = [{"index": 0, "key": "images/x/0.png", "content_type": "image/png", "size": 1000},
              {"index": 1, "key": "images/x/1.png", "content_type": "image/png", "size": 234}]
    done = tasks.finish(task, "succeeded", images=images)
    lifecycle.ended(done)
    out = metrics_on()
    assert named(out, "ImagesStored")[0].values == [2]
    assert named(out, "ImageBytesStored")[0].values == [1234]
    assert named(out, "TasksSucceeded")[0].dimensions == {"service": "imagegw"}


def test_the_sweep_counts_tasks_failed_by_deadline_and_reports_the_oldest_task_age(
        metrics_on, quiet_bus, fake_clock, monkeypatch):
    monkeypatch.setenv("TASK_DEADLINE_S", "40")
    old = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, check_after_s=0)
    fake_clock.advance(30_000)
    young = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, check_after_s=0)
    fake_clock.advance(20_000)  # old: 50 s, past its deadline; young: 20 s
    counts = worker.sweep()
    assert counts["failed"] == 1 and tasks.get(old.id).error["code"] == "upstream_timeout"
    assert tasks.get(young.id).status == "queued"
    out = metrics_on()
    assert named(out, "TasksFailedByDeadline")[0].values == [1]
    (age,) = named(out, "OldestInFlightAgeSeconds")
    assert age.values == [50] and age.unit == "Seconds" and age.dimensions == {"service": "imagegw"}

    worker.sweep()  # the young task is not due (republished, its next look a minute away): nothing due, 0
    assert named(metrics_on(), "OldestInFlightAgeSeconds")[0].values == [0]


def test_a_task_that_kept_failing_is_not_counted_as_failed_by_deadline(metrics_on, quiet_bus):
    stuck = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, check_after_s=0)
    for _ in range(worker.MAX_CLAIMS):
        tasks.claim(stuck.id, "queued", lease_s=-1)
    worker.sweep()
    assert tasks.get(stuck.id).status == "failed"
    out = metrics_on()
    assert named(out, "TasksFailed") and not named(out, "TasksFailedByDeadline")


def test_a_deadline_reached_while_waiting_for_capacity_counts_too(metrics_on, quiet_bus, fake_clock, monkeypatch):
    monkeypatch.setenv("TASK_DEADLINE_S", "40")
    task = tasks.create("owner", "gpt-image-1", {"prompt": "p"}, check_after_s=0)
    claimed = tasks.claim(task.id, "queued", lease_s=60)
    busy = pacing.Busy(provider="p0", reason=pacing.CAPACITY, retry_at=clock.now_ms() + 60_000)  # past it
    ended = worker._apply_wait(claimed, busy, route=None)  # (read only for a refused slot)
    assert ended.status == "failed" and ended.error["code"] == "upstream_rate_limited"
    assert named(metrics_on(), "TasksFailedByDeadline")[0].values == [1]


def test_handlers_count_a_cold_start_per_function_once(metrics_on, monkeypatch):
    monkeypatch.setattr(cold_start, "is_cold_start", True)
    handler = observability.log_metrics(lambda event, context: observability.count("Handled"))
    handler({}, FakeContext())
    handler({}, FakeContext())
    out = metrics_on()
    (cold,) = named(out, "ColdStart")
    assert cold.dimensions == {"function_name": "imagegw-test", "service": "imagegw"} and cold.values == [1]
    assert [m.values for m in named(out, "Handled")] == [[1], [1]]  # flushed once per invocation


def test_no_cold_start_is_written_while_metrics_are_disabled(aws, monkeypatch, capsys):
    monkeypatch.setattr(cold_start, "is_cold_start", True)
    observability.log_metrics(lambda event, context: None)({}, FakeContext())
    assert '"_aws"' not in capsys.readouterr().out
