"""The `imagegw` command line (cli/imagegw_cli): arguments, output, errors, generate against a loopback stub,
and batch against moto, where the test plays the batch feature by writing the results object itself."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from moto import mock_aws

from imagegw_cli import batch as batches
from imagegw_cli.client import image_ext
from imagegw_cli.main import build_parser, format_task, main
from imagegw_cli.progress import Progress, intervals, poll, task_line

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 32
TASK_ID = "imgtask_0123456789abcdef01234567"


def run(*argv: str, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


# --- arguments and output pieces ------------------------------------------------------------------------


def test_parser_defaults_and_bounds():
    parser = build_parser()
    gen = parser.parse_args(["generate", "a fox"])
    assert (gen.prompt, gen.model, gen.n, gen.size) == ("a fox", None, None, None)
    assert (gen.timeout, str(gen.out)) == (600.0, ".")
    assert parser.parse_args(["batch", "x.jsonl"]).timeout == 1800.0
    assert parser.parse_args(["status", "imgtask_1", "--json"]).json is True
    for bad in (["generate", "p", "--n", "0"], ["generate", "p", "--n", "two"], ["generate", "p", "--timeout", "-1"],
                ["status"], []):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(bad)
        assert exc.value.code == 2


def test_task_line_and_progress_on_a_pipe_prints_one_line_per_change():
    stream = io.StringIO()
    progress = Progress(stream, tty=False)
    for status, pct in (("queued", 0), ("in_progress", 45), ("in_progress", 45), ("succeeded", 100)):
        progress.show(task_line({"id": TASK_ID, "status": status, "progress": pct}))
    progress.done()
    assert stream.getvalue().splitlines() == [f"{TASK_ID}  queued        0%", f"{TASK_ID}  in_progress  45%",
                                              f"{TASK_ID}  succeeded   100%"]


def test_progress_on_a_terminal_rewrites_one_line():
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.show("task in_progress  45%")
    progress.show("task ok")
    progress.done()
    assert stream.getvalue() == "\rtask in_progress  45%" + "\rtask ok" + " " * 14 + "\n"


def test_poll_intervals_grow_to_two_seconds_and_the_wait_is_bounded():
    waits = intervals()
    assert [round(next(waits), 3) for _ in range(6)] == [0.5, 0.75, 1.125, 1.688, 2.0, 2.0]
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    value, done = poll(lambda: "running", lambda v: v == "done", 3.0, sleep=sleep, clock=lambda: now[0])
    assert (value, done) == ("running", False)
    assert slept == [0.5, 0.75, 1.125, 0.625] and now[0] == 3.0
    reads = iter(["a", "b", "done"])
    assert poll(lambda: next(reads), lambda v: v == "done", 3.0, sleep=lambda s: None) == ("done", True)


def test_image_extension_from_content_type_then_magic():
    assert image_ext("image/png", JPEG) == "png"
    assert image_ext("image/jpeg; charset=binary", b"") == "jpg"
    assert image_ext("application/octet-stream", JPEG) == "jpg"
    assert image_ext(None, PNG) == "png"
    assert image_ext(None, b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert image_ext("binary/octet-stream", b"GIF89a...") == "gif"
    assert image_ext(None, b"hello") == "bin"


def test_status_summary_is_human():
    text = format_task({"id": TASK_ID, "status": "failed", "progress": 30, "model": "dall-e-3",
                        "created_at": 1700000000, "updated_at": 1700000005,
                        "error": {"code": "upstream_error", "message": "provider down", "type": "upstream_error"}})
    assert text.splitlines() == [
        f"id         {TASK_ID}", "status     failed 30%", "model      dall-e-3",
        "created    2023-11-14 22:13:20 UTC", "updated    2023-11-14 22:13:25 UTC",
        "error      provider down (code: upstream_error)"]


# --- generate and status against a loopback stub of the gateway -----------------------------------------


class Stub:
    """A tiny gateway on loopback: scripted task states, two images, and a log of the requests."""

    def __init__(self) -> None:
        self.states: list[dict] = []  # what successive GETs of the task answer (the last one repeats)
        self.submit_reply: tuple[int, object] = (202, {"id": TASK_ID, "task_id": TASK_ID, "status": "queued",
                                                       "progress": 0})
        self.requests: list[dict] = []
        self.url = ""

    def task(self, status: str, progress: int, **extra) -> dict:
        return {"id": TASK_ID, "task_id": TASK_ID, "object": "image.task", "status": status, "progress": progress,
                "model": "gpt-image-1", **extra}

    def images(self) -> list[dict]:
        return [{"url": f"{self.url}/img/0.png?X-Amz-Signature=abc"}, {"url": f"{self.url}/img/1?sig=def"}]


@contextmanager
def stub_gateway() -> Iterator[Stub]:
    stub = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, body: object, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            stub.requests.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"),
                                  "body": json.loads(body)})
            status, reply = stub.submit_reply
            self._answer(status, reply if isinstance(reply, (dict, bytes)) else str(reply).encode(),
                         "application/json" if isinstance(reply, dict) else "text/html")

        def do_GET(self) -> None:
            stub.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
            if self.path.startswith("/img/0"):
                return self._answer(200, PNG, "image/png")
            if self.path.startswith("/img/1"):
                return self._answer(200, JPEG, "binary/octet-stream")
            if self.path == f"/v1/images/tasks/{TASK_ID}":
                state = stub.states.pop(0) if len(stub.states) > 1 else stub.states[0]
                return self._answer(200, state)
            return self._answer(404, {"error": {"message": f"No task found with id '{self.path.rsplit('/', 1)[-1]}'.",
                                                "type": "not_found_error", "param": "id", "code": None}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gateway(monkeypatch) -> Iterator[Stub]:
    with stub_gateway() as stub:
        monkeypatch.setenv("IMAGEGW_BASE_URL", stub.url + "/v1")
        monkeypatch.setenv("IMAGEGW_API_KEY", "sk-test")
        yield stub


def test_generate_submits_async_polls_with_progress_and_saves_each_image(gateway, tmp_path):
    gateway.states = [gateway.task("in_progress", 45), gateway.task("in_progress", 45),
                      gateway.task("succeeded", 100, data=gateway.images())]
    code, out, err = run("generate", "a lighthouse", "--model", "gpt-image-1", "--n", "2", "--size", "1024x1024",
                         "--out", str(tmp_path / "imgs"), sleep=lambda s: None)
    assert code == 0, err
    paths = [tmp_path / "imgs" / f"{TASK_ID}-0.png", tmp_path / "imgs" / f"{TASK_ID}-1.jpg"]
    assert out.splitlines() == [str(p) for p in paths]
    assert paths[0].read_bytes() == PNG and paths[1].read_bytes() == JPEG  # ext from content-type, then magic
    assert err.splitlines() == [f"{TASK_ID}  queued        0%", f"{TASK_ID}  in_progress  45%",
                                f"{TASK_ID}  succeeded   100%"]
    submit = gateway.requests[0]
    assert submit["path"] == "/v1/images/generations?async=true" and submit["auth"] == "Bearer sk-test"
    assert submit["body"] == {"prompt": "a lighthouse", "model": "gpt-image-1", "n": 2, "size": "1024x1024"}
    downloads = [r for r in gateway.requests if r["path"].startswith("/img/")]
    assert len(downloads) == 2 and all(r["auth"] is None for r in downloads)  # the key never goes to S3


def test_api_errors_print_message_and_param_with_exit_1(gateway):
    gateway.submit_reply = (400, {"error": {"message": "Invalid 'size' for gpt-image-1: '7x7'.",
                                            "type": "invalid_request_error", "param": "size", "code": None}})
    expected = "error: Invalid 'size' for gpt-image-1: '7x7'. (param: size)\n"
    assert run("generate", "p", "--size", "7x7") == (1, "", expected)
    gateway.submit_reply = (401, {"error": {"message": "Incorrect API key provided.", "type": "authentication_error",
                                            "param": None, "code": "invalid_api_key"}})
    assert run("generate", "p") == (1, "", "error: Incorrect API key provided.\n")
    gateway.submit_reply = (502, "<html>Bad Gateway</html>")
    assert run("generate", "p") == (1, "", "error: HTTP 502: <html>Bad Gateway</html>\n")
    assert run("status", "imgtask_nope") == (1, "", "error: No task found with id 'imgtask_nope'. (param: id)\n")


def test_failed_task_and_timeout_exit_1(gateway):
    gateway.states = [gateway.task("failed", 10, error={"code": "upstream_error", "message": "provider down"})]
    code, _, err = run("generate", "p", sleep=lambda s: None)
    assert code == 1 and err.endswith(f"error: task {TASK_ID} failed: provider down (code: upstream_error)\n")
    gateway.states = [gateway.task("in_progress", 5)]
    code, out, err = run("generate", "p", "--timeout", "0.2")
    assert code == 1 and out == ""
    assert f"error: task {TASK_ID} is still in_progress after 0.2 s (it goes on: imagegw status {TASK_ID})" in err


def test_status_human_and_json(gateway):
    gateway.states = [gateway.task("succeeded", 100, data=gateway.images(), created_at=1700000000)]
    code, out, _ = run("status", TASK_ID)
    assert code == 0 and "status     succeeded 100%" in out and "images     2" in out and "  [1] http" in out
    code, out, _ = run("status", TASK_ID, "--json")
    assert code == 0 and json.loads(out) == gateway.states[0]


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("IMAGEGW_API_KEY", raising=False)
    code, _, err = run("status", "imgtask_1")
    assert code == 1 and err.startswith("error: IMAGEGW_API_KEY is not set")


def test_unreachable_gateway(monkeypatch):
    monkeypatch.setenv("IMAGEGW_API_KEY", "sk-test")
    with stub_gateway() as stub:
        url = stub.url
    code, _, err = run("--base-url", url + "/v1", "status", "imgtask_1")
    assert code == 1
    assert err == f"error: cannot reach {url}/v1: connection failed (is the gateway running, and the URL right?)\n"


# --- batch against moto: the test plays the batch feature -----------------------------------------------

BUCKET = "imagegw-test-images"


@pytest.fixture
def s3(monkeypatch):
    for key, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "IMAGEGW_BUCKET"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def result_line(custom_id: str, status: str) -> str:
    row = {"custom_id": custom_id, "task_id": f"imgtask_{custom_id}", "status": status,
           "data": [{"url": "https://example/x.png", "s3_uri": f"s3://{BUCKET}/images/x.png"}]
           if status == "succeeded" else [],
           "error": None if status == "succeeded" else {"code": "upstream_error", "message": "provider down"}}
    return json.dumps(row)


def fake_batch_feature(s3, name: str, results: str):
    """A `sleep` for the CLI that, once batches/<name>.jsonl is there, writes results/<name>.jsonl."""
    seen: list[bytes] = []

    def sleep(seconds: float) -> None:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"batches/{name}.jsonl").get("Contents", [])
        if listing and not seen:
            seen.append(s3.get_object(Bucket=BUCKET, Key=f"batches/{name}.jsonl")["Body"].read())
            s3.put_object(Bucket=BUCKET, Key=f"results/{name}.jsonl", Body=results.encode())

    return sleep, seen


def test_batch_uploads_waits_downloads_results_and_summarizes(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGW_BUCKET", BUCKET)
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"custom_id": c, "body": {"prompt": f"a {c}"}}) + "\n" for c in "abc") + "\n")
    results = "\n".join(result_line(c, s) for c, s in (("a", "succeeded"), ("b", "failed"), ("c", "succeeded"))) + "\n"
    sleep, seen = fake_batch_feature(s3, "prompts", results)
    code, out, err = run("batch", str(source), sleep=sleep)
    assert code == 1  # a line failed
    assert seen == [source.read_bytes()]
    target = tmp_path / "prompts.results.jsonl"
    assert target.read_text() == results
    assert out.splitlines() == [str(target), "3 lines: 2 succeeded, 1 failed",
                                "  b  failed: provider down (code: upstream_error)"]
    assert err.splitlines()[0] == f"uploaded 3 lines to s3://{BUCKET}/batches/prompts.jsonl"
    assert "batch prompts: 3 lines, waiting for results/prompts.jsonl" in err


def test_batch_all_succeeded_with_bucket_and_name_options(s3, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"custom_id": "only", "body": {"prompt": "x"}}) + "\n")
    sleep, _ = fake_batch_feature(s3, "run-7", result_line("only", "succeeded") + "\n")
    code, out, _ = run("batch", str(source), "--bucket", BUCKET, "--name", "run-7", sleep=sleep)
    assert code == 0 and out.splitlines() == [str(tmp_path / "run-7.results.jsonl"), "1 line: 1 succeeded, 0 failed"]


def test_batch_run_again_waits_for_the_same_batch_without_uploading_it_twice(s3, tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "x"}}) + "\n")
    code, _, err = run("batch", str(source), "--bucket", BUCKET, "--timeout", "0.05", sleep=lambda s: None)
    assert code == 1 and "the same command waits for it again without uploading it twice" in err
    uploaded = s3.head_object(Bucket=BUCKET, Key="batches/p.jsonl")
    s3.put_object(Bucket=BUCKET, Key="results/p.jsonl", Body=(result_line("a", "succeeded") + "\n").encode())
    code, out, err = run("batch", str(source), "--bucket", BUCKET, sleep=lambda s: None)
    assert code == 0 and out.splitlines()[1] == "1 line: 1 succeeded, 0 failed"
    assert err.startswith(f"s3://{BUCKET}/batches/p.jsonl already holds this file (not uploaded again)")
    assert s3.head_object(Bucket=BUCKET, Key="batches/p.jsonl")["ETag"] == uploaded["ETag"]
    assert uploaded["Metadata"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_batch_timeout_bad_input_and_no_bucket(s3, tmp_path, monkeypatch):
    source = tmp_path / "p.jsonl"
    source.write_text('{"prompt": "x"}\n')
    code, _, err = run("batch", str(source), "--bucket", BUCKET, "--timeout", "0.05", sleep=lambda s: None)
    assert code == 1 and "error: no results/p.jsonl after 0.05 s (the batch goes on" in err
    assert run("batch", str(source)) == (1, "", "error: no bucket: set IMAGEGW_BUCKET (the stack's ImageBucketName "
                                                "output) or pass --bucket\n")
    source.write_text('{"prompt": "x"}\n[1]\n')
    expected = f"error: {source}:2: each line must be a JSON object\n"
    assert run("batch", str(source), "--bucket", BUCKET) == (1, "", expected)
    assert run("batch", str(source), "--bucket", BUCKET, "--name", "a/b")[2].startswith("error: invalid batch name")


def test_batch_ignores_results_older_than_its_upload(s3):
    s3.put_object(Bucket=BUCKET, Key="results/old.jsonl", Body=b"{}\n")
    later = datetime.now(UTC) + timedelta(hours=1)
    assert batches.wait_results(s3, BUCKET, "old", later, 0.05, sleep=lambda s: None) is None
    earlier = datetime.now(UTC) - timedelta(hours=1)
    assert batches.wait_results(s3, BUCKET, "old", earlier, 0.05, sleep=lambda s: None) == b"{}\n"


def test_local_stack_needs_no_aws_credentials(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    client = batches.s3_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"
    assert client._request_signer._credentials.access_key == "testing"
