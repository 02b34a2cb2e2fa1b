"""`imagegw`: generate images, read a task, run a batch. The arguments and the output; the calls are elsewhere.

Environment: IMAGEGW_BASE_URL (default http://127.0.0.1:3000/v1), IMAGEGW_API_KEY (required by generate
and status), IMAGEGW_BUCKET (batch). Exit codes: 0 done, 1 an error (API error, failed task, timeout,
failed batch lines), 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from . import batch as batches
from .client import DEFAULT_BASE_URL, TERMINAL, ApiError, Client
from .progress import Progress, poll, task_line


class CliError(Exception):
    """A failure to print as `error: ...` with exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegw", description="Command line for the imagegw image gateway.",
        epilog="Environment: IMAGEGW_BASE_URL (default %s), IMAGEGW_API_KEY, IMAGEGW_BUCKET (batch), and the "
               "usual AWS variables (AWS_ENDPOINT_URL=http://127.0.0.1:4566 for the local stack)." % DEFAULT_BASE_URL)
    parser.add_argument("--base-url", default=None, help="the gateway's OpenAI base URL (default: $IMAGEGW_BASE_URL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,status,batch}")

    gen = sub.add_parser("generate", help="generate images (async), show progress, save them",
                         description="Submit with ?async=true, poll the task, save its images as "
                                     "<task id>-<i>.<ext> in --out and print their paths.")
    gen.add_argument("prompt")
    gen.add_argument("--model", help="public model name (the gateway's default when omitted)")
    gen.add_argument("--n", type=_positive_int, help="number of images")
    gen.add_argument("--size", help="WxH, an aspect ratio such as 16:9, or auto")
    gen.add_argument("--quality", help="model-dependent quality (standard, hd, low, medium, high, auto)")
    gen.add_argument("--seed", type=int, help="seed, where the upstream honours one")
    gen.add_argument("--out", type=Path, default=Path("."), help="directory for the images (default: .)")
    gen.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds to wait (default 600)")

    status = sub.add_parser("status", help="print a task", description="Print a task (GET /images/tasks/{id}).")
    status.add_argument("id")
    status.add_argument("--json", action="store_true", help="the raw task object")

    bat = sub.add_parser("batch", help="upload a JSONL of requests and wait for its results",
                         description="Upload FILE (JSONL: one {\"custom_id\", \"body\": {image request}} "
                                     "per line) to s3://BUCKET/batches/<name>.jsonl (unless it already holds "
                                     "this file), wait for results/<name>.jsonl and save it next to FILE as "
                                     "<name>.results.jsonl. Exit code 1 when a line did not succeed.")
    bat.add_argument("file", type=Path)
    bat.add_argument("--bucket", help="the gateway's image bucket (default: $IMAGEGW_BUCKET)")
    bat.add_argument("--name", help="batch name (default: FILE's name without .jsonl)")
    bat.add_argument("--timeout", type=_positive_float, default=1800.0, help="seconds to wait (default 1800)")
    return parser


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         sleep: Callable[[float], None] = time.sleep) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "batch":
            return run_batch(args, out, err, sleep=sleep)
        client = Client(args.base_url or os.environ.get("IMAGEGW_BASE_URL") or DEFAULT_BASE_URL, _api_key())
        if args.command == "generate":
            return run_generate(args, client, out, err, sleep=sleep)
        return run_status(args, client, out)
    except (ApiError, CliError, batches.BatchError) as exc:
        err.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130


def run_generate(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO, *,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    body: dict[str, Any] = {"prompt": args.prompt}
    for name in ("model", "n", "size", "quality", "seed"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    task = client.generate_async(body)
    task_id = task.get("id") or task.get("task_id")
    if not task_id:
        raise CliError("the gateway answered without a task id")
    progress = Progress(err)
    progress.show(task_line(task))

    def read() -> dict[str, Any]:
        current = client.task(task_id)
        progress.show(task_line(current))
        return current

    try:
        if task.get("status") not in TERMINAL:
            task, finished = poll(read, lambda t: t.get("status") in TERMINAL, args.timeout, sleep=sleep)
            if not finished:
                raise CliError(f"task {task_id} is still {task.get('status')} after {args.timeout:g} s "
                               f"(it goes on: imagegw status {task_id})")
    except KeyboardInterrupt:
        progress.done()
        err.write(f"interrupted; the task goes on: imagegw status {task_id}\n")
        return 130
    finally:
        progress.done()
    if task["status"] != "succeeded":
        raise CliError(f"task {task_id} {task['status']}" + _task_error(task))
    args.out.mkdir(parents=True, exist_ok=True)
    for index, entry in enumerate(task.get("data") or []):
        image = client.download(entry)
        path = args.out / f"{task_id}-{index}.{image.ext}"
        path.write_bytes(image.data)
        out.write(f"{path}\n")
    return 0


def run_status(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    task = client.task(args.id)
    if args.json:
        out.write(json.dumps(task, indent=2) + "\n")
        return 0
    out.write(format_task(task))
    return 0


def format_task(task: dict[str, Any]) -> str:
    """A human summary of a task object."""
    rows = [("id", task.get("id")),
            ("status", f"{task.get('status')} {int(task.get('progress') or 0)}%"),
            ("model", task.get("model")),
            ("created", _time(task.get("created_at"))),
            ("updated", _time(task.get("updated_at"))),
            ("completed", _time(task.get("completed_at")))]
    if task.get("error"):
        rows.append(("error", _task_error(task).removeprefix(": ")))
    if task.get("usage"):
        rows.append(("usage", json.dumps(task["usage"], separators=(", ", ": "))))
    data = task.get("data") or []
    if data:
        rows.append(("images", str(len(data))))
    lines = [f"{key:<10} {value}" for key, value in rows if value not in (None, "")]
    lines += [f"  [{index}] {entry.get('url') or '(inline)'}" for index, entry in enumerate(data)]
    return "\n".join(lines) + "\n"


def run_batch(args: argparse.Namespace, out: TextIO, err: TextIO, *,
              sleep: Callable[[float], None] = time.sleep, s3: Any = None) -> int:
    bucket = args.bucket or os.environ.get("IMAGEGW_BUCKET")
    if not bucket:
        raise CliError("no bucket: set IMAGEGW_BUCKET (the stack's ImageBucketName output) or pass --bucket")
    name = batches.batch_name(args.file, args.name)
    lines = batches.count_lines(args.file)
    s3 = s3 or batches.s3_client()
    since, written = batches.upload(s3, bucket, name, args.file)
    where = f"s3://{bucket}/batches/{name}.jsonl"
    err.write(f"uploaded {_plural(lines, 'line')} to {where}\n" if written else
              f"{where} already holds this file (not uploaded again): waiting for its results\n")
    progress = Progress(err)
    waiting = f"batch {name}: {_plural(lines, 'line')}, waiting for results/{name}.jsonl"

    def on_wait(elapsed: float) -> None:
        # The seconds ticking on a terminal, a line per minute on a log.
        progress.show(f"{waiting}  {int(elapsed)}s" if progress.tty else f"{waiting}  {int(elapsed) // 60}m")

    on_wait(0)

    try:
        results = batches.wait_results(s3, bucket, name, since, args.timeout, on_wait=on_wait, sleep=sleep)
    finally:
        progress.done()
    if results is None:
        raise CliError(f"no results/{name}.jsonl after {args.timeout:g} s (the batch goes on: the same "
                       f"command waits for it again without uploading it twice)")
    target = args.file.with_name(f"{name}.results.jsonl")
    target.write_bytes(results)
    summary = batches.summarize(results)
    out.write(f"{target}\n")
    out.write(f"{_plural(summary.lines, 'line')}: {summary.succeeded} succeeded, {len(summary.failed)} failed\n")
    for row in summary.failed[:20]:
        out.write(f"  {row.get('custom_id') or row.get('task_id') or '?'}  {row.get('status')}{_task_error(row)}\n")
    if len(summary.failed) > 20:
        out.write(f"  ... and {len(summary.failed) - 20} more in {target}\n")
    return 0 if not summary.failed else 1


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _api_key() -> str:
    key = os.environ.get("IMAGEGW_API_KEY", "").strip()
    if not key:
        raise CliError("IMAGEGW_API_KEY is not set (the local stack's default key is sk-local: "
                       "export IMAGEGW_API_KEY=sk-local)")
    return key


def _task_error(task: dict[str, Any]) -> str:
    error = task.get("error")
    if isinstance(error, dict) and error.get("message"):
        return f": {error['message']}" + (f" (code: {error['code']})" if error.get("code") else "")
    if isinstance(error, str) and error:
        return f": {error}"
    return ""


def _time(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


if __name__ == "__main__":
    sys.exit(main())
