"""Smoke test of the docker-free local stack: `python -m local` started as `make run` starts it.

It runs as a subprocess on free loopback ports, and is driven over HTTP only: a sync generation that
yields a downloadable 1024x1024 PNG, a missing key (401) and an unknown route (404), both OpenAI-shaped.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

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


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    port, aws_port = _free_port(), _free_port()
    env = {**os.environ, "PORT": str(port), "AWS_PORT": str(aws_port), "SWEEP_INTERVAL_S": "1",
           "API_KEYS": "sk-local", "PYTHONUNBUFFERED": "1"}
    env.pop("PROVIDERS_FILE", None)  # the shipped local config
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
