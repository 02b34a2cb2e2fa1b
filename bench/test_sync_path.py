"""Benchmark: the sync path, side by side in one run (`make bench`).

The real local stack (`python -m local`: moto server, the API's execution environments, the bus over SQS)
serves `dall-e-3` and `gpt-image-1` from one OpenAI simulator on loopback with no delay: dall-e-3 answers a
URL the simulator serves itself (the gateway downloads it), gpt-image-1 answers base64. The same requests are
sent two ways: the plain sync request (no header beyond auth: the fast path, the task runs in the request's
own invocation, `imagegw.sync`) and the task protocol (`Prefer: wait=25`: a put, "Task Queued" over the bus
to the submit function, the request reading its task until it ends).

Measured, for a URL answer and a base64 answer:

- Added latency. Each round sends the body straight to the simulator, then the same body through the
  gateway, once per way (which way goes first alternates); the added latency is the round's gateway time
  minus its direct time, so it includes the download and the S3 put. Printed: p50 of each, over `ROUNDS`
  rounds after `WARMUPS`.
- AWS calls per task, by kind: moto's server-mode request recorder (`/moto-api/recorder/...`, one JSON line
  per request it receives) over `RECORDED` sequential requests. DynamoDB and EventBridge calls are named by
  their `X-Amz-Target`, S3 calls by method and path. SQS is left out: it is the local stack's stand-in for
  EventBridge rule delivery, not a call the gateway makes.

And the table reads of a waiting re-attached request: with the simulator slowed to `SLOW_S`, a plain sync
request starts; once the simulator has it, the same request is sent again marked as an SDK retry
(`x-stainless-retry-count: 1`). The retry re-attaches to the first one's task and waits: the DynamoDB reads
recorded from its start to its answer, per second of waiting. Both get the same image, generated once.

The schedule's sweep is set to an hour, so it adds no calls while the figures are taken. Every process the
bench starts (the stack, the simulator's thread) is stopped by it.
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from imagegw.sync import WAIT_POLL_S  # the pauses between a waiting request's reads of its task
from tests.integration.conftest import Stack, start_stack
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

ROUNDS, WARMUPS = 25, 3
RECORDED = 10  # sequential requests of each kind and way whose AWS calls are recorded
SLOW_S = 3.0  # the simulator's delay while a retry re-attaches
AUTH = {"Authorization": "Bearer sk-local"}
WAYS = {"task protocol": {"Prefer": "wait=25"}, "fast path": {}}
KINDS = {"URL": {"model": "dall-e-3", "size": "1024x1024"}, "b64": {"model": "gpt-image-1", "size": "1024x1024"}}
SHOWN_CALLS = ["dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.GetItem", "dynamodb.Query", "s3.PutObject",
               "events.PutEvents"]
READS = ("dynamodb.GetItem", "dynamodb.Query", "dynamodb.BatchGetItem", "dynamodb.Scan")
MAX_ADDED_MS = 80
FAST_PATH_MAX = {"dynamodb.PutItem": 1, "dynamodb.UpdateItem": 2, "s3.PutObject": 1, "events.PutEvents": 1}
REQUEST_TIMEOUT_S = 60


# -- the stack and the simulator ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    with OpenAISimulator() as running:
        yield running


@pytest.fixture(scope="module")
def stack(sim, tmp_path_factory):
    work = tmp_path_factory.mktemp("syncbench")
    route = {"provider": "sim"}
    providers = work / "providers.json"
    providers.write_text(json.dumps({
        "providers": {"sim": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}},
        "models": {"dall-e-3": [route], "gpt-image-1": [route]}}))
    # The recorder is off until start-recording (no MOTO_ENABLE_RECORDING needed); its file would default to
    # ./moto_recording in the worktree.
    running = start_stack(PROVIDERS_FILE=str(providers), API_KEYS="sk-local", SWEEP_INTERVAL_S="3600",
                          MOTO_RECORDER_FILEPATH=str(work / "moto_recording"), LOCAL_LOG_LEVEL="WARNING")
    try:
        yield running
    finally:
        running.stop()


# -- moto's request recorder -----------------------------------------------------------------------------------

def _recorder(stack: Stack, action: str) -> str:
    reply = requests.post(f"http://127.0.0.1:{stack.aws_port}/moto-api/recorder/{action}", timeout=10)
    reply.raise_for_status()
    return reply.text


def _s3_operation(method: str, url: str, headers: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    has_key = len(parts.path.strip("/").split("/", 1)) > 1
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else ("PutObject" if has_key else "PutBucket")
    if method == "POST":
        return {"uploads": "CreateMultipartUpload", "uploadId": "CompleteMultipartUpload",
                "delete": "DeleteObjects"}.get(next((k for k in query if k in ("uploads", "uploadId", "delete")), ""),
                                               "POST")
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if not has_key:
        return "ListObjects" if method == "GET" else f"{method}Bucket"
    return {"GET": "GetObject", "HEAD": "HeadObject"}.get(method, method)


def operation(entry: dict) -> str | None:
    """`service.Operation` of one recorded request; None for SQS (the local stack's rule delivery)."""
    headers = {k.lower(): v for k, v in entry["headers"].items()}
    target = headers.get("x-amz-target", "")
    scope = headers.get("authorization", "").partition("Credential=")[2].split("/")
    service = scope[3] if len(scope) > 3 else "?"
    if target.startswith("AmazonSQS") or service == "sqs":
        return None
    if target.startswith("DynamoDB_"):
        return "dynamodb." + target.partition(".")[2]
    if target.startswith("AWSEvents"):
        return "events." + target.partition(".")[2]
    if service == "s3":
        return "s3." + _s3_operation(entry["method"], entry["url"], headers)
    return f"{service}.{target.partition('.')[2] or entry['method']}"


def recorded(stack: Stack) -> Counter:
    """The gateway's AWS calls recorded since the last reset, by operation."""
    lines = _recorder(stack, "download-recording").splitlines()
    return Counter(op for op in (operation(json.loads(line)) for line in lines if line.strip()) if op)


def settled(stack: Stack, *, quiet_s: float = 1.0, limit_s: float = 15.0) -> Counter:
    """The recording once no new gateway call came for `quiet_s` (work after the answer included)."""
    calls, deadline = recorded(stack), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = recorded(stack)
        if again == calls:
            break
        calls = again
    return calls


# -- requests ------------------------------------------------------------------------------------------------

def _timed(url: str, body: dict, headers: dict[str, str]) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    reply = requests.post(url, json=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
    return (time.perf_counter() - started) * 1000, reply


def direct(sim: OpenAISimulator, body: dict) -> float:
    ms, reply = _timed(sim.base_url + "/v1/images/generations", body, {"Authorization": f"Bearer {sim.api_key}"})
    assert reply.status_code == 200, reply.text
    return ms


def through(stack: Stack, body: dict, headers: dict[str, str]) -> tuple[float, dict]:
    ms, reply = _timed(stack.base_url + "/images/generations", body, {**AUTH, **headers})
    assert reply.status_code == 200, (reply.status_code, reply.text[:500])
    assert len(reply.json()["data"]) == 1, reply.text[:500]
    return ms, reply.json()


def _body(kind: str, label: str) -> dict:
    return {**KINDS[kind], "prompt": f"a lighthouse at dawn, {label}"}


# -- the three measurements ----------------------------------------------------------------------------------

def latency(sim: OpenAISimulator, stack: Stack, kind: str) -> dict[str, dict[str, float]]:
    """p50 of the direct call, the gateway call and their per-round difference, for each way."""
    times: dict[str, dict[str, list[float]]] = {way: {"direct": [], "gateway": [], "added": []} for way in WAYS}
    for i in range(WARMUPS + ROUNDS):
        ways = list(WAYS) if i % 2 else list(reversed(WAYS))
        for way in ways:
            body = _body(kind, f"{kind} round {i} {way}")
            upstream = direct(sim, body)
            gateway, _ = through(stack, body, WAYS[way])
            if i >= WARMUPS:
                times[way]["direct"].append(upstream)
                times[way]["gateway"].append(gateway)
                times[way]["added"].append(gateway - upstream)
    return {way: {name: statistics.median(values) for name, values in found.items()} for way, found in times.items()}


def calls_per_task(stack: Stack, kind: str, way: str) -> dict[str, float]:
    _recorder(stack, "reset-recording")
    _recorder(stack, "start-recording")
    try:
        for i in range(RECORDED):
            through(stack, _body(kind, f"{kind} recorded {i} {way}"), WAYS[way])
        calls = settled(stack)
    finally:
        _recorder(stack, "stop-recording")
    per_task = {op: count / RECORDED for op, count in calls.items()}
    per_task["total"] = sum(calls.values()) / RECORDED
    return per_task


def reattached_retry(sim: OpenAISimulator, stack: Stack) -> dict[str, float]:
    """A retry re-attaching to the task its first attempt runs: reads while it waits, and both answers."""
    body = _body("URL", "re-attached retry")
    first: dict[str, requests.Response] = {}
    before = len(sim.generations)
    sim.behaviour = Behaviour(delay_s=SLOW_S)
    try:
        thread = threading.Thread(target=lambda: first.setdefault("reply", requests.post(
            stack.base_url + "/images/generations", json=body, headers=AUTH, timeout=REQUEST_TIMEOUT_S)))
        thread.start()
        deadline = time.monotonic() + 30
        while len(sim.generations) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sim.generations) == before + 1, "the first attempt never reached the simulator"
        _recorder(stack, "reset-recording")
        _recorder(stack, "start-recording")
        try:
            waited, retry = _timed(stack.base_url + "/images/generations", body,
                                   {**AUTH, "x-stainless-retry-count": "1"})
            calls = recorded(stack)
        finally:
            _recorder(stack, "stop-recording")
        thread.join(REQUEST_TIMEOUT_S)
    finally:
        sim.behaviour = Behaviour()
    assert not thread.is_alive() and first["reply"].status_code == 200, first
    assert retry.status_code == 200, retry.text[:500]
    assert _image_path(first["reply"]) == _image_path(retry), (first["reply"].text, retry.text)
    assert len(sim.generations) == before + 1, "the retry generated again"
    reads = sum(calls[op] for op in READS)
    return {"wait_s": waited / 1000, "reads": reads, "per_s": reads / (waited / 1000),
            "gets": calls["dynamodb.GetItem"], "queries": calls["dynamodb.Query"]}


def _image_path(reply: requests.Response) -> str:
    """The stored image a sync answer names (its presigned URL without the signature)."""
    return urlsplit(reply.json()["data"][0]["url"]).path


# -- the table -------------------------------------------------------------------------------------------------

def _row(label: str, task: float, fast: float, digits: int = 1) -> None:
    ratio = f"{fast / task:.2f}" if task else "-"
    print(f"{label:<44}{task:>15.{digits}f}{fast:>12.{digits}f}{ratio:>9}")


def print_table(lat: dict, calls: dict, retry: dict) -> None:
    print(f"\n\nSync path, local stack (moto server), OpenAI simulator on loopback "
          f"({ROUNDS} rounds after {WARMUPS} warm-ups; calls over {RECORDED} tasks)")
    print(f"{'':<44}{'task protocol':>15}{'fast path':>12}{'ratio':>9}")
    for kind in KINDS:
        task, fast = lat[kind]["task protocol"], lat[kind]["fast path"]
        _row(f"direct upstream p50, {kind} answer (ms)", task["direct"], fast["direct"])
        _row(f"through the gateway p50, {kind} answer (ms)", task["gateway"], fast["gateway"])
        _row(f"added p50, {kind} answer (ms)", task["added"], fast["added"])
    for kind in KINDS:
        task, fast = calls[kind]["task protocol"], calls[kind]["fast path"]
        _row(f"AWS calls per task, {kind} answer", task["total"], fast["total"])
        for op in SHOWN_CALLS + sorted((set(task) | set(fast)) - set(SHOWN_CALLS) - {"total"}):
            _row(f"  {op}", task.get(op, 0.0), fast.get(op, 0.0))
    print(f"{'re-attached retry (fast path), waiting':<44}{'':>15}{retry['wait_s']:>10.2f} s")
    print(f"{'  reads while waiting (GetItem + Query)':<44}{'':>15}{retry['reads']:>12.0f}"
          f"   ({retry['gets']} GetItem, {retry['queries']} Query)")
    print(f"{'  reads per second of waiting':<44}{'':>15}{retry['per_s']:>12.2f}")


def test_the_sync_path_side_by_side(sim, stack):
    lat = {kind: latency(sim, stack, kind) for kind in KINDS}
    calls = {kind: {way: calls_per_task(stack, kind, way) for way in WAYS} for kind in KINDS}
    retry = reattached_retry(sim, stack)
    print_table(lat, calls, retry)
    for kind in KINDS:
        fast = calls[kind]["fast path"]
        assert lat[kind]["fast path"]["added"] <= MAX_ADDED_MS, (kind, lat[kind])
        assert not any(fast.get(op) for op in READS), (kind, "reads while the work runs", fast)
        assert all(fast.get(op, 0) <= most for op, most in FAST_PATH_MAX.items()), (kind, fast)
        assert fast["total"] <= sum(FAST_PATH_MAX.values()), (kind, "calls of another kind", fast)
    # A waiting request reads its task after each pause of WAIT_POLL_S, plus the look-up that found it and a
    # last read.
    assert retry["reads"] <= _reads_in(retry["wait_s"]) + 2, retry


def _reads_in(wait_s: float) -> int:
    """How many reads WAIT_POLL_S's pauses allow in `wait_s`."""
    reads, spent = 1, 0.0
    for pause in itertools.chain(WAIT_POLL_S, itertools.repeat(WAIT_POLL_S[-1])):
        spent += pause
        if spent > wait_s:
            return reads
        reads += 1
    raise AssertionError("unreachable")
