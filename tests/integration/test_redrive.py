"""Nothing lost silently, on the local stack: an event whose function keeps failing ends in the dead-letter queue
with its error, and `make redrive` (scripts/redrive.py) sends it back once the fault is gone."""

import json
import os
import subprocess
import sys
import time

import boto3

from local.aws import create_table
from local.template import load
from tests.integration.conftest import ROOT, free_port, start_stack

STACK = "imagegw-local"


def aws(stack, service):
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{stack.aws_port}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def dead_letters(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                    "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def redrive(stack, lambda_port, *extra):
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{stack.aws_port}",
           "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{lambda_port}", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run([sys.executable, "-m", "scripts.redrive", "--queue-url", f"{STACK}-DeadLetterQueue",
                           "--check-queue-url", f"{STACK}-CheckQueue", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_failed_event_waits_in_the_dead_letter_queue_and_redrive_delivers_it():
    lambda_port = free_port()
    stack = start_stack(LAMBDA_PORT=str(lambda_port))
    try:
        ddb, sqs, events = aws(stack, "dynamodb"), aws(stack, "sqs"), aws(stack, "events")
        dlq = sqs.get_queue_url(QueueName=f"{STACK}-DeadLetterQueue")["QueueUrl"]
        table = f"{STACK}-TaskTable"
        ddb.delete_table(TableName=table)  # an outage: every write of a task fails
        events.put_events(Entries=[{"Source": "another.app", "DetailType": "Image Generation Requested",
                                    "EventBusName": f"{STACK}-imagegw",
                                    "Detail": json.dumps({"reference": "order-7",
                                                          "request": {"model": "dall-e-2", "prompt": "a kite",
                                                                      "size": "256x256"}})}])
        for _ in range(120):  # three tries a couple of seconds apart, then the on-failure destination
            if dead_letters(sqs, dlq):
                break
            time.sleep(0.25)
        [letter] = sqs.receive_message(QueueUrl=dlq, VisibilityTimeout=0).get("Messages", [])
        record = json.loads(letter["Body"])
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["requestPayload"]["detail"]["reference"] == "order-7"  # the whole event, kept
        assert "ResourceNotFound" in record["responsePayload"]["errorType"] + record["responsePayload"]["errorMessage"]

        dry = redrive(stack, lambda_port, "--dry-run")
        assert dry.returncode == 0 and "would send invocation" in dry.stdout, dry.stdout + dry.stderr
        assert dead_letters(sqs, dlq) == 1  # a dry run sends nothing and keeps the letter

        tpl = load(ROOT, stack_name=STACK)
        create_table(ddb, table, tpl.tables["TaskTable"])  # the outage is over
        done = redrive(stack, lambda_port)
        assert done.returncode == 0 and "invocation: 1" in done.stdout, done.stdout + done.stderr
        for _ in range(120):
            items = ddb.scan(TableName=table, FilterExpression="#r = :r", ExpressionAttributeNames={"#r": "reference"},
                             ExpressionAttributeValues={":r": {"S": "order-7"}})["Items"]
            if items and items[0]["status"]["S"] == "succeeded":
                break
            time.sleep(0.25)
        assert items and items[0]["status"]["S"] == "succeeded", "".join(stack.output)
        assert dead_letters(sqs, dlq) == 0
    finally:
        stack.stop()
