"""One id from a client's error to every log line and task: API Gateway's request id (or the bus event's id) is in
each answer as `x-request-id`, in each log line as `correlation_id`, and on the task the request created."""

import json

import pytest

import submit_handler
from imagegw import tasks
from tests.apiclient import FakeContext, api_event, bus_event, call, generate, read_task
from tests.conftest import API_KEY


def answer_of(event):
    return submit_handler.lambda_handler(event, FakeContext())


@pytest.mark.parametrize("method, path, key, body", [
    ("POST", "/v1/images/generations", API_KEY, {"model": "dall-e-2", "prompt": "a kite", "size": "256x256"}),
    ("POST", "/v1/images/generations", API_KEY, {"model": "dall-e-2"}),  # 400
    ("POST", "/v1/images/generations", "sk-wrong", {"model": "dall-e-2", "prompt": "p"}),  # 401
    ("GET", "/v1/no-such-route", API_KEY, None),  # 404
    ("GET", "/v1/models", API_KEY, None),
])
def test_every_answer_carries_the_request_id(aws, method, path, key, body):
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    event = api_event(method, path, body=body, headers=headers)
    answer = answer_of(event)
    assert answer["headers"]["x-request-id"] == event["requestContext"]["requestId"]


def test_a_task_keeps_the_id_of_the_request_that_created_it_and_shows_it(aws, inline_bus):
    reply = generate({"model": "dall-e-2", "prompt": "a kite", "size": "256x256"}, query={"async": "true"})
    task = tasks.get(reply.json()["id"])
    assert task.request_id and task.request_id == reply.headers["x-request-id"]
    assert read_task(task.id).json()["request_id"] == task.request_id


def test_a_task_from_a_bus_event_keeps_the_event_id(aws, inline_bus):
    event = {**bus_event("Image Generation Requested", "unused"), "id": "evt-4711",
             "detail": {"reference": "r-1", "request": {"model": "dall-e-2", "prompt": "a kite", "size": "256x256"}}}
    answer_of(event)
    inline_bus.drain()
    [task] = [t for t in tasks.list_for("events", limit=50)[0] if t.reference == "r-1"]
    assert task.request_id == "evt-4711"


def test_log_lines_carry_the_event_id(aws):
    import io

    from imagegw import lifecycle

    handler = lifecycle.logger.registered_handler  # the service's one handler and formatter
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        event = {**bus_event("Image Generation Requested", "unused"), "id": "evt-logged",
                 "detail": {"reference": "r-2", "request": {"model": "dall-e-2"}}}  # invalid: logged, task failed
        answer_of(event)
    finally:
        handler.setStream(previous)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line["message"] == "task failed" for line in lines)
    assert all(line.get("correlation_id") == "evt-logged" for line in lines)


def test_call_helper_still_reads_the_header(aws):
    assert call(submit_handler.lambda_handler, "GET", "/v1/models", key=API_KEY).headers["x-request-id"]
