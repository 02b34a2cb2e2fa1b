"""Regenerate events/: API Gateway and schedule samples come from `sam local generate-event`, then get the
gateway's routes, path parameters and a local API key; the bus events have no generator and are written here.

Run with `make events`. Task ids in the samples are placeholders; tests substitute real ones.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

EVENTS = Path(__file__).resolve().parents[1] / "events"
TASK = "imgtask_0000000000000000sample00"
BODY = {"model": "gpt-image-1", "prompt": "a lighthouse at dawn, watercolour", "size": "1024x1024", "n": 1}

API = {
    "api-create-images.json": ("POST", "/v1/images/generations", "/v1/images/generations", BODY, {}),
    "api-list-models.json": ("GET", "/v1/models", "/v1/models", None, {}),
    "api-get-task.json": ("GET", f"/v1/images/tasks/{TASK}", "/v1/images/tasks/{id}", None, {"id": TASK}),
    "api-list-tasks.json": ("GET", "/v1/images/tasks", "/v1/images/tasks", None, {}),
    "api-cancel-task.json": ("POST", f"/v1/images/tasks/{TASK}/cancel", "/v1/images/tasks/{id}/cancel", None,
                             {"id": TASK}),
    "api-get-image.json": ("GET", f"/v1/images/tasks/{TASK}/images/0", "/v1/images/tasks/{id}/images/{index}",
                           None, {"id": TASK, "index": "0"}),
}


def sam_event(*args: str) -> dict:
    out = subprocess.run(["sam", "local", "generate-event", *args], check=True, capture_output=True, text=True,
                         env={**__import__("os").environ, "SAM_CLI_TELEMETRY": "0"})
    return json.loads(out.stdout)


def api_event(method: str, path: str, resource: str, body: dict | None, params: dict) -> dict:
    args = ["apigateway", "aws-proxy", "--method", method, "--path", path.lstrip("/"), "--resource", resource,
            "--stage", "prod"]
    if body is not None:
        args += ["--body", json.dumps(body)]
    event = sam_event(*args)
    event["pathParameters"] = params or None
    event["queryStringParameters"] = {"limit": "10"} if resource == "/v1/images/tasks" else None
    event["multiValueQueryStringParameters"] = ({k: [v] for k, v in event["queryStringParameters"].items()}
                                                if event["queryStringParameters"] else None)
    event["stageVariables"] = None
    for headers, value in ((event["headers"], "Bearer sk-local"), (event["multiValueHeaders"], ["Bearer sk-local"])):
        headers["Authorization"] = value
        headers["Content-Type"] = "application/json" if isinstance(value, str) else ["application/json"]
    return event


def bus_event(detail_type: str) -> dict:
    return {"version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": detail_type,
            "source": "imagegw", "account": "123456789012", "time": "2026-11-21T12:00:00Z", "region": "us-east-1",
            "resources": [], "detail": {"task_id": TASK}}


def sweep_shard(partitions: list[str]) -> dict:
    """The schedule's "Sweep Shard" event (SweepShards above 1): the poll function sweeps these partitions."""
    return {**bus_event("Sweep Shard"), "id": "3f0c1c52-9d6e-4c55-9a4e-5d1b8a7f2e10",
            "detail": {"partitions": partitions}}


def s3_object_created(bucket: str, key: str) -> dict:
    """S3's "Object Created" on EventBridge (the batch trigger); `sam local generate-event` has no such sample."""
    return {"version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": "Object Created",
            "source": "aws.s3", "account": "123456789012", "time": "2026-11-21T12:00:00Z", "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"version": "0", "bucket": {"name": bucket},
                       "object": {"key": key, "size": 90, "etag": "b1946ac92492d2347c6235b4d2611184",
                                  "sequencer": "00617F08299329D189"},
                       "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                       "source-ip-address": "203.0.113.15", "reason": "PutObject"}}


def main() -> None:
    EVENTS.mkdir(exist_ok=True)
    files = {name: api_event(*spec) for name, spec in API.items()}
    files["bus-task-queued.json"] = bus_event("Task Queued")
    files["bus-task-generated.json"] = bus_event("Task Generated")
    files["schedule-sweep.json"] = sam_event("cloudwatch", "scheduled-event")
    files["bus-sweep-shard.json"] = sweep_shard(["inflight", "webhook"])
    files["s3-batch-created.json"] = s3_object_created("imagegw-local-images", "batches/posters.jsonl")
    for name, event in files.items():
        (EVENTS / name).write_text(json.dumps(event, indent=2) + "\n")
        print(f"events/{name}")


if __name__ == "__main__":
    main()
