"""The sync contract (imagegw/sync.py): the fast path, the answer when it is not in time, and re-attaching."""

import threading
import time
from collections import Counter

import botocore.client
import pytest

import poll_handler
import submit_handler
from imagegw import shards, tasks
from tests.apiclient import call
from tests.conftest import API_KEY, s3_objects
from tests.simulators.async_relay_sim import AsyncRelaySimulator, Behaviour as RelayBehaviour
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

GEN = "/v1/images/generations"


def generate(body, headers=None, **kwargs):
    return call(submit_handler.lambda_handler, "POST", GEN, key=API_KEY, body=body, headers=headers, **kwargs)


@pytest.fixture
def aws_calls(monkeypatch):
    """Every AWS API call the layer makes, counted by (service, operation)."""
    counted: Counter = Counter()
    real = botocore.client.BaseClient._make_api_call

    def counting(self, operation, params):
        counted[(self.meta.service_model.service_name, operation)] += 1
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting)
    return counted


def openai_route(providers_file, sim, model="dall-e-3"):
    providers_file({"providers": {"p": {"dialect": "openai", "base_url": sim.base_url + "/v1",
                                        "api_key": sim.api_key}},
                    "models": {model: [{"provider": "p"}]}})


@pytest.mark.parametrize("model, answer", [("dall-e-3", "url"), ("gpt-image-1", "b64_json")])
def test_the_fast_path_runs_in_the_request_one_put_one_update_no_reads_no_hand_off(
        inline_bus, providers_file, loopback_fetch, aws_calls, model, answer):
    with OpenAISimulator() as sim:
        openai_route(providers_file, sim, model)
        shards.partition(shards.LIVE, "warm")  # a warm process stamped its shard count already (once per 5 min)
        aws_calls.clear()
        reply = generate({"model": model, "prompt": "a lighthouse"})
        assert reply.status == 200, reply.body
        assert inline_bus.published == []  # nothing handed over the bus
        assert dict(aws_calls) == {("dynamodb", "PutItem"): 1, ("dynamodb", "UpdateItem"): 1,
                                   ("s3", "PutObject"): 1, ("events", "PutEvents"): 1}, answer
        assert len(sim.generations) == 1 and len(s3_objects()) == 1


def test_the_task_of_a_sync_request_is_named_after_the_request(inline_bus, providers_file, loopback_fetch):
    with OpenAISimulator() as sim:
        openai_route(providers_file, sim)
        generate({"model": "dall-e-3", "prompt": "a lighthouse"})
        [task] = tasks.list_for(tasks.get(s3_objects()[0].split("/")[1]).owner)[0]
        assert task.id.startswith("imgtask_") and len(task.id) == 8 + 13 + 36  # time in ms, then the request id


def test_a_sync_request_not_answered_in_time_gets_a_504_that_sdks_retry_naming_the_task(
        inline_bus, providers_file, loopback_fetch, monkeypatch):
    monkeypatch.setenv("SYNC_WAIT_S", "1")
    with AsyncRelaySimulator(behaviour=RelayBehaviour(checks_to_finish=10**9)) as sim:
        providers_file({"providers": {"r": {"dialect": "async-relay", "base_url": sim.base_url,
                                            "api_key": sim.api_key}}, "models": {"dall-e-3": [{"provider": "r"}]}})
        started = time.monotonic()
        reply = generate({"model": "dall-e-3", "prompt": "a lighthouse"})
        assert reply.status == 504 and time.monotonic() - started < 3
        assert reply.headers["x-should-retry"] == "true" and reply.headers["retry-after-ms"] == "1000"
        assert reply.headers["retry-after"] == "1"
        error = reply.json()["error"]
        assert error["code"] == "generation_in_progress" and error["type"] == "server_error"
        task_id = error["message"].split("by task ")[1].split(".")[0]
        shown = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY)
        assert shown.status == 200 and shown.json()["status"] == "in_progress"
        assert f"GET /v1/images/tasks/{task_id}" in error["message"]


def test_an_idempotent_sync_request_not_answered_in_time_is_a_504_too(inline_bus, providers_file, loopback_fetch,
                                                                      monkeypatch):
    monkeypatch.setenv("SYNC_WAIT_S", "1")
    with OpenAISimulator(behaviour=Behaviour(delay_s=3)) as sim:
        openai_route(providers_file, sim)
        reply = generate({"model": "dall-e-3", "prompt": "a lighthouse"}, headers={"Idempotency-Key": "k-1"})
        assert reply.status == 504 and reply.json()["error"]["code"] == "generation_in_progress"
        waited = generate({"model": "dall-e-3", "prompt": "a lighthouse"}, headers={"Prefer": "wait=1"})
        assert waited.status == 202 and waited.headers["location"].startswith("/v1/images/tasks/")  # asked for it


def test_a_retry_re_attaches_to_the_running_task_and_the_upstream_generates_once(inline_bus, providers_file,
                                                                                 loopback_fetch):
    with OpenAISimulator(behaviour=Behaviour(delay_s=2)) as sim:
        openai_route(providers_file, sim)
        body = {"model": "dall-e-3", "prompt": "a lighthouse", "size": "1024x1024"}
        first: dict = {}
        worker_thread = threading.Thread(target=lambda: first.update(reply=generate(body)))
        worker_thread.start()  # the first attempt: its invocation is busy with the upstream
        deadline = time.monotonic() + 5
        while not sim.generations and time.monotonic() < deadline:
            time.sleep(0.02)
        retried = generate({"size": "1024x1024", "prompt": "a lighthouse", "model": "dall-e-3"},  # same, reordered
                           headers={"x-stainless-retry-count": "1"})
        worker_thread.join(10)
        assert retried.status == 200 and first["reply"].status == 200
        assert retried.json()["data"][0]["url"].split("?")[0] == first["reply"].json()["data"][0]["url"].split("?")[0]
        assert len(sim.generations) == 1 and len(s3_objects()) == 1


def test_a_retry_of_a_finished_task_gets_its_images_without_generating_again(inline_bus, providers_file,
                                                                              loopback_fetch):
    with OpenAISimulator() as sim:
        openai_route(providers_file, sim)
        body = {"model": "dall-e-3", "prompt": "a lighthouse"}
        assert generate(body).status == 200
        again = generate(body, headers={"x-stainless-retry-count": "2"})
        assert again.status == 200 and len(sim.generations) == 1


@pytest.mark.parametrize("headers, body", [
    ({}, {"model": "dall-e-3", "prompt": "a lighthouse"}),  # no retry marker: a new request
    ({"x-stainless-retry-count": "0"}, {"model": "dall-e-3", "prompt": "a lighthouse"}),
    ({"x-stainless-retry-count": "1"}, {"model": "dall-e-3", "prompt": "another lighthouse"}),  # another body
])
def test_only_a_retry_of_the_same_body_re_attaches(inline_bus, providers_file, loopback_fetch, headers, body):
    with OpenAISimulator() as sim:
        openai_route(providers_file, sim)
        assert generate({"model": "dall-e-3", "prompt": "a lighthouse"}).status == 200
        assert generate(body, headers=headers).status == 200
        assert len(sim.generations) == 2


def test_a_retry_by_another_key_never_re_attaches(inline_bus, providers_file, loopback_fetch):
    from tests.conftest import OTHER_KEY

    with OpenAISimulator() as sim:
        openai_route(providers_file, sim)
        body = {"model": "dall-e-3", "prompt": "a lighthouse"}
        assert generate(body).status == 200
        other = call(submit_handler.lambda_handler, "POST", GEN, key=OTHER_KEY, body=body,
                     headers={"x-stainless-retry-count": "1"})
        assert other.status == 200 and len(sim.generations) == 2


def test_a_fast_path_failure_is_the_upstream_error_at_once(inline_bus, providers_file):
    with OpenAISimulator() as sim:
        openai_route(providers_file, sim)
        reply = generate({"model": "dall-e-3", "prompt": "break the content policy please"})
        assert reply.status == 400 and reply.json()["error"]["code"] == "content_policy_violation"
