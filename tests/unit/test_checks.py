"""Async checks scheduled per task: a waiting task's next check goes to the check queue (SQS) with its delay, and
the poll function checks the task when the message comes; the sweep stays the safety net."""

import json

import boto3
import pytest

import poll_handler
from imagegw import bus, checks, clock, tasks, worker
from tests.apiclient import FakeContext
from tests.unit.test_async_upstream import StoreGenerated, ticket_upstream  # noqa: F401 - fixture


@pytest.fixture
def check_queue(aws, monkeypatch):
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="imagegw-checks")["QueueUrl"]
    monkeypatch.setenv("CHECK_QUEUE", "imagegw-checks")  # a name (the local stack's) is resolved to its URL
    checks.forget()
    yield sqs, url
    checks.forget()


def sent(sqs, url):
    """Every message in the queue, delayed or not (moto hands delayed ones out only once due)."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                    "ApproximateNumberOfMessagesDelayed"])
    return sum(int(v) for v in attrs["Attributes"].values())


def records(*bodies):
    return {"Records": [{"messageId": f"m{i}", "receiptHandle": "r", "body": body, "attributes": {},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:imagegw-checks",
                         "awsRegion": "us-east-1"} for i, body in enumerate(bodies)]}


def waiting_task():
    task = tasks.create("o", "slowpoke", {"prompt": "p", "model": "slowpoke"})
    waiting = worker.submit_queued(task.id)
    assert waiting.stage == "waiting"
    return waiting


def test_a_task_that_starts_waiting_has_its_first_check_scheduled_with_its_delay(check_queue, ticket_upstream,
                                                                                  quiet_bus, monkeypatch):
    sqs, url = check_queue
    calls = []
    original = checks.schedule
    monkeypatch.setattr(checks, "schedule", lambda task_id, at: calls.append((task_id, at)) or original(task_id, at))
    waiting = waiting_task()
    assert calls == [(waiting.id, waiting.next_check_at)]  # when the sweep would look, not sooner
    assert sent(sqs, url) == 1
    delay_s = (waiting.next_check_at - clock.now_ms()) / 1000
    assert 0 < delay_s <= 3  # the check policy's first backoff (2 s)


def test_the_message_checks_the_task_and_a_task_still_running_is_scheduled_again(check_queue, ticket_upstream,
                                                                                    checks_at_once):
    sqs, url = check_queue
    with bus.use(StoreGenerated()):
        waiting = waiting_task()
        for expected in (1, 2, 3):  # the upstream finishes on its third check
            answer = poll_handler.lambda_handler(records(json.dumps({"task_id": waiting.id})), FakeContext())
            assert answer == {"batchItemFailures": []}
            assert ticket_upstream.checks == expected
        assert tasks.get(waiting.id).status == "succeeded"
    assert sent(sqs, url) == 3  # the first check, then one each time a check found it still running


def test_a_check_due_after_sqs_longest_delay_is_left_to_the_sweep(check_queue, aws):
    sqs, url = check_queue
    assert checks.schedule("imgtask_x", clock.now_ms() + (checks.MAX_DELAY_S + 1) * 1000) is False
    assert checks.schedule("imgtask_y", clock.now_ms() + checks.MAX_DELAY_S * 1000) is True
    assert sent(sqs, url) == 1


def test_a_queue_that_refuses_the_message_leaves_the_check_to_the_sweep(aws, ticket_upstream, quiet_bus,
                                                                        monkeypatch, checks_at_once):
    monkeypatch.setenv("CHECK_QUEUE", "no-such-queue")
    checks.forget()
    waiting = waiting_task()  # scheduling failed: logged, the task is unharmed
    assert waiting.stage == "waiting" and waiting.id in tasks.due()
    worker.sweep()
    assert ticket_upstream.checks == 1


def test_without_a_check_queue_nothing_is_sent(aws, ticket_upstream, quiet_bus, monkeypatch):
    monkeypatch.delenv("CHECK_QUEUE")  # the template's queue, which the tests' account has, named nowhere
    checks.forget()
    waiting = waiting_task()
    assert checks.schedule(waiting.id, waiting.next_check_at) is False


def test_a_bad_record_is_dropped_and_a_failing_one_is_retried_alone(check_queue, ticket_upstream, quiet_bus,
                                                                   monkeypatch, checks_at_once):
    waiting = waiting_task()

    def flaky(task_id, **_):
        if task_id == "imgtask_boom":
            raise RuntimeError("DynamoDB throttled")
        return original(task_id)

    original = worker.check_waiting
    monkeypatch.setattr(worker, "check_waiting", flaky)
    answer = poll_handler.lambda_handler(records("not json", json.dumps({"task": 1}),
                                                 json.dumps({"task_id": "imgtask_boom"}),
                                                 json.dumps({"task_id": waiting.id})), FakeContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m2"}]}  # only the failing one comes back
    assert ticket_upstream.checks == 1
