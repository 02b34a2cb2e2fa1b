"""A worker stage that cannot go on ends its task at once; one that meets something unexpected retries briefly,
then ends it `internal_error`. Either way the task never waits on its lease (WORKER_LEASE_S) to be found."""

import json
import time

import pytest
from botocore.exceptions import ClientError

import poll_handler
import submit_handler
from imagegw import bus, safe_fetch, storage, tasks, worker
from imagegw.dialects import REGISTRY, get_dialect
from tests.apiclient import FakeContext, bus_event
from tests.simulators.async_relay_sim import AsyncRelaySimulator, Behaviour as RelayBehaviour
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

SECRET = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def route(name, sim, dialect="openai"):
    return {name: {"dialect": dialect, "base_url": sim.base_url + "/v1", "api_key": sim.api_key}}


def config(model, *routes):
    providers = {name: spec for r in routes for name, spec in r.items()}
    return {"providers": providers, "models": {model: [{"provider": name} for name in providers]}}


@pytest.fixture
def reconfigure(tmp_path, monkeypatch):
    """Put another provider configuration in force (a new file: the loaded one is cached by path and mtime)."""
    versions = iter(range(1, 100))

    def write(document: dict) -> None:
        path = tmp_path / f"providers-v{next(versions)}.json"
        path.write_text(json.dumps(document))
        monkeypatch.setenv("PROVIDERS_FILE", str(path))

    return write


class FailuresAnnounced(list):
    """A bus sink that notes the ids of the "Image Task Failed" lifecycle events and passes every event on."""

    def __init__(self, then):
        super().__init__()
        self.then = then

    def send(self, detail_type, details):
        if detail_type == bus.TASK_FAILED:
            self.extend(detail["id"] for detail in details)
        self.then.send(detail_type, details)


@pytest.fixture
def failures_announced(aws):
    """The "Image Task Failed" lifecycle events published, by task id (every event goes on to EventBridge)."""
    with bus.use(FailuresAnnounced(then=bus.EventBridge())) as announced:
        yield announced


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(worker, "STAGE_BACKOFF_S", 0.01)


def queued(model="dall-e-3", **request):
    return tasks.create("owner", model, {"model": model, "prompt": "a red fox", **request})


def deliver_task_queued(task_id, context=None):
    """"Task Queued" as EventBridge delivers it to the submit function; the handler must not raise."""
    submit_handler.lambda_handler(bus_event(bus.TASK_QUEUED, task_id), context or FakeContext())


def throttled(operation="UpdateItem"):
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": f"Rate exceeded {SECRET}"}}, operation)


def raising(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def logged_tracebacks(caplog, task_id):
    return [r for r in caplog.records if r.exc_info and getattr(r, "task_id", None) == task_id]


# -- a task whose work cannot go on ends at once -----------------------------------------------------------------

def _unknown_dialect_in_the_file(reconfigure, monkeypatch, sim):
    reconfigure(config("dall-e-3", route("p", sim, dialect="openai-v9")))


def _dialect_no_module_speaks(reconfigure, monkeypatch, sim):
    monkeypatch.delitem(REGISTRY, "openai")


@pytest.mark.parametrize("break_config", [_unknown_dialect_in_the_file, _dialect_no_module_speaks],
                         ids=["a providers file naming an unknown dialect", "a dialect no module speaks"])
def test_an_unknown_dialect_fails_the_task_on_its_first_task_queued(aws, providers_file, reconfigure, monkeypatch,
                                                                    failures_announced, break_config):
    with OpenAISimulator() as sim:
        providers_file(config("dall-e-3", route("p", sim)))
        task = queued()
        break_config(reconfigure, monkeypatch, sim)
        started = time.monotonic()
        deliver_task_queued(task.id)
        ended = tasks.get(task.id)
        assert time.monotonic() - started < 2
        assert ended.status == "failed" and ended.error["code"] == "provider_config_invalid", ended.error
        assert ended.error["type"] == "server_error" and "dialect" in ended.error["message"]
        assert ended.lease_id is None and ended.next_check_at is None  # not left for the sweep to find later
        assert sim.generations == []
        assert failures_announced == [task.id]
        deliver_task_queued(task.id)  # a redelivery finds it ended
        assert tasks.get(task.id).completed_at == ended.completed_at


@pytest.fixture
def relay_task(aws, providers_file, loopback_fetch, checks_at_once, quiet_bus):
    """A task waiting on an async upstream that never finishes; the first route (a 503 wall) fell back to it.
    Its checks are due at once; hand-offs are not delivered."""
    with OpenAISimulator(behaviour=Behaviour(failures=[503] * 3)) as down, \
            AsyncRelaySimulator(behaviour=RelayBehaviour(checks_to_finish=10**9)) as relay, \
            AsyncRelaySimulator(api_key=relay.api_key) as other:
        providers_file(config("dall-e-3", route("down", down), route("relay", relay, "async-relay")))
        task = worker.submit_queued(queued().id)
        assert task.stage == "waiting" and task.route_index == 1 and task.upstream["provider"] == "relay"
        yield task, down, relay, other


def _route_removed(reconfigure, down, relay, other):
    reconfigure(config("dall-e-3", route("down", down)))


def _provider_replaced(reconfigure, down, relay, other):
    reconfigure(config("dall-e-3", route("down", down), route("other", other, "async-relay")))


@pytest.mark.parametrize("change", [_route_removed, _provider_replaced],
                         ids=["its route removed", "its route now names another provider"])
def test_a_waiting_task_whose_route_is_gone_fails_at_its_next_check(relay_task, reconfigure, failures_announced,
                                                                    change):
    task, down, relay, other = relay_task
    change(reconfigure, down, relay, other)
    counts = worker.sweep()
    ended = tasks.get(task.id)
    assert counts["checked"] == 1
    assert ended.status == "failed" and ended.error["code"] == "provider_config_invalid", ended.error
    assert "no longer" in ended.error["message"]
    assert relay.checks == [] and other.checks == []  # nobody asked about an id their provider never issued
    assert failures_announced == [task.id]


# -- unexpected exceptions: retried briefly, then internal_error --------------------------------------------------

def _fail_once(monkeypatch, module, name, error):
    real = getattr(module, name)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return calls


FAIL_ONCE = {
    "storing a b64 image (S3 throttled)": ("gpt-image-1", storage, "store_bytes", throttled("PutObject")),
    "finishing after the downloads (DynamoDB throttled)": ("dall-e-3", tasks, "finish", throttled()),
    "building the upstream request (a bug, before anything went out)":
        ("dall-e-3", get_dialect("openai"), "build_submit", KeyError("size")),
}


@pytest.mark.parametrize("case", FAIL_ONCE.values(), ids=FAIL_ONCE.keys())
def test_an_unexpected_exception_once_is_retried_and_the_task_succeeds(inline_bus, providers_file, loopback_fetch,
                                                                       quick_backoff, monkeypatch, caplog, case):
    model, module, name, error = case
    with OpenAISimulator() as sim:
        providers_file(config(model, route("p", sim)))
        task = queued(model)
        calls = _fail_once(monkeypatch, module, name, error)
        deliver_task_queued(task.id)
        inline_bus.drain()
        done = tasks.get(task.id)
        assert done.status == "succeeded" and len(done.images) == 1, done.error
        assert len(calls) == 2
        assert len(sim.generations) == 1  # the retry repeated the step that failed, never a paid upstream call
    [logged] = logged_tracebacks(caplog, task.id)
    assert logged.exc_info[0] is type(error)


def test_an_unexpected_exception_every_time_ends_the_task_internal_error(aws, providers_file, quick_backoff,
                                                                         monkeypatch, caplog, failures_announced):
    with OpenAISimulator() as sim:
        providers_file(config("gpt-image-1", route("p", sim)))
        task = queued("gpt-image-1")
        calls = []

        def broken(*args, **kwargs):
            calls.append(1)
            raise RuntimeError(f"could not store: credentials {SECRET}")

        monkeypatch.setattr(storage, "store_bytes", broken)
        started = time.monotonic()
        deliver_task_queued(task.id)
        ended = tasks.get(task.id)
        assert time.monotonic() - started < 3
        assert len(sim.generations) == 1
    assert len(calls) == worker.STAGE_ATTEMPTS
    assert ended.status == "failed"
    assert ended.error == {"code": "internal_error", "type": "server_error",
                           "message": "The task failed unexpectedly (RuntimeError)."}
    assert SECRET not in json.dumps(ended.__dict__, default=str)
    assert failures_announced == [task.id]
    tracebacks = logged_tracebacks(caplog, task.id)
    assert len(tracebacks) == worker.STAGE_ATTEMPTS  # what happened is in the log, for the operator only
    assert all(SECRET in str(record.exc_info[1]) for record in tracebacks)


def test_the_default_backoff_is_seconds_not_the_lease(aws, providers_file, monkeypatch):
    with OpenAISimulator() as sim:
        providers_file(config("gpt-image-1", route("p", sim)))
        task = queued("gpt-image-1")
        monkeypatch.setattr(storage, "store_bytes", raising(throttled("PutObject")))
        started = time.monotonic()
        deliver_task_queued(task.id)
        took = time.monotonic() - started
    assert tasks.get(task.id).error["code"] == "internal_error"
    assert 1 + 2 <= took < 10  # 1 s, then 2 s between the three attempts


def test_a_retry_waits_only_while_the_lambda_has_time_for_it(aws, providers_file, monkeypatch, caplog):
    class EndingSoon(FakeContext):
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 3_000  # less than a backoff, the attempt and the margin

    with OpenAISimulator() as sim:
        providers_file(config("gpt-image-1", route("p", sim)))
        task = queued("gpt-image-1")
        monkeypatch.setattr(storage, "store_bytes", raising(throttled("PutObject")))
        started = time.monotonic()
        deliver_task_queued(task.id, EndingSoon())
        assert time.monotonic() - started < 1  # ended now, rather than killed mid-backoff holding the lease
    assert tasks.get(task.id).error["code"] == "internal_error"
    assert len(logged_tracebacks(caplog, task.id)) == 1


def test_an_unexpected_exception_after_the_upstream_request_is_not_retried(inline_bus, providers_file,
                                                                           quick_backoff, monkeypatch, caplog):
    """The provider may have taken (and billed) the request: a second one could pay twice."""
    with OpenAISimulator() as sim:
        providers_file(config("dall-e-3", route("p", sim)))
        task = queued()
        monkeypatch.setattr(safe_fetch, "check_url", raising(ValueError(SECRET)))
        deliver_task_queued(task.id)
        inline_bus.drain()
        ended = tasks.get(task.id)
        assert len(sim.generations) == 1
    assert ended.status == "failed" and ended.error["code"] == "internal_error"
    assert ended.error["message"] == "The task failed unexpectedly (ValueError)."
    assert len(logged_tracebacks(caplog, task.id)) == 1


def test_one_task_that_cannot_be_read_does_not_hold_up_the_sweep(relay_task, monkeypatch):
    task, down, relay, other = relay_task
    stuck = tasks.create("owner", "dall-e-3", {"model": "dall-e-3", "prompt": "p"}, check_after_s=0)
    real_get = tasks.get
    monkeypatch.setattr(tasks, "get", lambda task_id, *a: raising(throttled("GetItem"))()
                        if task_id == stuck.id else real_get(task_id, *a))
    counts = worker.sweep()
    assert counts["errors"] == 1 and counts["checked"] == 1
    assert len(relay.checks) == 1 and tasks.get(task.id).status == "in_progress"


def test_the_poll_handler_sweep_ends_a_task_whose_route_is_gone(relay_task, reconfigure):
    task, down, relay, other = relay_task
    _route_removed(reconfigure, down, relay, other)
    counts = poll_handler.lambda_handler({"source": "aws.events", "detail-type": "Scheduled Event"}, FakeContext())
    assert counts["checked"] == 1
    assert tasks.get(task.id).error["code"] == "provider_config_invalid"
