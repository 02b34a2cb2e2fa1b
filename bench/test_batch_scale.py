"""Benchmark: a 10,000-line batch job, end to end, with the `local` dialect (`make bench`).

A 1,000-line and a 10,000-line JSONL go through the real submit handler: S3's "Object Created", then
"Batch Continue" and one "Task Queued" per line, each run as its own invocation with a Lambda-like clock
(600 s, the submit function's timeout). Both must complete: a results file with one line per input line,
in input order, every task succeeded with its stored image.

Printed, for each size and as the 10k / 1k ratio: wall time, the runs it took, and the peak memory
(tracemalloc, new allocations during the run) of the busiest reading run and of the results-writing run.
Reading holds one line at a time, so its ratio stays near 1. The results upload holds its current part
(`batches.results.RESULTS_TRANSFER`: 5 MiB, S3's smallest, about 9,000 result lines); below one part it grows with
the file, so a second benchmark writes the results of 10,000 and 30,000 finished tasks to show that past
one part it does not.

moto runs as a server in its own process, so the items and objects it stores are not counted as the
gateway's memory. The bus is in process: publishing appends to a queue drained in order (EventBridge and
the template's rules; tests/unit/test_batches.py does the same).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from collections import Counter, deque
from contextlib import redirect_stdout
from pathlib import Path
from urllib.request import urlopen

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The two sizes compared (BENCH_BATCH_LINES="200,1000" for a quick look).
SIZES = tuple(int(n) for n in os.environ.get("BENCH_BATCH_LINES", "1000,10000").split(","))
LAMBDA_TIMEOUT_MS = 600_000  # SubmitFunction's Timeout in template.yaml
MIB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def aws():
    """moto's server on loopback in a child process, holding the template's tables, bucket and bus."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):  # up to 10 s
        try:
            urlopen(f"{url}/moto-api/data.json", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail("moto server did not start")
    saved = dict(os.environ)
    os.environ.update({
        "AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING", "PROVIDERS_FILE": str(ROOT / "config" / "providers.local.json")})
    for key in ("PROVIDERS_PARAM", "KEYS_TABLE"):
        os.environ.pop(key, None)
    try:
        from local.aws import clients, create_resources
        from local.template import load

        template = load(ROOT)
        create_resources(template, clients())
        for name in template.resource_variables:
            os.environ[name] = template.environment[name]
        # Every AWS call the gateway's clients make (they are created later, on this session).
        boto3.DEFAULT_SESSION.events.register("before-call", _count_call)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a server holding many objects can be slow to stop
            server.kill()
            server.wait(timeout=10)


CALLS: Counter = Counter()


def _count_call(model, **_):
    CALLS[f"{model.service_model.service_name}.{model.name}"] += 1


class LambdaClock:
    """A context whose remaining time runs down from the function's timeout, as in Lambda."""

    function_name = "imagegw-bench"
    memory_limit_in_mb = 512  # SubmitFunction (Globals)
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imagegw-bench"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def __init__(self):
        self._deadline = time.monotonic() + LAMBDA_TIMEOUT_MS / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


class Run:
    """One batch through the handlers: the bus queue, the runs, and the memory each batch run needed."""

    def __init__(self, monkeypatch):
        from imagegw.batches import reader, results

        self.queue: deque = deque()  # (detail-type, detail): small, so the queue itself weighs little
        self.lifecycle = 0
        self.reads: list[int] = []  # peak bytes of each reading run
        self.writes: list[int] = []  # peak bytes of the results-writing run
        self.invocations = 0
        monkeypatch.setattr(reader, "read", self._measured(reader.read, self.reads))
        monkeypatch.setattr(results, "write", self._measured(results.write, self.writes))

    def send(self, kind, details):
        """The bus (a `bus.use` sink): hand-offs and "Batch Continue" are queued for the submit function."""
        from imagegw import bus

        if kind in (bus.TASK_SUCCEEDED, bus.TASK_FAILED):
            self.lifecycle += len(details)  # for the team's own rules, not ours
        else:
            self.queue.extend((kind, detail) for detail in details)

    @staticmethod
    def _measured(fn, peaks: list[int]):
        def measured(*args, **kwargs):
            tracemalloc.start()
            try:
                return fn(*args, **kwargs)
            finally:
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()

        return measured

    def invoke(self, event: dict) -> None:
        import submit_handler

        self.invocations += 1
        submit_handler.lambda_handler(event, LambdaClock())

    def drain(self) -> None:
        from tests.apiclient import bus_event

        while self.queue:
            kind, detail = self.queue.popleft()
            self.invoke({**bus_event(kind, ""), "detail": detail})


def _s3_event(key: str, size: int, etag: str) -> dict:
    event = json.loads((ROOT / "events" / "s3-batch-created.json").read_text())
    event["detail"]["bucket"]["name"] = os.environ["IMAGE_BUCKET"]
    event["detail"]["object"].update(key=key, size=size, etag=etag)
    return event


def _run_batch(n: int) -> dict:
    from imagegw import storage

    key = f"batches/bench-{n}.jsonl"
    body = "".join(json.dumps({"custom_id": f"id-{i}", "body": {"model": "local-tiny", "prompt": f"poster {i}",
                                                                "size": "64x64"}}) + "\n" for i in range(n)).encode()
    s3 = storage.s3()
    etag = s3.put_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key, Body=body)["ETag"].strip('"')
    CALLS.clear()
    from imagegw import bus

    with pytest.MonkeyPatch.context() as patch, open(os.devnull, "w") as quiet, redirect_stdout(quiet):
        run = Run(patch)
        with bus.use(run):
            started = time.monotonic()
            run.invoke(_s3_event(key, len(body), etag))
            run.drain()
            elapsed = time.monotonic() - started
    # Completion: one result line per input line, in input order, each task succeeded with its image.
    results = s3.get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=f"results/bench-{n}.jsonl")["Body"]
    count, size = 0, 0
    for count, raw in enumerate(results.iter_lines(), start=1):
        size += len(raw) + 1
        line = json.loads(raw)
        assert line["custom_id"] == f"id-{count - 1}", line
        assert line["status"] == "succeeded" and line["error"] is None, line
        assert len(line["data"]) == 1 and line["data"][0]["s3_uri"].endswith(".png"), line
    assert count == n
    assert run.lifecycle == n and len(run.writes) == 1
    return {"lines": n, "seconds": elapsed, "invocations": run.invocations, "aws_calls": sum(CALLS.values()),
            "reading_runs": len(run.reads), "read_peak": max(run.reads), "write_peak": run.writes[0],
            "results_bytes": size, "ms_per_line": elapsed / n * 1000}


def _print_table(title: str, small: dict, big: dict, rows: list[str]) -> None:
    """Both sizes side by side and their ratio, measured in this one run."""
    print(f"\n\n{title}\n{'':<24}{small['lines']:>12,}{big['lines']:>12,}{'ratio':>10}")
    for name in rows:
        if name.endswith(("_peak", "_bytes")):
            show = lambda v: f"{v / MIB:.2f} MiB"  # noqa: E731
        else:
            show = (lambda v: f"{v:,}") if isinstance(small[name], int) else (lambda v: f"{v:.1f}")
        ratio = big[name] / small[name]
        print(f"{name.replace('_', ' '):<24}{show(small[name]):>12}{show(big[name]):>12}{ratio:>10.2f}")


def test_a_ten_thousand_line_batch_completes_in_bounded_memory(aws, monkeypatch):
    # The deployed default: 2,000 lines a run (fewer if the clock runs low), so 10,000 lines take 5 runs.
    monkeypatch.setenv("BATCH_LINES_PER_RUN", "2000")
    small, big = (_run_batch(n) for n in SIZES)
    _print_table("Batch job, local dialect, moto server in its own process (1 line = 1 task = 1 image)", small, big,
                 ["seconds", "invocations", "aws_calls", "reading_runs", "read_peak", "write_peak", "results_bytes",
                  "ms_per_line"])
    print(f"{'process max RSS':<24}{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:>23.0f} MiB (both runs)")
    # The claim under test: reading holds a line at a time, so its peak does not grow with the line count.
    assert big["read_peak"] < 2 * small["read_peak"] + 4 * MIB
    assert big["write_peak"] < 4 * 5 * MIB  # a few copies of one 5 MiB part, not of the file


def _write_only(n: int) -> dict:
    """Write the results of an n-line batch whose tasks are already finished (made directly, 25 a call)."""
    from imagegw import clock, table
    from imagegw.batches import record, results

    key = f"batches/finished-{n}.jsonl"
    bucket = os.environ["IMAGE_BUCKET"]
    batch = record.BatchRecord(id=record.record_id(bucket, key, "bench"), bucket=bucket, key=key, etag="bench",
                               results_key=record.results_key(key), lines=n, total=n, terminal=n, done=True,
                               base_ns=time.time_ns(), created_at=clock.now_ms())
    table.task_table().put_item(Item=batch.to_item())
    now = clock.now_ms()
    with table.task_table().batch_writer() as writer:
        for line in range(1, n + 1):
            task_id = batch.task_id(line)
            writer.put_item(Item={
                "id": task_id, "owner": "events", "status": "succeeded", "stage": "done", "model": "local-tiny",
                "request": {"model": "local-tiny", "prompt": f"poster {line}"}, "created_at": now, "updated_at": now,
                "batch": batch.id, "line": line, "custom_id": f"id-{line - 1}",
                "images": [{"index": 0, "key": f"images/{task_id}/0.png", "content_type": "image/png", "size": 1000}]})
    tracemalloc.start()
    started = time.monotonic()
    assert results.write(batch)
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    obj = boto3.client("s3").head_object(Bucket=bucket, Key=batch.results_key)
    return {"lines": n, "seconds": elapsed, "write_peak": peak, "results_bytes": obj["ContentLength"]}


def test_results_writing_memory_stays_flat_past_one_part(aws):
    """Past S3's 5 MiB part (about 9,000 result lines) the results upload needs no more memory per line."""
    sizes = tuple(int(n) for n in os.environ.get("BENCH_RESULTS_LINES", "10000,30000").split(","))
    small, big = (_write_only(n) for n in sizes)
    _print_table("Results writing alone (tasks already finished)", small, big,
                 ["seconds", "results_bytes", "write_peak"])
    assert big["write_peak"] < 1.5 * small["write_peak"]
