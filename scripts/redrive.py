"""Send what the dead-letter queue holds back where it was going (`make redrive`).

The stack's `DeadLetterQueue` gets three kinds of message, each sent back its own way:

- an asynchronous invocation that failed its retries (a Lambda on-failure record: `requestContext.functionArn`
  and `requestPayload`, the event): the function is invoked again with that event, asynchronously;
- an event an EventBridge rule could not deliver (the event itself, with the `RULE_ARN` and `TARGET_ARN`
  message attributes EventBridge adds): the target function is invoked with it;
- a check message that kept failing (`{"task_id": ...}`, moved by the check queue's redrive policy): it goes back
  to the check queue.

Every handler is idempotent (a task moves only forward, by conditional writes), so sending a message twice does
no harm. A message sent back is deleted from the dead-letter queue; one this script does not recognise stays
there and is reported. `--dry-run` only says what it would do.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import boto3

from scripts.make_key import stack_output

MAX_MESSAGES = 10_000  # one run's bound


@dataclass(frozen=True)
class Resend:
    """How one dead letter goes back: invoke `function` with `payload`, or send `payload` to `queue_url`."""

    kind: str
    payload: str
    function: str | None = None
    queue_url: str | None = None


def plan(message: Mapping[str, Any], check_queue_url: str | None) -> Resend | None:
    """Where a dead letter goes back to (None: not one of ours, it stays)."""
    try:
        body = json.loads(message.get("Body") or "")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    context = body.get("requestContext")
    if isinstance(context, dict) and isinstance(context.get("functionArn"), str) and "requestPayload" in body:
        return Resend("invocation", json.dumps(body["requestPayload"]), function=_unqualified(context["functionArn"]))
    target = (message.get("MessageAttributes") or {}).get("TARGET_ARN", {}).get("StringValue")
    if isinstance(target, str) and target.startswith("arn:") and ":function:" in target:
        return Resend("rule event", json.dumps(body), function=_unqualified(target))
    if set(body) == {"task_id"} and isinstance(body["task_id"], str) and check_queue_url:
        return Resend("check", json.dumps(body), queue_url=check_queue_url)
    return None


def _unqualified(function_arn: str) -> str:
    """A function ARN without a `:$LATEST` or version qualifier (Lambda's records carry one)."""
    parts = function_arn.split(":")
    return ":".join(parts[:7]) if len(parts) > 7 else function_arn


def redrive(dlq_url: str, check_queue_url: str | None, *, dry_run: bool = False) -> dict[str, int]:
    """Send every dead letter back (at most MAX_MESSAGES in one run); counts by kind, and `kept`."""
    sqs, lam = boto3.client("sqs"), boto3.client("lambda")
    counts: dict[str, int] = {"invocation": 0, "rule event": 0, "check": 0, "kept": 0}
    held: dict[str, str] = {}  # messages that stay (kept, or a dry run): id -> the latest receipt
    try:
        while sum(counts.values()) < MAX_MESSAGES:
            messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=60, MessageAttributeNames=["All"]).get("Messages", [])
            for message in messages:
                if message["MessageId"] in held:
                    held[message["MessageId"]] = message["ReceiptHandle"]
            fresh = [m for m in messages if m["MessageId"] not in held]
            if not fresh:
                return counts
            for message in fresh:
                resend = plan(message, check_queue_url)
                if resend is None or dry_run:
                    held[message["MessageId"]] = message["ReceiptHandle"]
                if resend is None:
                    counts["kept"] += 1
                    print(f"kept (not recognised): message {message['MessageId']}", file=sys.stderr)
                    continue
                counts[resend.kind] += 1
                print(f"{'would send' if dry_run else 'sent'} {resend.kind}: "
                      f"{resend.function or resend.queue_url} <- {resend.payload[:120]}")
                if dry_run:
                    continue
                if resend.function:
                    lam.invoke(FunctionName=resend.function, InvocationType="Event", Payload=resend.payload.encode())
                elif resend.queue_url:
                    sqs.send_message(QueueUrl=resend.queue_url, MessageBody=resend.payload)
                sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
        return counts
    finally:  # what stays is visible again at once, for the next run or for whoever looks
        for receipt in held.values():
            sqs.change_message_visibility(QueueUrl=dlq_url, ReceiptHandle=receipt, VisibilityTimeout=0)


def _url(queue: str) -> str:
    """A queue's URL, from its URL or its name."""
    if queue.startswith(("https://", "http://")):
        return queue
    return str(boto3.client("sqs").get_queue_url(QueueName=queue)["QueueUrl"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="imagegw", help="CloudFormation stack name (its outputs name the queues)")
    parser.add_argument("--queue-url", help="the dead-letter queue, a URL or a name (default: the stack's "
                                            "DeadLetterQueueUrl; on the local stack: imagegw-local-DeadLetterQueue)")
    parser.add_argument("--check-queue-url", help="the check queue, a URL or a name (default: the stack's "
                                                  "CheckQueueUrl; on the local stack: imagegw-local-CheckQueue)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be sent, send nothing")
    args = parser.parse_args()
    dlq = _url(args.queue_url) if args.queue_url else stack_output(args.stack, "DeadLetterQueueUrl")
    if args.check_queue_url:
        checks: str | None = _url(args.check_queue_url)
    else:
        checks = None if args.queue_url else stack_output(args.stack, "CheckQueueUrl")
    counts = redrive(dlq, checks, dry_run=args.dry_run)
    print(", ".join(f"{kind}: {n}" for kind, n in counts.items()))
    sys.exit(1 if counts["kept"] else 0)


if __name__ == "__main__":
    main()
