"""The layer's one metrics sink (Powertools Metrics, in CloudWatch's embedded metric format).

Every module counts into this one object, and each handler flushes it once per invocation with
`@observability.log_metrics` (which also counts the function's `ColdStart`, per `function_name`): two sinks
would each flush their own half of an invocation's metrics. These metrics carry the `service` dimension only.

A metric with dimensions of its own (per provider, per provider pair) cannot go into that shared object: its
dimensions would apply to everything flushed with it. Those are written at once, each call its own EMF blob
(`_emit`, an EphemeralMetrics of its own: nothing shared between threads):

    UpstreamRequests, UpstreamFailures, UpstreamLatency    {service, provider}  a route's submit
    UpstreamCheckFailures, UpstreamCheckLatency            {service, provider}  an async upstream's check
    RouteFallbacks                                         {service, from_provider, to_provider}

(RouteFallbacks is also counted with `service` alone, the total.) The alarms and the dashboard in template.yaml
name these metrics with exactly these dimensions (tests/unit/test_alarms_template.py checks both sides).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from . import settings

metrics = Metrics(namespace=settings.current().metrics_namespace)

T = TypeVar("T")


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def gauge(name: str, seconds: float) -> None:
    """A duration in seconds, into the shared sink (e.g. OldestInFlightAgeSeconds, once per sweep)."""
    metrics.add_metric(name=name, unit=MetricUnit.Seconds, value=seconds)


def log_metrics(handler: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
    """Decorate a Lambda handler: flush the shared metrics once per invocation, and count `ColdStart` (dimensions
    function_name and service) on a container's first invocation. While metrics are disabled (tests, the local
    stack) no ColdStart is written: Powertools would print it regardless."""
    plain = metrics.log_metrics(handler)
    cold = metrics.log_metrics(handler, capture_cold_start_metric=True)

    @functools.wraps(handler)
    def flushed(event: Any, context: Any) -> T:
        return (plain if is_metrics_disabled() else cold)(event, context)

    return flushed


def _emit(dimensions: dict[str, str], values: list[tuple[str, MetricUnit, float]]) -> None:
    """One EMF blob of `values` under `dimensions` (and `service`), written now."""
    blob = EphemeralMetrics(namespace=settings.current().metrics_namespace)
    for name, value in dimensions.items():
        blob.add_dimension(name=name, value=value or "unknown")
    for metric, unit, number in values:
        blob.add_metric(name=metric, unit=unit, value=number)
    blob.flush_metrics()


def upstream_call(provider: str, *, latency_ms: float, failed: bool) -> None:
    """A route's submit to `provider` returned (whatever its outcome) after `latency_ms`."""
    _emit({"provider": provider}, [("UpstreamRequests", MetricUnit.Count, 1),
                                   ("UpstreamFailures", MetricUnit.Count, 1 if failed else 0),
                                   ("UpstreamLatency", MetricUnit.Milliseconds, round(latency_ms, 1))])


def upstream_check(provider: str, *, latency_ms: float, failed: bool) -> None:
    """A check of an async upstream's task at `provider` returned after `latency_ms`."""
    _emit({"provider": provider}, [("UpstreamCheckFailures", MetricUnit.Count, 1 if failed else 0),
                                   ("UpstreamCheckLatency", MetricUnit.Milliseconds, round(latency_ms, 1))])


def fallback(from_provider: str, to_provider: str) -> None:
    """A task left a route of `from_provider` for the next, of `to_provider`: the total and the pair."""
    count("RouteFallbacks")
    _emit({"from_provider": from_provider, "to_provider": to_provider}, [("RouteFallbacks", MetricUnit.Count, 1)])
