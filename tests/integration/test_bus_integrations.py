"""Through the local stack: a request put on the bus by another application, a user's own rule seeing the
result, and the same Idempotency-Key twice yielding one task."""

import json
import time

import boto3
import requests


def aws(stack, service):
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{stack.aws_port}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_a_requested_event_leads_to_a_succeeded_event_a_users_rule_sees(stack):
    events, sqs = aws(stack, "events"), aws(stack, "sqs")
    bus = "imagegw-local-imagegw"
    queue = sqs.create_queue(QueueName="my-team-results")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="my-team-results", EventBusName=bus, EventPattern=json.dumps(
        {"source": ["imagegw"], "detail-type": ["Image Task Succeeded", "Image Task Failed"],
         "detail": {"reference": ["order-7"]}}))
    events.put_targets(Rule="my-team-results", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    events.put_events(Entries=[{"Source": "my.shop", "DetailType": "Image Generation Requested", "EventBusName": bus,
                                "Detail": json.dumps({"request": {"model": "gpt-image-1", "prompt": "a mug"},
                                                      "reference": "order-7"})}])
    seen = []
    for _ in range(30):
        seen += [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)
                 .get("Messages", [])]
        if seen:
            break
    assert [e["detail-type"] for e in seen] == ["Image Task Succeeded"]
    detail = seen[0]["detail"]
    assert detail["reference"] == "order-7" and detail["data"][0]["s3_uri"].startswith("s3://imagegw-local-images/")


def test_the_same_idempotency_key_twice_yields_one_task(stack):
    headers = {"Authorization": "Bearer sk-local", "Idempotency-Key": f"order-{time.time_ns()}"}
    body = {"model": "gpt-image-1", "prompt": "exactly once"}
    first = requests.post(stack.base_url + "/images/generations?async=true", headers=headers, json=body)
    second = requests.post(stack.base_url + "/images/generations?async=true", headers=headers, json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"] and second.headers["Idempotent-Replayed"] == "true"
    other = requests.post(stack.base_url + "/images/generations?async=true", headers=headers,
                          json={**body, "prompt": "something else"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
