"""Batches over S3: upload `batches/<name>.jsonl` to the image bucket, wait for `results/<name>.jsonl`.

The gateway processes every object written under `batches/` and, once each line's task is terminal, writes
`results/<name>.jsonl`: one line per input line, `{custom_id, task_id, status, data: [{url, s3_uri}], error}`.
The bucket comes from `IMAGEGW_BUCKET` (or `--bucket`); the endpoint and credentials from the usual AWS
environment (`AWS_ENDPOINT_URL=http://127.0.0.1:4566` reaches the local stack's moto server).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError


class BatchError(Exception):
    pass


@dataclass
class Summary:
    lines: int = 0
    succeeded: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # every line whose status is not succeeded


def batch_name(path: Path, name: str | None = None) -> str:
    """`prompts.jsonl` -> `prompts`; a given name must be one key segment."""
    chosen = name if name is not None else (path.name[:-6] if path.name.endswith(".jsonl") else path.stem)
    if not chosen or "/" in chosen or chosen in (".", ".."):
        raise BatchError(f"invalid batch name {chosen!r}: one path segment, e.g. --name my-batch")
    return chosen


def count_lines(path: Path) -> int:
    """The number of requests in a JSONL file, each line checked to be a JSON object (blank lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"cannot read {path}: {exc}") from exc
    count = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise BatchError(f"{path}:{number}: not JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise BatchError(f"{path}:{number}: each line must be a JSON object")
        count += 1
    if not count:
        raise BatchError(f"{path}: no requests in it")
    return count


def s3_client() -> Any:
    """boto3's S3 client from the environment. With no credentials at all and a loopback endpoint (the local
    stack's moto server), moto's placeholder credentials are used, so the local stack needs no AWS setup."""
    session = boto3.session.Session()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if session.get_credentials() is None and endpoint and _is_loopback(endpoint):
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=session.region_name or "us-east-1")
    return session.client("s3")


def upload(s3: Any, bucket: str, name: str, path: Path) -> tuple[datetime, bool]:
    """Write the file at `batches/<name>.jsonl`: (the time S3 stamped on the object, whether it was written).

    When that object already holds this very file (its sha256, kept in the object's metadata, matches), it is
    not written again: the gateway would see the same batch again at best and a second batch at worst, and
    running the same command again simply waits for that batch's results."""
    key = f"batches/{name}.jsonl"
    digest = _sha256(path)
    try:
        existing = _head(s3, bucket, key)
        if existing is not None and existing.get("Metadata", {}).get("sha256") == digest:
            return existing["LastModified"], False
        s3.upload_file(str(path), bucket, key,
                       ExtraArgs={"ContentType": "application/jsonl", "Metadata": {"sha256": digest}})
        return s3.head_object(Bucket=bucket, Key=key)["LastModified"], True
    except (ClientError, BotoCoreError) as exc:
        raise BatchError(f"cannot upload to s3://{bucket}/{key}: {exc}") from exc


def wait_results(s3: Any, bucket: str, name: str, since: datetime, timeout_s: float, *,
                 on_wait: Callable[[float], None] = lambda elapsed: None,
                 sleep: Callable[[float], None] = time.sleep, interval_s: float = 2.0) -> bytes | None:
    """`results/<name>.jsonl` once it appears (a copy older than the batch object, left by an earlier batch of
    that name, does not count); None when `timeout_s` passes first."""
    key = f"results/{name}.jsonl"
    start = time.monotonic()
    wait = min(0.5, interval_s)
    while True:
        found = _head(s3, bucket, key)
        if found is not None and found["LastModified"] >= since:
            try:
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except (ClientError, BotoCoreError) as exc:
                raise BatchError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
        elapsed = time.monotonic() - start
        if elapsed >= timeout_s:
            return None
        on_wait(elapsed)
        sleep(min(wait, timeout_s - elapsed))
        wait = min(interval_s, wait * 1.5)


def summarize(results: bytes) -> Summary:
    summary = Summary()
    for line in results.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = {"status": "unreadable", "error": {"message": line[:200]}}
        summary.lines += 1
        if isinstance(row, dict) and row.get("status") == "succeeded":
            summary.succeeded += 1
        else:
            summary.failed.append(row if isinstance(row, dict) else {"status": "unreadable"})
    return summary


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise BatchError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    except BotoCoreError as exc:
        raise BatchError(f"cannot reach S3: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
