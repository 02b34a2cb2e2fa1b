"""The local stack under load, started as `make run` starts it (`python -m local`), driven over HTTP only.

Deployed, API Gateway gives each concurrent request an execution environment of its own: two sync requests
waiting on a slow upstream do not hold up `GET /v1/models`, and a burst of requests is answered, never
reset. Locally the stack keeps API_CONCURRENCY environments warm and starts more on demand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import ROOT, Stack, start_stack
from tests.integration.test_local_stack_http import burst
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

AUTH = {"Authorization": "Bearer sk-local"}
UPSTREAM_DELAY_S = 8
MODELS_BOUND_S = 6  # a cold start of one more environment included


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[OpenAISimulator]:
    with OpenAISimulator(behaviour=Behaviour(delay_s=UPSTREAM_DELAY_S)) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(slow_upstream: OpenAISimulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    providers = tmp_path_factory.mktemp("load") / "providers.json"
    providers.write_text(json.dumps({
        "providers": {"slow": {"dialect": "openai", "base_url": slow_upstream.base_url,
                               "api_key": slow_upstream.api_key},
                      "local": {"dialect": "local"}},
        "models": {"dall-e-3": [{"provider": "slow"}], "gpt-image-1": [{"provider": "local"}]}}))
    # Two warm environments (whatever the machine's cores), at most four: the burst below stays light.
    running = start_stack(API_KEYS="sk-local", PROVIDERS_FILE=str(providers), API_CONCURRENCY="2",
                          API_MAX_CONCURRENCY="4")
    yield running
    running.stop()


def test_two_slow_sync_requests_do_not_block_models(stack: Stack, slow_upstream: OpenAISimulator) -> None:
    slow: dict[int, requests.Response | Exception] = {}

    def generate_slowly(i: int) -> None:
        try:
            slow[i] = requests.post(f"{stack.base_url}/images/generations", timeout=40,
                                    headers={**AUTH, "Prefer": "wait=20"},
                                    json={"model": "dall-e-3", "prompt": f"a patient heron {i}", "size": "1024x1024"})
        except requests.RequestException as exc:
            slow[i] = exc

    threads = [threading.Thread(target=generate_slowly, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(slow_upstream.generations) < 2 and time.monotonic() < deadline:  # both held by the upstream
        time.sleep(0.05)
    assert len(slow_upstream.generations) == 2, "the slow requests never reached the upstream"

    started = time.monotonic()
    models = requests.get(f"{stack.base_url}/models", headers=AUTH, timeout=30)
    elapsed = time.monotonic() - started
    assert models.status_code == 200, models.text
    assert "dall-e-3" in [m["id"] for m in models.json()["data"]]
    assert elapsed < MODELS_BOUND_S, f"GET /v1/models took {elapsed:.2f} s behind two slow requests"
    assert all(t.is_alive() for t in threads), "the slow requests were not in flight while /v1/models was answered"
    print(f"GET /v1/models behind two slow requests: {elapsed:.2f} s")

    for thread in threads:
        thread.join(timeout=40)
    for i in range(2):
        response = slow[i]
        assert isinstance(response, requests.Response), response
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 1


def test_a_burst_of_200_connections_is_all_answered(stack: Stack) -> None:
    """200 connections opened at once, each a request over at most 4 environments: each one is answered 200,
    or throttled with an OpenAI-shaped 429 and Retry-After; none is reset or closed without an answer."""
    request = (f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nAuthorization: Bearer sk-local\r\n"
               "Connection: close\r\n\r\n").encode()
    started = time.monotonic()
    outcomes = burst(stack.port, 200, request)
    elapsed = time.monotonic() - started
    failures = [o for o in outcomes if isinstance(o, str) or o[0] not in (200, 429)]
    assert not failures, failures[:5]
    for status, headers, body in outcomes:  # type: ignore[misc] - no failures: all responses
        if status == 200:
            assert "dall-e-3" in [m["id"] for m in json.loads(body)["data"]]
        else:
            error = json.loads(body)["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
            assert int(headers["retry-after"]) >= 1
    served = sum(o[0] == 200 for o in outcomes)  # type: ignore[index]
    assert served >= 100, f"only {served} of 200 served"
    print(f"200 connections at once, GET /v1/models: {served} served, {200 - served} throttled, {elapsed:.2f} s")


def test_the_stack_process_tree_is_bounded(stack: Stack) -> None:
    """After the load above, the stack never runs more than API_MAX_CONCURRENCY environments."""
    children = Path(f"/proc/{stack.proc.pid}/task/{stack.proc.pid}/children")
    if not children.exists():
        pytest.skip("no /proc children listing on this system")
    pids = children.read_text().split()
    names = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids if Path(f"/proc/{pid}").exists()]
    environments = [n for n in names if b"multiprocessing" in n and b"resource_tracker" not in n]
    assert 2 <= len(environments) <= 4, names


@pytest.mark.parametrize(("maximum", "message"), [("1", "must be at least API_CONCURRENCY"),
                                                  ("many", "must be a whole number")])
def test_an_invalid_api_max_concurrency_stops_the_start_with_a_reason(maximum: str, message: str) -> None:
    env = {**os.environ, "PORT": "0", "AWS_PORT": "0", "API_CONCURRENCY": "2", "API_MAX_CONCURRENCY": maximum}
    done = subprocess.run([sys.executable, "-m", "local"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "API_MAX_CONCURRENCY" in done.stderr and message in done.stderr, done.stderr[-500:]
