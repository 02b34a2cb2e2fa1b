"""Shared fixtures: AWS under moto's `mock_aws`, created from template.yaml itself, and loopback upstreams."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test"
OTHER_KEY = "sk-other"
# Fields of the current OpenAI Images reference that every dialect accepts and none sends on (the gateway does
# not stream, and input fidelity only means something for edits), with the `stream: false` a client may send.
NEWER_FIELDS = {"partial_images": 3, "input_fidelity": "high", "stream": False}


def _reset_clients() -> None:
    """The layer caches its boto3 clients and config: start every test from scratch."""
    from aws_lambda_powertools.utilities import parameters

    from imagegw import bus, checks, idempotency, keys, provider_config, shards, storage, table, transport, webhooks

    for cached in (table.task_table, bus.client, storage.s3, keys.keys_table, transport.session):
        cached.cache_clear()
    provider_config.forget()
    shards.forget()  # each test's table is new: its shard layout item too
    checks.forget()
    webhooks.forget_checked_targets()  # a host a test's resolver called public stays that test's
    parameters.clear_caches()  # SSM documents and secrets: each test reads its own
    idempotency.reset()


def _one_request_at_a_time(monkeypatch) -> None:
    """AWS serves each request atomically; moto's in-process backends do not when handlers run in threads
    (the inline bus), and a read can meet an item mid-update ("dictionary changed size during iteration").
    A lock around moto's request processing gives the service's behaviour back."""
    import threading

    from moto.core.botocore_stubber import BotocoreStubber

    lock = threading.RLock()
    process = BotocoreStubber.process_request

    def serialised(self, request):
        with lock:
            return process(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", serialised)


@pytest.fixture
def simulators():
    """Loopback simulators a test starts (`simulators.start(SomeSimulator(...))` enters one and returns it), each
    stopped when the test ends: after the fixtures that started them (e.g. one draining the inline bus) are done."""
    import contextlib
    from types import SimpleNamespace

    with contextlib.ExitStack() as stack:
        yield SimpleNamespace(start=stack.enter_context)


@pytest.fixture
def aws(monkeypatch):
    """A moto account holding the template's tables, bucket and bus, with the layer's env pointing at them."""
    for key, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true",
                       "POWERTOOLS_METRICS_NAMESPACE": "ImageGatewayTest",
                       # Handlers here run in threads of one process (the inline bus), sharing one metrics
                       # object: one's flush can empty it under another's (Lambda runs one at a time). Not
                       # flushed, as on the local stack; single_metric (ProviderConfigInvalid) still prints.
                       "POWERTOOLS_METRICS_DISABLED": "true",
                       "API_KEYS": f"{API_KEY},{OTHER_KEY}", "UPSTREAM_BACKOFF_S": "0.01",
                       "PROVIDERS_FILE": str(ROOT / "config" / "providers.local.json")}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "PROVIDERS_PARAM", "KEYS_TABLE", "ALLOW_LOOPBACK_FETCH"):
        monkeypatch.delenv(key, raising=False)
    _one_request_at_a_time(monkeypatch)
    with mock_aws():
        # The same template-driven creation as the local stack: tests run against the template's resources.
        from local.aws import clients, create_resources
        from local.template import load

        template = load(ROOT)
        create_resources(template, clients())
        for name in template.resource_variables - {"WEBHOOK_SECRET_ID"}:  # as the local stack: WEBHOOK_SECRET
            monkeypatch.setenv(name, template.environment[name])
        monkeypatch.setenv("KEYS_TABLE_NAME", os.environ["KEYS_TABLE"])
        monkeypatch.delenv("KEYS_TABLE")  # API_KEYS is the key source here
        _reset_clients()
        yield template
        _reset_clients()


@pytest.fixture
def inline_bus(aws):
    """EventBridge and its rules, in process: each hand-off runs the rule's function (the real handler)."""
    import fetch_handler
    import submit_handler
    from imagegw import bus
    from tests.apiclient import InlineBus

    inline = InlineBus({bus.TASK_QUEUED: submit_handler.lambda_handler,
                        bus.TASK_GENERATED: fetch_handler.lambda_handler})
    with bus.use(inline):
        yield inline
        inline.drain()


@pytest.fixture
def quiet_bus():
    """A bus that records what is published and delivers nothing: nobody picks the tasks up. Requested after
    `inline_bus`, it takes that one's place (fixtures are set up in the order a test names them)."""
    from imagegw import bus
    from tests.fakes import RecordingBus

    with bus.use(RecordingBus()) as recording:
        yield recording


@pytest.fixture
def fake_clock():
    """The gateway's clock, moved forward by the test (`clock.advance(ms)`), so retries and checks come due."""
    from imagegw import clock as gateway_clock
    from tests.fakes import ShiftedClock

    shifted = ShiftedClock()
    with gateway_clock.use(shifted):
        yield shifted


@pytest.fixture
def checks_at_once():
    """Async upstreams may be asked again at once, and the sweep finds their checks due at once."""
    from imagegw import worker

    with worker.use_check_policy(worker.CheckPolicy(min_gap_ms=0, min_delay_ms=0, max_delay_ms=0)) as policy:
        yield policy


@pytest.fixture
def providers_file(tmp_path, monkeypatch):
    """Write a provider configuration for this test and point PROVIDERS_FILE at it."""

    def write(config: dict) -> Path:
        path = tmp_path / "providers.json"
        path.write_text(json.dumps(config))
        monkeypatch.setenv("PROVIDERS_FILE", str(path))
        return path

    return write


@pytest.fixture
def loopback_fetch(monkeypatch):
    """Allow image downloads from loopback simulators (as the local stack does; never in AWS)."""
    monkeypatch.setenv("ALLOW_LOOPBACK_FETCH", "1")


def s3_objects(prefix: str = "images/") -> list[str]:
    bucket = os.environ["IMAGE_BUCKET"]
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))
