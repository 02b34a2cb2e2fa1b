"""`Idempotency-Key` on POST /v1/images/generations: one task per API key and key for 24 h."""

import os
import threading
import time

import boto3
import pytest

import poll_handler
import submit_handler
from imagegw import bus, idempotency, tasks
from tests.apiclient import call
from tests.conftest import API_KEY, OTHER_KEY, s3_objects

GEN = "/v1/images/generations"
BODY = {"model": "gpt-image-1", "prompt": "a lighthouse at dusk"}



def generate(body=BODY, key=API_KEY, idem=None, **kwargs):
    headers = dict(kwargs.pop("headers", {}))
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return call(submit_handler.lambda_handler, "POST", GEN, key=key, body=body, headers=headers, **kwargs)


def task_ids(key=API_KEY):
    listing = call(poll_handler.lambda_handler, "GET", "/v1/images/tasks", key=key, query={"limit": "100"}).json()
    return [t["id"] for t in listing["data"]]


def records():
    return boto3.resource("dynamodb").Table(os.environ["IDEMPOTENCY_TABLE"]).scan()["Items"]


def test_the_same_key_twice_is_one_task_generated_once(inline_bus):
    first = generate(idem="order-42", query={"async": "true"})
    assert first.status == 202, first.body
    assert "idempotent-replayed" not in first.headers
    inline_bus.drain()

    again = generate(idem="order-42", query={"async": "true"})
    assert again.status == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["status"] == "succeeded"  # the task as it is now
    inline_bus.drain()
    assert task_ids() == [first.json()["id"]]
    assert [t for t in inline_bus.published if t[0] == bus.TASK_QUEUED] == [(bus.TASK_QUEUED, first.json()["id"])]
    assert s3_objects() == [f"images/{first.json()['id']}/0.png"]  # generated once


def test_a_sync_repeat_answers_the_images_of_the_same_task(inline_bus):
    first = generate(idem="sync-1")
    assert first.status == 200, first.body
    again = generate(headers={"idempotency-key": "sync-1"})  # header names are case-insensitive
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    assert len(again.json()["data"]) == 1 and "X-Amz-Signature" in again.json()["data"][0]["url"]
    inline_bus.drain()
    assert len(task_ids()) == 1 and len(s3_objects()) == 1


def test_a_sync_repeat_of_an_unfinished_task_is_a_202_for_it(inline_bus, quiet_bus):  # nobody picks the task up
    first = generate(idem="slow", headers={"Prefer": "wait=0"})
    assert first.status == 202
    again = generate(idem="slow", headers={"Prefer": "wait=0"})
    assert again.status == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/images/tasks/{first.json()['id']}"


def test_keys_are_scoped_per_api_key(inline_bus):
    mine = generate(idem="shared-key", query={"async": "true"})
    theirs = generate(idem="shared-key", key=OTHER_KEY, query={"async": "true"})
    assert mine.status == theirs.status == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    inline_bus.drain()
    assert task_ids() == [mine.json()["id"]] and task_ids(OTHER_KEY) == [theirs.json()["id"]]
    assert len(s3_objects()) == 2


def test_the_same_key_with_another_body_is_refused(inline_bus):
    assert generate(idem="k1", query={"async": "true"}).status == 202
    reply = generate({**BODY, "prompt": "something else"}, idem="k1", query={"async": "true"})
    assert reply.status == 422, reply.body
    assert reply.json() == {"error": {
        "message": reply.json()["error"]["message"], "type": "invalid_request_error", "param": None,
        "code": "idempotency_key_reused"}}
    # The same request spelt differently (defaults written out, other key order) is the same body.
    same = generate({"prompt": BODY["prompt"], "n": 1, "model": "gpt-image-1"}, idem="k1", query={"async": "true"})
    assert same.status == 202 and same.headers["idempotent-replayed"] == "true"
    inline_bus.drain()
    assert len(task_ids()) == 1


def test_a_concurrent_duplicate_is_a_409(inline_bus, quiet_bus, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real_create = tasks.create

    def held_create(*args, **kwargs):
        entered.set()
        assert release.wait(10)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(tasks, "create", held_create)
    replies = {}
    first = threading.Thread(target=lambda: replies.setdefault("first", generate(idem="race",
                                                                                 query={"async": "true"})))
    first.start()
    try:
        assert entered.wait(10)
        duplicate = generate(idem="race", query={"async": "true"})
    finally:
        release.set()
        first.join(10)
    assert duplicate.status == 409, duplicate.body
    error = duplicate.json()["error"]
    assert error["code"] == "idempotency_in_progress" and error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert replies["first"].status == 202
    retried = generate(idem="race", query={"async": "true"})  # once the first is done, a retry gets its task
    assert retried.status == 202 and retried.json()["id"] == replies["first"].json()["id"]
    assert len(task_ids()) == 1


def test_a_failed_creation_frees_the_key(inline_bus, monkeypatch):
    real_create = tasks.create
    monkeypatch.setattr(tasks, "create", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("DynamoDB down")))
    assert generate(idem="retry-me", query={"async": "true"}).status == 500
    assert records() == []
    monkeypatch.setattr(tasks, "create", real_create)
    assert generate(idem="retry-me", query={"async": "true"}).status == 202
    inline_bus.drain()
    assert len(task_ids()) == 1


def test_records_last_24_hours_and_name_no_secret(inline_bus):
    before = int(time.time())
    assert generate(idem="ttl", query={"async": "true"}).status == 202
    (record,) = records()
    assert record["status"] == "COMPLETED"
    assert before + 86400 - 5 <= int(record["expiration"]) <= int(time.time()) + 86400 + 5
    assert record["id"].startswith(idempotency.KEY_PREFIX + "#")
    assert "ttl" not in record["id"] and "sk-test" not in str(record)  # hashed: neither header nor API key


def test_without_the_header_every_post_is_a_new_task(inline_bus):
    first = generate(query={"async": "true"})
    second = generate(query={"async": "true"})
    assert first.status == second.status == 202 and first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers
    inline_bus.drain()
    assert len(task_ids()) == 2 and records() == []


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_an_invalid_header_is_a_400_naming_it(inline_bus, value):
    reply = generate(idem=value, query={"async": "true"})
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["param"] == "Idempotency-Key"
    assert inline_bus.published == [] and records() == []


def test_invalid_bodies_are_refused_before_the_key_is_taken(inline_bus):
    bad = generate({"model": "gpt-image-1", "prompt": "x", "size": "999x999"}, idem="fix-then-retry")
    assert bad.status == 400 and bad.json()["error"]["param"] == "size"
    assert records() == []
    fixed = generate({"model": "gpt-image-1", "prompt": "x"}, idem="fix-then-retry", query={"async": "true"})
    assert fixed.status == 202


def test_the_header_is_documented(inline_bus):
    doc = call(submit_handler.lambda_handler, "GET", "/openapi.json").json()
    params = doc["paths"]["/v1/images/generations"]["post"]["parameters"]
    assert any(p["name"].lower() == "idempotency-key" and p["in"] == "header" for p in params)  # names are lower case
