"""EventBridge, S3 notification and SQS triggers of template.yaml, as queues in moto feeding functions.

Handlers publish with a real `put_events` to the moto bus; moto matches each rule's pattern (the
template's own `Pattern`) and sends the event to the rule's SQS target, whose body is the event exactly
as a Lambda target receives it. A rule a user adds to the bus locally works the same way.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from datetime import datetime, timezone
from typing import Any

from . import aws
from .queues import QueueSource
from .template import ACCOUNT_ID, LocalTemplate

log = logging.getLogger(__name__)

VISIBILITY_MARGIN_S = 5


def _name(*parts: str, limit: int) -> str:
    """A deterministic resource name from the stack, function and event names, within AWS's limits."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", "-".join(parts))[:limit]


def rule_sources(tpl: LocalTemplate, clients: dict[str, Any]) -> list[QueueSource]:
    """A rule (template pattern) -> SQS queue pair per EventBridgeRule event of the template."""
    sources = []
    for rule in tpl.event_rules:
        fn = tpl.functions[rule.function]
        visibility = fn.timeout_s + VISIBILITY_MARGIN_S  # never redelivered while an invocation still runs
        name = _name(tpl.stack_name, rule.function, rule.event, limit=64)
        url, arn = aws.create_queue(clients["sqs"], name, visibility_timeout_s=visibility)
        aws.put_rule_to_queue(clients["events"], rule_name=name, bus_name=rule.bus_name, pattern=rule.pattern,
                              queue_arn=arn)
        log.info("rule %s on bus %s -> %s", name, rule.bus_name, rule.function)
        sources.append(QueueSource(f"{rule.function}.{rule.event}", rule.function, url, visibility, _as_lambda_event,
                                   on_give_up=_destination(fn, tpl.region, clients["sqs"])))
    return sources


def _as_lambda_event(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("ingestion-time", None)  # moto's bookkeeping; not part of the event a Lambda target gets
    body.setdefault("account", ACCOUNT_ID)  # EventBridge always sets it; moto leaves it out
    return body


def s3_sources(tpl: LocalTemplate, clients: dict[str, Any]) -> list[QueueSource]:
    """Bucket notifications (the template's `S3` events) delivered through a queue per event."""
    sources = []
    by_bucket: dict[str, list[dict[str, Any]]] = {}
    for note in tpl.s3_notifications:
        fn = tpl.functions[note.function]
        visibility = fn.timeout_s + VISIBILITY_MARGIN_S
        name = _name(tpl.stack_name, note.function, note.event, limit=80)
        url, arn = aws.create_queue(clients["sqs"], name, visibility_timeout_s=visibility)
        config: dict[str, Any] = {"Id": name, "QueueArn": arn, "Events": note.events}
        if note.filter_rules:
            config["Filter"] = {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]}
                                                        for r in note.filter_rules]}}
        by_bucket.setdefault(note.bucket, []).append(config)
        sources.append(QueueSource(f"{note.function}.{note.event}", note.function, url, visibility, _s3_event,
                                   on_give_up=_destination(fn, tpl.region, clients["sqs"])))
    for bucket, configs in by_bucket.items():
        clients["s3"].put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": configs})
        log.info("bucket %s notifications -> %s", bucket, ", ".join(c["Id"] for c in configs))
    return sources


def _s3_event(body: dict[str, Any]) -> dict[str, Any] | None:
    # S3 sends a test message when a queue is configured; a Lambda notification never sees it.
    return None if body.get("Event") == "s3:TestEvent" else body


def sqs_sources(tpl: LocalTemplate, clients: dict[str, Any]) -> list[QueueSource]:
    """The template's `SQS` events: the function reads the template's own queue, each message as a Lambda SQS
    record (one record an invocation here; Lambda batches up to BatchSize, which the handlers take as well)."""
    sources = []
    for ev in tpl.sqs_events:
        fn = tpl.functions[ev.function]
        url = clients["sqs"].get_queue_url(QueueName=ev.queue)["QueueUrl"]
        arn = clients["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        visibility = fn.timeout_s + VISIBILITY_MARGIN_S
        log.info("queue %s -> %s", ev.queue, ev.function)
        sources.append(QueueSource(f"{ev.function}.{ev.event}", ev.function, url, visibility,
                                   functools.partial(_sqs_event, arn=arn, region=tpl.region),
                                   failed=_batch_item_failed, max_receives=None))
    return sources


def _sqs_event(body: dict[str, Any], *, arn: str, region: str) -> dict[str, Any]:
    return {"Records": [{"messageId": str(uuid.uuid4()), "receiptHandle": "local", "body": json.dumps(body),
                         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                         "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": region}]}


def _batch_item_failed(result: Any) -> bool:
    """A handler answering ReportBatchItemFailures with a failed item: the message comes back, as in Lambda."""
    return isinstance(result, dict) and bool(result.get("batchItemFailures"))


def destinations(tpl: LocalTemplate, clients: dict[str, Any]) -> dict[str, Any]:
    """Each function's on-failure recorder (for the local Lambda Invoke API's asynchronous invocations)."""
    found = {logical: _destination(fn, tpl.region, clients["sqs"]) for logical, fn in tpl.functions.items()}
    return {logical: record for logical, record in found.items() if record is not None}


def _destination(fn: Any, region: str, sqs: Any) -> Any:
    """An asynchronous invocation that failed its retries, recorded as Lambda does in the function's on-failure
    destination (`EventInvokeConfig`): the event as `requestPayload`, the error as `responsePayload`."""
    if not fn.on_failure_queue:
        return None
    arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{fn.name}"

    def record(event: dict[str, Any], error: BaseException) -> None:
        url = sqs.get_queue_url(QueueName=fn.on_failure_queue)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({
            "version": "1.0", "timestamp": datetime.now(timezone.utc).isoformat(),
            "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": f"{arn}:$LATEST",
                               "condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {"errorMessage": str(error)[:1000], "errorType": type(error).__name__}}))
        log.warning("%s: the event went to its on-failure destination %s", fn.logical_id, fn.on_failure_queue)

    return record
