"""How tasks end when things go wrong: the deadline on every path, a provider's unsafe image URL, a cancel that
races the worker (no orphan images), and how often a polled async upstream is asked."""

import socket
import threading
import time

import pytest

import poll_handler
import submit_handler
from imagegw import keys, safe_fetch, tasks, worker
from tests.apiclient import call
from tests.conftest import API_KEY, s3_objects
from tests.simulators.async_relay_sim import AsyncRelaySimulator, Behaviour as RelayBehaviour
from tests.simulators.loopback import Answer, LoopbackSimulator, png_bytes
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

GEN = "/v1/images/generations"


def generate(body, **kwargs):
    return call(submit_handler.lambda_handler, "POST", GEN, key=API_KEY, body=body, **kwargs)


def get_task(task_id):
    return call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY).json()


def cancel(task_id):
    return call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{task_id}/cancel", key=API_KEY)


def route(name, sim, dialect="openai"):
    return {name: {"dialect": dialect, "base_url": sim.base_url + "/v1", "api_key": sim.api_key}}


class FixedUrlUpstream(LoopbackSimulator):
    """An OpenAI-dialect upstream that answers every generation with one image URL of its choosing."""

    api_key = "sk-fixed"

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def answer(self, request):
        if request.path.startswith("/redirect"):
            return Answer(302, b"", {"Location": self.url.removeprefix("redirect:")})
        url = self.base_url + "/redirect" if self.url.startswith("redirect:") else self.url
        return Answer(200, {"created": 1, "data": [{"url": url}]})


@pytest.fixture
def no_private_connections(monkeypatch):
    """Any connection to a non-loopback address fails the test: refusals must come before connecting."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if not str(address[0]).startswith("127."):
            raise AssertionError(f"connected to {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    monkeypatch.setattr(safe_fetch, "default_resolver",
                        lambda host, port: {"cdn.upstream.example": ["169.254.169.254"]}.get(host, ["127.0.0.1"]))


# -- a provider's unsafe image URL is the provider's fault -------------------------------------------------------

UNSAFE_RESULTS = [
    ("http://169.254.169.254/latest/meta-data/iam.png", "a literal metadata address"),
    ("http://user:pw@127.0.0.1/x.png", "credentials in the URL"),
    ("file:///etc/passwd", "another scheme"),
    ("http://cdn.upstream.example/x.png", "a name that resolves to the metadata address"),
    ("redirect:http://10.0.0.1/x.png", "a redirect to a private address"),
]


@pytest.mark.parametrize("url, why", UNSAFE_RESULTS, ids=[why for _, why in UNSAFE_RESULTS])
def test_an_unsafe_result_url_is_a_502_and_the_next_route_is_tried(inline_bus, providers_file, loopback_fetch,
                                                                   no_private_connections, url, why):
    with FixedUrlUpstream(url) as bad, OpenAISimulator() as good:
        providers_file({"providers": {**route("bad", bad), **route("good", good)},
                        "models": {"dall-e-3": [{"provider": "bad"}, {"provider": "good"}]}})
        reply = generate({"model": "dall-e-3", "prompt": "a fox"})
        inline_bus.drain()
        assert reply.status == 200, reply.body
        assert len(bad.generations) == 1 and len(good.generations) == 1
        assert len(s3_objects()) == 1


@pytest.mark.parametrize("url, why", UNSAFE_RESULTS, ids=[why for _, why in UNSAFE_RESULTS])
def test_an_unsafe_result_url_on_the_only_route_fails_as_an_upstream_error(inline_bus, providers_file, loopback_fetch,
                                                                           no_private_connections, url, why):
    with FixedUrlUpstream(url) as bad:
        providers_file({"providers": route("bad", bad), "models": {"dall-e-3": [{"provider": "bad"}]}})
        reply = generate({"model": "dall-e-3", "prompt": "a fox"})
        inline_bus.drain()
        assert reply.status == 502, reply.body
        error = reply.json()["error"]
        assert error["type"] == "upstream_error" and error["code"] == "unsafe_result_url"
        assert s3_objects() == []


# -- the deadline holds on every path --------------------------------------------------------------------------

@pytest.fixture
def never_finishing_relay(inline_bus, providers_file, loopback_fetch, monkeypatch):
    monkeypatch.setenv("TASK_DEADLINE_S", "2")
    with AsyncRelaySimulator(behaviour=RelayBehaviour(checks_to_finish=10**9)) as sim:
        providers_file({"providers": route("relay", sim, "async-relay"),
                        "models": {"dall-e-3": [{"provider": "relay"}]}})
        yield sim


def test_a_task_that_a_client_keeps_polling_still_ends_at_its_deadline(never_finishing_relay, inline_bus):
    reply = generate({"model": "dall-e-3", "prompt": "a fox"}, query={"async": "true"})
    inline_bus.drain()
    started = time.monotonic()
    seen = get_task(reply.json()["id"])
    while seen["status"] == "in_progress" and time.monotonic() - started < 10:
        time.sleep(0.25)
        seen = get_task(seen["id"])
    assert seen["status"] == "failed", seen
    assert seen["error"]["code"] == "upstream_timeout"
    assert seen["completed_at"] - seen["created_at"] <= 2 + 1  # at the deadline, not whenever polling stops
    checks = len(never_finishing_relay.checks)
    assert 1 <= checks <= 4  # polled 4 times a second, asked at most once a second


def test_a_task_nobody_reads_is_found_by_the_sweep_at_its_deadline(never_finishing_relay, inline_bus):
    with worker.use_check_policy(worker.CheckPolicy(min_delay_ms=30_000)):  # an old task's check backoff
        reply = generate({"model": "dall-e-3", "prompt": "a fox"}, query={"async": "true"})
        inline_bus.drain()
        time.sleep(2.2)
        assert worker.sweep()["failed"] == 1
    assert tasks.get(reply.json()["id"]).error["code"] == "upstream_timeout"


def test_a_task_queued_event_after_the_deadline_fails_without_calling_upstream(aws, providers_file, monkeypatch):
    with OpenAISimulator() as sim:
        providers_file({"providers": route("p", sim), "models": {"dall-e-3": [{"provider": "p"}]}})
        task = tasks.create("owner", "dall-e-3", {"model": "dall-e-3", "prompt": "a fox"})
        monkeypatch.setenv("TASK_DEADLINE_S", "0")
        time.sleep(0.01)
        ended = worker.submit_queued(task.id)
        assert ended.status == "failed" and ended.error["code"] == "upstream_timeout"
        assert sim.generations == []


# -- a polled async upstream is asked at most once a second ----------------------------------------------------

def test_concurrent_readers_make_one_upstream_check_a_second(inline_bus, providers_file, loopback_fetch):
    with AsyncRelaySimulator(behaviour=RelayBehaviour(checks_to_finish=10**9)) as sim:
        providers_file({"providers": route("relay", sim, "async-relay"),
                        "models": {"dall-e-3": [{"provider": "relay"}]}})
        task_id = generate({"model": "dall-e-3", "prompt": "a fox"}, query={"async": "true"}).json()["id"]
        inline_bus.drain()
        readers = [threading.Thread(target=get_task, args=(task_id,)) for _ in range(8)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(10)
        assert len(sim.checks) == 1  # eight reads at once, one check
        time.sleep(worker.check_policy().min_gap_ms / 1000)
        get_task(task_id)  # a second later the next read asks again, whatever the sweep's backoff says
        assert len(sim.checks) == 2


# -- a cancel that races the worker leaves nothing in the bucket -------------------------------------------------

def test_a_b64_result_that_lands_after_a_cancel_is_not_kept(inline_bus, providers_file):
    with OpenAISimulator(behaviour=Behaviour(delay_s=1.0)) as sim:
        providers_file({"providers": route("p", sim), "models": {"gpt-image-1": [{"provider": "p"}]}})
        task_id = generate({"model": "gpt-image-1", "prompt": "a fox", "n": 2},
                           query={"async": "true"}).json()["id"]
        deadline = time.monotonic() + 5
        while not sim.generations and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cancel(task_id).status == 200
        inline_bus.drain()
        assert tasks.get(task_id).status == "cancelled"
        assert s3_objects() == []


class SlowFiles(OpenAISimulator):
    """Serves its image files after a delay (a slow download); `downloading` is set when one begins."""

    downloading = threading.Event()

    def _serve_file(self, path):
        self.downloading.set()
        time.sleep(1.0)
        return super()._serve_file(path)


def test_a_download_that_lands_after_a_cancel_is_not_kept(inline_bus, providers_file, loopback_fetch):
    with SlowFiles() as sim:
        sim.downloading = threading.Event()
        providers_file({"providers": route("p", sim), "models": {"dall-e-3": [{"provider": "p"}]}})
        task_id = generate({"model": "dall-e-3", "prompt": "a fox"}, query={"async": "true"}).json()["id"]
        assert sim.downloading.wait(10)
        assert cancel(task_id).status == 200
        inline_bus.drain()
        assert tasks.get(task_id).status == "cancelled" and sim.image_downloads == 1
        assert s3_objects() == []


def test_a_task_that_fails_half_way_keeps_no_images(aws, providers_file, quiet_bus):
    class HalfBroken(OpenAISimulator):
        def generate(self, headers, body):
            import base64

            return Answer(200, {"created": 1, "data": [{"b64_json": base64.b64encode(png_bytes(8, 8)).decode()},
                                                       {"b64_json": base64.b64encode(b"<html>").decode()}]})

    with HalfBroken() as sim:
        providers_file({"providers": route("p", sim), "models": {"gpt-image-1": [{"provider": "p"}]}})
        task = tasks.create("owner", "gpt-image-1", {"model": "gpt-image-1", "prompt": "a fox", "n": 2})
        ended = worker.submit_queued(task.id)
        assert ended.status == "failed" and ended.error["code"] == "not_an_image"
        assert s3_objects() == []


def test_cancelling_a_task_between_its_stages_removes_what_it_had_stored(aws, providers_file, loopback_fetch,
                                                                        quiet_bus):  # "Task Generated" waits
    class Mixed(OpenAISimulator):
        def generate(self, headers, body):
            import base64

            return Answer(200, {"created": 1, "data": [{"b64_json": base64.b64encode(png_bytes(8, 8)).decode()},
                                                       {"url": self.file_url(8, 8, "second")}]})

    with Mixed() as sim:
        providers_file({"providers": route("p", sim), "models": {"gpt-image-1": [{"provider": "p"}]}})
        owner = keys.authenticate(f"Bearer {API_KEY}")
        task = tasks.create(owner, "gpt-image-1", {"model": "gpt-image-1", "prompt": "a fox", "n": 2})
        assert worker.submit_queued(task.id).stage == "generated" and len(s3_objects()) == 1
        assert cancel(task.id).status == 200
        assert s3_objects() == []


def test_a_finish_whose_answer_was_lost_keeps_the_images_it_wrote(aws, providers_file, quiet_bus, monkeypatch):
    """boto3 retries a write whose answer was lost; the retry meets its own condition as failed. The task did
    succeed: its images stay."""
    real_finish = tasks.finish

    def landed_then_lost(task, status, **fields):
        real_finish(task, status, **fields)
        return None  # what a retried conditional write answers after the first one landed

    monkeypatch.setattr(tasks, "finish", landed_then_lost)
    with OpenAISimulator() as sim:
        providers_file({"providers": route("p", sim), "models": {"gpt-image-1": [{"provider": "p"}]}})
        task = tasks.create("owner", "gpt-image-1", {"model": "gpt-image-1", "prompt": "a fox"})
        worker.submit_queued(task.id)
        assert tasks.get(task.id).status == "succeeded" and len(s3_objects()) == 1
