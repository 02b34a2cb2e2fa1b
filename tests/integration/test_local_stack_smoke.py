"""Smoke test of the docker-free local stack: `python -m local` started as `make run` starts it.

It runs as a subprocess on free loopback ports, and is driven over HTTP only: a sync generation that
yields a downloadable 1024x1024 PNG, a missing key (401) and an unknown route (404), both OpenAI-shaped.
Then concurrency, as API Gateway + Lambda give it (an execution environment per concurrent request): a
sync request waiting on a slow upstream does not hold up others, and overlapping requests never see each
other's request.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.simulators.openai_sim import Behaviour, OpenAISimulator

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "imagegw local stack ready"
START_TIMEOUT_S = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_openai_error(body: dict, error_type: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]


class _Output:
    """Drains the subprocess's merged output (so a full pipe never blocks it) and notices the ready line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == READY_LINE:
                self.ready.set()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])


@contextmanager
def _local_stack(**extra_env: str) -> Iterator[str]:
    """`python -m local` on free ports until the ready line; its base URL. Stopped (cleanly) on exit."""
    port, aws_port = _free_port(), _free_port()
    env = {**os.environ, "PORT": str(port), "AWS_PORT": str(aws_port), "SWEEP_INTERVAL_S": "1",
           "API_KEYS": "sk-local", "PYTHONUNBUFFERED": "1"}
    env.pop("PROVIDERS_FILE", None)  # the shipped local config, unless extra_env names one
    env.update(extra_env)
    proc = subprocess.Popen([sys.executable, "-m", "local"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
    output = _Output(proc.stdout)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not output.ready.wait(0.2):
            if proc.poll() is not None:
                pytest.fail(f"the local stack exited with {proc.returncode}:\n{output.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the local stack was not ready within {START_TIMEOUT_S} s:\n{output.tail()}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, f"the local stack did not stop cleanly ({proc.returncode}):\n{output.tail()}"


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with _local_stack() as url:
        yield url


def test_sync_generation_returns_a_downloadable_png(api: str) -> None:
    resp = requests.post(f"{api}/v1/images/generations", timeout=60,
                         headers={"Authorization": "Bearer sk-local"},
                         json={"model": "gpt-image-1", "prompt": "a lighthouse at dawn", "size": "1024x1024"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body["created"], int)
    url = body["data"][0]["url"]
    assert url.startswith("http://127.0.0.1:")

    image = requests.get(url, timeout=30)  # a presigned URL: no Authorization header
    assert image.status_code == 200, image.text[:300]
    assert image.content[:8] == PNG_MAGIC
    assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)


def test_missing_key_is_401_openai_shaped(api: str) -> None:
    resp = requests.post(f"{api}/v1/images/generations", timeout=30,
                         json={"model": "gpt-image-1", "prompt": "a lighthouse at dawn"})
    assert resp.status_code == 401
    _assert_openai_error(resp.json(), "authentication_error")


def test_unknown_route_is_404_openai_shaped(api: str) -> None:
    resp = requests.get(f"{api}/v1/no-such-route", timeout=30, headers={"Authorization": "Bearer sk-local"})
    assert resp.status_code == 404
    body = resp.json()
    _assert_openai_error(body, "not_found_error")
    assert body["error"]["code"] == "unknown_route"


AUTH = {"Authorization": "Bearer sk-local"}


def test_a_slow_sync_request_does_not_block_other_requests(tmp_path: Path) -> None:
    with OpenAISimulator(behaviour=Behaviour(delay_s=4)) as sim:
        providers = tmp_path / "providers.json"
        providers.write_text(json.dumps({
            "providers": {"slow": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key},
                          "local": {"dialect": "local"}},
            "models": {"slow-model": [{"provider": "slow", "model": "dall-e-3"}],
                       "dall-e-3": [{"provider": "slow"}],
                       "gpt-image-1": [{"provider": "local"}]}}))
        with _local_stack(PROVIDERS_FILE=str(providers)) as api:
            slow: dict = {}

            def generate_slowly() -> None:
                started = time.monotonic()
                try:
                    slow["response"] = requests.post(
                        f"{api}/v1/images/generations", timeout=30, headers={**AUTH, "Prefer": "wait=10"},
                        json={"model": "dall-e-3", "prompt": "a patient heron", "size": "1024x1024"})
                finally:
                    slow["seconds"] = time.monotonic() - started

            thread = threading.Thread(target=generate_slowly, daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while not sim.generations and time.monotonic() < deadline:  # in flight: the upstream has it
                time.sleep(0.05)
            assert sim.generations, "the slow request never reached the upstream"
            assert thread.is_alive()

            started = time.monotonic()
            models = requests.get(f"{api}/v1/models", headers=AUTH, timeout=5)
            elapsed = time.monotonic() - started
            assert models.status_code == 200, models.text
            assert "dall-e-3" in [m["id"] for m in models.json()["data"]]
            assert elapsed < 1.5, f"GET /v1/models took {elapsed:.2f} s behind a slow request"
            assert thread.is_alive(), "the slow request was not in flight while the other was answered"

            thread.join(timeout=30)
            assert not thread.is_alive(), "the slow request never finished"
            response = slow["response"]
            assert response.status_code == 200, response.text
            assert len(response.json()["data"]) == 1
            assert slow["seconds"] >= 4  # it did wait for the upstream
            assert len(sim.generations) == 1


def test_concurrent_requests_each_get_their_own_answer(api: str) -> None:
    """Overlapping requests in different environments: every answer is the one to its own request.

    Each request names its own model (the shipped config's `*` route serves any name) and size, so a
    request served from another's event would answer with the wrong model, size, status or shape.
    """

    def one(i: int) -> tuple[int, str, dict, bytes | None]:
        model, size = f"concurrency-{i}", f"{64 + i}x{96 + i}"
        body = {"model": model, "prompt": f"request {i}", "size": size, "response_format": "b64_json"}
        headers = {**AUTH, "Prefer": "respond-async"} if i % 2 == 0 else AUTH
        resp = requests.post(f"{api}/v1/images/generations", headers=headers, json=body, timeout=60)
        image = None
        if resp.status_code == 200:
            image = base64.b64decode(resp.json()["data"][0]["b64_json"])
        return resp.status_code, resp.text, resp.json(), image

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(40), timeout=120))

    for i, (status, text, body, image) in enumerate(results):
        if i % 2 == 0:  # Prefer: respond-async -> 202 with this request's task
            assert status == 202, f"request {i}: {status} {text[:300]}"
            assert body["object"] == "image.task" and body["model"] == f"concurrency-{i}", body
        else:  # sync, local dialect -> 200 with this request's image
            assert status == 200, f"request {i}: {status} {text[:300]}"
            assert len(body["data"]) == 1
            assert image is not None and image[:8] == PNG_MAGIC
            assert Image.open(io.BytesIO(image)).size == (64 + i, 96 + i), f"request {i} got another's image"
