"""The transport against the loopback openai simulator: retries, Retry-After, error mapping."""

import time

import pytest

from imagegw import transport
from imagegw.dialects import HttpCall
from imagegw.errors import BadRequest, RateLimited, UpstreamFailed, UpstreamTimeout
from tests.simulators.openai_sim import Behaviour, OpenAISimulator


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BACKOFF_S", "0.01")
    transport.session.cache_clear()
    yield
    transport.session.cache_clear()


def call(sim, key="sk-upstream", body=None, timeout_s=10):
    return HttpCall("POST", sim.base_url + "/v1/images/generations", json=body or {"model": "dall-e-2", "prompt": "p"},
                    headers={"Authorization": f"Bearer {key}"}, timeout_s=timeout_s)


def test_429_then_503_are_retried_honouring_retry_after():
    with OpenAISimulator(behaviour=Behaviour(failures=[429, 503], retry_after="1")) as sim:
        started = time.monotonic()
        reply = transport.send(call(sim))
        assert reply.status == 200 and len(sim.generations) == 3
        assert time.monotonic() - started >= 2  # waited Retry-After: 1 s, twice


def test_persistent_failures_map_to_retriable_errors():
    with OpenAISimulator(behaviour=Behaviour(failures=[429] * 3)) as sim:
        with pytest.raises(RateLimited) as err:
            transport.send(call(sim))
        assert err.value.retriable and len(sim.generations) == 3
    with OpenAISimulator(behaviour=Behaviour(failures=[503] * 3)) as sim:
        with pytest.raises(UpstreamFailed) as err:
            transport.send(call(sim))
        assert err.value.retriable and err.value.status == 502


def test_credentials_and_request_errors():
    with OpenAISimulator() as sim:
        with pytest.raises(UpstreamFailed) as err:
            transport.send(call(sim, key="sk-secret-wrong"))
        assert err.value.code == "provider_auth_failed" and "sk-secret" not in err.value.message
        with pytest.raises(BadRequest) as err:
            transport.send(call(sim, body={"model": "dall-e-2", "prompt": "p", "size": "9x9"}))
        assert not err.value.retriable and "Invalid size" in err.value.message
        assert len(sim.generations) == 2  # no retry of a request error


def test_a_slow_upstream_times_out():
    with OpenAISimulator(behaviour=Behaviour(delay_s=2)) as sim:
        with pytest.raises(UpstreamTimeout):
            transport.send(call(sim, timeout_s=0.5))
        assert len(sim.generations) == 1  # a read timeout is not retried: the image may be in the works
