"""Webhooks: Standard Webhooks signatures, one id across retries, retries through the bus and the sweep."""

import base64
import hashlib
import hmac
import json

import pytest

import fetch_handler
import poll_handler
import submit_handler
from imagegw import bus, clock, shards, table, tasks, webhooks
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


def test_a_receiver_that_fails_twice_gets_three_signed_deliveries_with_one_id(webhook_env, fake_clock):
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

        fake_clock.advance(120_000)
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


@pytest.fixture
def resolver(monkeypatch):
    """A stubbed DNS for the guard (no real lookup, no connection): names map to the addresses given."""
    import socket

    from imagegw import safe_fetch

    answers: dict[str, list[str]] = {}

    def resolve(host, port):
        if host not in answers:
            raise socket.gaierror(f"{host} does not resolve")
        return answers[host]

    def no_connection(address, *args, **kwargs):
        if not str(address[0]).startswith("127."):
            raise AssertionError(f"a refused address was connected to: {address}")
        return real_connection(address, *args, **kwargs)

    real_connection = socket.create_connection
    monkeypatch.setattr(safe_fetch, "default_resolver", resolve)
    monkeypatch.setattr(socket, "create_connection", no_connection)
    webhooks.forget_checked_targets()
    return answers


UNSAFE_WEBHOOKS = [
    ("https://user:secret@hooks.example/cb", "credentials"),
    ("https://hooks.example@169.254.169.254/cb", "userinfo hiding the real host"),
    ("http://169.254.169.254/latest/meta-data/", "metadata address"),
    ("http://10.0.0.7/cb", "private address"),
    ("http://[fd00::1]/cb", "unique-local IPv6"),
    ("http://[::ffff:192.168.1.1]/cb", "IPv4-mapped private"),
    ("http://127.0.0.1/cb", "loopback (refused when deployed)"),
    ("http://metadata.hooks.example/cb", "name resolving to the metadata address"),
    ("http://mixed.hooks.example/cb", "name resolving to a public and a private address"),
    ("http://nowhere.hooks.example/cb", "name that does not resolve"),
    ("file:///etc/passwd", "another scheme"),
]


@pytest.mark.parametrize("url, why", UNSAFE_WEBHOOKS, ids=[why for _, why in UNSAFE_WEBHOOKS])
def test_an_unsafe_webhook_is_refused_at_submit_and_no_task_is_made(aws, resolver, monkeypatch, url, why):
    monkeypatch.delenv("ALLOW_LOOPBACK_FETCH", raising=False)  # as deployed
    resolver.update({"metadata.hooks.example": ["169.254.169.254"],
                     "mixed.hooks.example": ["93.184.216.34", "10.1.2.3"]})
    for where in ("body", "query"):
        reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                     query={"async": "true", **({"webhook": url} if where == "query" else {})},
                     body={"model": "gpt-image-1", "prompt": "x", **({"webhook": url} if where == "body" else {})})
        assert reply.status == 400, (where, reply.body)
        assert reply.json()["error"]["param"] == "webhook", reply.body
    listed = call(poll_handler.lambda_handler, "GET", "/v1/images/tasks", key=API_KEY).json()
    assert listed["data"] == []


def test_an_unsafe_webhook_in_a_bus_request_fails_its_task_with_the_reason(aws, resolver):
    from imagegw import intake

    resolver["metadata.hooks.example"] = ["169.254.169.254"]
    task = intake.accept({"id": "evt-1", "time": "2026-12-01T12:00:00Z", "detail": {
        "request": {"model": "gpt-image-1", "prompt": "x"}, "reference": "r1",
        "webhook": "http://metadata.hooks.example/cb"}})
    assert task.status == "failed" and "webhook" in task.error["message"]


def test_a_public_webhook_is_accepted_and_the_task_shows_its_delivery_state(aws, resolver):
    resolver["hooks.example"] = ["93.184.216.34"]
    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 query={"async": "true"}, body={"model": "gpt-image-1", "prompt": "x",
                                                "webhook": "https://hooks.example/cb"})
    assert reply.status == 202, reply.body
    assert reply.json()["webhook"] == {"url": "https://hooks.example/cb", "status": "waiting", "attempts": 0,
                                       "last_error": None}


def test_the_task_object_shows_retries_and_delivery(webhook_env, fake_clock):
    with Receiver(failures=2) as receiver:
        reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                     query={"async": "true"}, body={"model": "gpt-image-1", "prompt": "a hook",
                                                    "webhook": receiver.base_url + "/hook"})
        webhook_env.drain()
        task_id = reply.json()["id"]
        shown = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY).json()
        assert shown["webhook"] == {"url": receiver.base_url + "/hook", "status": "pending", "attempts": 2,
                                    "last_error": "HTTP 500"}
        fake_clock.advance(120_000)
        poll_handler.lambda_handler({"detail-type": "Scheduled Event", "source": "aws.events", "id": "s",
                                     "detail": {}}, FakeContext())
        webhook_env.drain()
        shown = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY).json()
        assert shown["webhook"]["status"] == "delivered" and shown["webhook"]["attempts"] == 3


def test_a_webhook_whose_name_turns_private_after_submit_is_given_up_at_once(webhook_env, resolver, monkeypatch):
    monkeypatch.delenv("ALLOW_LOOPBACK_FETCH")
    resolver["hooks.example"] = ["93.184.216.34"]
    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 query={"async": "true"}, body={"model": "gpt-image-1", "prompt": "x",
                                                "webhook": "http://hooks.example/cb"})
    assert reply.status == 202
    resolver["hooks.example"] = ["169.254.169.254"]  # DNS rebinding between submit and delivery
    webhook_env.drain()
    shown = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{reply.json()['id']}", key=API_KEY).json()
    assert shown["status"] == "succeeded"  # the images are safe whatever happens to the webhook
    assert shown["webhook"]["status"] == "failed" and shown["webhook"]["attempts"] == 1
    assert "non-public address" in shown["webhook"]["last_error"]
    task_id = reply.json()["id"]
    assert task_id not in table.due(shards.partition(shards.WEBHOOK, task_id), now=clock.now_ms() + 10**9)


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
        assert task.webhook_status == "failed" and receiver.requests == []
        assert task.webhook_error.startswith("not sent: No webhook secret")
        assert task.id not in table.due(shards.partition(shards.WEBHOOK, task.id), now=clock.now_ms() + 10**9)
