"""Start the docker-free local stack (`python -m local`, as `make run` does) on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY = "imagegw local stack ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    proc: subprocess.Popen
    port: int
    aws_port: int
    output: deque

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_stack(**env: str) -> Stack:
    port, aws_port = free_port(), free_port()
    full_env = {**os.environ, "PORT": str(port), "AWS_PORT": str(aws_port), "SWEEP_INTERVAL_S": "1",
                "PYTHONUNBUFFERED": "1", **env}
    for key in ("AWS_ENDPOINT_URL", "PROVIDERS_PARAM", "KEYS_TABLE"):
        full_env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "local"], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output: deque = deque(maxlen=400)
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            output.append(line)
            if READY in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    stack = Stack(proc, port, aws_port, output)
    deadline = time.monotonic() + 90
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            stack.stop()
            raise RuntimeError("local stack did not start:\n" + "".join(output))
    return stack


@pytest.fixture(scope="session")
def stack():
    """The stack as `make run` starts it: shipped config (every model -> local), key sk-local."""
    running = start_stack(API_KEYS="sk-local,sk-other")
    yield running
    running.stop()
