"""The layer's one metrics sink (Powertools Metrics, in CloudWatch's embedded metric format).

Every module counts into this one object, and each handler flushes it once per invocation with
`@observability.metrics.log_metrics`: two sinks would each flush their own half of an invocation's metrics.
"""

from __future__ import annotations

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from . import settings

metrics = Metrics(namespace=settings.current().metrics_namespace)


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
