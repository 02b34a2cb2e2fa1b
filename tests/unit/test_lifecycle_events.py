"""Lifecycle events a team's own EventBridge rule can match, and requests that arrive as bus events."""

import json
import os

import boto3
import pytest

import submit_handler
from imagegw import bus, tasks
from imagegw.intake import event_tenant
from tests.apiclient import FakeContext, call
from tests.conftest import API_KEY


@pytest.fixture
def user_rule(aws):
    """A user's own rule on the gateway's bus, delivering every imagegw lifecycle event to their SQS queue."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue = sqs.create_queue(QueueName="my-team-images")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="my-team", EventBusName=os.environ["EVENT_BUS"], EventPattern=json.dumps(
        {"source": ["imagegw"], "detail-type": ["Image Task Succeeded", "Image Task Failed"]}))
    events.put_targets(Rule="my-team", EventBusName=os.environ["EVENT_BUS"], Targets=[{"Id": "q", "Arn": arn}])

    def received():
        out = []
        for _ in range(5):
            msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                break
            out += [json.loads(m["Body"]) for m in msgs]
        return out

    return received


def requested(request, reference="order-42", event_id="evt-1", webhook=None):
    detail = {"request": request, "reference": reference, **({"webhook": webhook} if webhook else {})}
    return {"version": "0", "id": event_id, "detail-type": "Image Generation Requested", "source": "my.app",
            "account": "123456789012", "time": "2026-11-21T12:00:00Z", "region": "us-east-1", "resources": [],
            "detail": detail}


def test_a_succeeded_task_is_announced_with_s3_uris(aws, user_rule):
    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 body={"model": "gpt-image-1", "prompt": "a lighthouse", "n": 2},
                 query={"async": "true"})
    task_id = reply.json()["id"]
    submit_handler.lambda_handler({"detail-type": bus.TASK_QUEUED, "source": "imagegw", "id": "x",
                                   "detail": {"task_id": task_id}}, FakeContext())
    [event] = user_rule()
    assert event["source"] == "imagegw" and event["detail-type"] == "Image Task Succeeded"
    detail = event["detail"]
    assert detail["id"] == task_id and detail["status"] == "succeeded" and len(detail["data"]) == 2
    assert detail["data"][0]["s3_uri"] == f"s3://{os.environ['IMAGE_BUCKET']}/images/{task_id}/0.png"
    assert "url" not in detail["data"][0]  # never a presigned URL: it would expire


def test_a_requested_event_creates_a_task_that_carries_its_reference(aws, user_rule):
    event = requested({"model": "gpt-image-1", "prompt": "an event-driven owl", "size": "1024x1536"})
    submit_handler.lambda_handler(event, FakeContext())
    submit_handler.lambda_handler(event, FakeContext())  # redelivered: no second task, no second image
    [announced] = user_rule()
    assert announced["detail-type"] == "Image Task Succeeded"
    assert announced["detail"]["reference"] == "order-42" and announced["detail"]["model"] == "gpt-image-1"
    task = tasks.get(announced["detail"]["id"], event_tenant())
    assert task.status == "succeeded" and task.reference == "order-42" and len(task.images) == 1
    assert len(tasks.list_for(event_tenant())[0]) == 1


@pytest.mark.parametrize("request_, param", [({"model": "gpt-image-1", "prompt": "x", "size": "7x7"}, "size"),
                                             ({"model": "gpt-image-1"}, "prompt"), ("not an object", "request"),
                                             ({"model": "gpt-image-1", "prompt": "x", "seed": 10**50}, "seed"),
                                             ({"model": "gpt-image-1", "prompt": "x", "n": 1.5}, "n"),
                                             ({"model": "gpt-image-1", "prompt": "\ud800"}, "prompt")])
def test_an_invalid_requested_event_ends_as_a_failed_task_never_a_silent_drop(aws, user_rule, request_, param):
    submit_handler.lambda_handler(requested(request_, reference="bad-1"), FakeContext())
    [announced] = user_rule()
    assert announced["detail-type"] == "Image Task Failed" and announced["detail"]["reference"] == "bad-1"
    error = announced["detail"]["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert tasks.get(announced["detail"]["id"]).status == "failed"
