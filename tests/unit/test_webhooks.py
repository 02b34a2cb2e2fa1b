"""Webhooks: Standard Webhooks signatures, one id across retries, retries through the bus and the sweep."""

import base64
import hashlib
import hmac
import json
import time

import pytest

import fetch_handler
import poll_handler
import submit_handler
from imagegw import bus, tasks, webhooks
from tests.apiclient import FakeContext, bus_event, call
from tests.conftest import API_KEY
from tests.simulators.loopback import Answer, LoopbackSimulator

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver(LoopbackSimulator):
    """Answers 500 to the first `failures` deliveries, then 204."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def answer(self, request):
        return Answer(500, {}) if len(self.requests) <= self.failures else Answer(204, b"")


@pytest.fixture
def webhook_env(inline_bus, loopback_fetch, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    inline_bus.targets[bus.WEBHOOK_DUE] = fetch_handler.lambda_handler
    return inline_bus


def verify(request) -> dict:
    """Check a delivery the way a Standard Webhooks receiver does; return its body."""
    raw = json.dumps(request.body, ensure_ascii=False, separators=(",", ":"))
    msg_id, timestamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.{raw}".encode(), hashlib.sha256).digest())
    assert request.headers["webhook-signature"] == "v1," + expected.decode()
    return request.body


def test_signature_matches_the_standard_webhooks_reference_shape():
    secret = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="  # the Standard Webhooks specification's example


def test_a_receiver_that_fails_twice_gets_three_signed_deliveries_with_one_id(webhook_env, monkeypatch):
    with Receiver(failures=2) as receiver:
        reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY, query={"async": "true",
                                                                          "webhook": receiver.base_url + "/hook"},
                     body={"model": "gpt-image-1", "prompt": "a hook"})
        assert reply.status == 202
        task_id = reply.json()["id"]
        webhook_env.drain()  # generation, the first delivery (500) and the first retry via the bus (500)
        assert len(receiver.requests) == 2
        task = tasks.get(task_id)
        assert task.webhook_status == "pending" and task.webhook_attempts == 2

        monkeypatch.setattr(tasks, "now_ms", lambda: time.time_ns() // 1_000_000 + 120_000)
        poll_handler.lambda_handler({"detail-type": "Scheduled Event", "source": "aws.events", "id": "s",
                                     "detail": {}}, FakeContext())  # the schedule finds the due retry
        webhook_env.drain()
        assert len(receiver.requests) == 3
        bodies = [verify(r) for r in receiver.requests]
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
        assert bodies[-1]["type"] == "image.task.succeeded" and bodies[-1]["data"]["id"] == task_id
        assert bodies[-1]["data"]["data"][0]["s3_uri"].startswith("s3://")
        assert tasks.get(task_id).webhook_status == "delivered"

        poll_handler.lambda_handler({"detail-type": "Scheduled Event", "source": "aws.events", "id": "s",
                                     "detail": {}}, FakeContext())
        webhook_env.drain()
        fetch_handler.lambda_handler(bus_event(bus.WEBHOOK_DUE, task_id), FakeContext())  # a stray redelivery
        assert len(receiver.requests) == 3  # no fourth


def test_a_webhook_to_a_private_address_is_refused_and_never_connected(webhook_env, monkeypatch):
    import socket

    monkeypatch.delenv("ALLOW_LOOPBACK_FETCH")

    def no_connection(*args, **kwargs):
        raise AssertionError(f"a refused address was connected to: {args}")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 query={"async": "true"}, body={"model": "gpt-image-1", "prompt": "x",
                                                "webhook": "http://169.254.169.254/latest/meta-data/"})
    webhook_env.drain()
    task = tasks.get(reply.json()["id"])
    assert task.status == "succeeded"  # the images are safe whatever happens to the webhook
    assert task.webhook_status == "pending" and task.webhook_attempts == 2  # first try + first retry, both refused
    assert "non-public address" in task.webhook_error


def test_the_webhook_url_must_be_http(webhook_env):
    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 body={"model": "gpt-image-1", "prompt": "x", "webhook": "ftp://example.com/hook"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "webhook"


def test_without_a_secret_the_webhook_is_given_up_once_not_retried_forever(webhook_env, monkeypatch):
    monkeypatch.delenv("WEBHOOK_SECRET")
    with Receiver(failures=0) as receiver:
        reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                     query={"async": "true", "webhook": receiver.base_url}, body={"model": "gpt-image-1",
                                                                                 "prompt": "x"})
        webhook_env.drain()
        task = tasks.get(reply.json()["id"])
        assert task.webhook_status.startswith("not sent: No webhook secret") and receiver.requests == []
        assert task.id not in tasks.due(now=tasks.now_ms() + 10**9, partition=tasks.WEBHOOK_PARTITION)
