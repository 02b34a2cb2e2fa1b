"""Every sample in events/ invoked against the handler the template wires it to."""

import json
import os
from pathlib import Path

import pytest
from cfnlint.decode import decode

import fetch_handler
import poll_handler
import submit_handler
from imagegw import bus, clock, tasks
from tests.apiclient import FakeContext, InlineBus
from tests.conftest import ROOT

HANDLERS = {"SubmitFunction": submit_handler.lambda_handler, "PollFunction": poll_handler.lambda_handler,
            "FetchFunction": fetch_handler.lambda_handler}
SAMPLE_TASK = "imgtask_0000000000000000sample00"


def function_for(event: dict) -> str:
    """The template's function whose event source matches this sample (route, rule pattern or schedule)."""
    template, _ = decode(str(ROOT / "template.yaml"))
    for name, resource in template["Resources"].items():
        for source in resource.get("Properties", {}).get("Events", {}).values():
            props = source["Properties"]
            if source["Type"] == "Api" and event.get("resource") == props["Path"] \
                    and event.get("httpMethod") == props["Method"]:
                return name
            if source["Type"] == "EventBridgeRule" and event.get("detail-type") in props["Pattern"]["detail-type"]:
                return name
            if source["Type"] == "Schedule" and event.get("detail-type") == "Scheduled Event":
                return name
    raise AssertionError(f"no function in template.yaml takes {event.get('resource') or event.get('detail-type')}")


def _put_sample_batch(event: dict) -> None:
    """The object the sample announces, in the test bucket, with the sample pointing at it."""
    import boto3

    s3 = boto3.client("s3")
    detail = event["detail"]
    detail["bucket"]["name"] = os.environ["IMAGE_BUCKET"]
    s3.put_object(Bucket=os.environ["IMAGE_BUCKET"], Key=detail["object"]["key"],
                  Body=b'{"custom_id": "poster-1", "body": {"model": "gpt-image-1", "prompt": "a poster"}}\n')
    detail["object"]["etag"] = s3.head_object(Bucket=os.environ["IMAGE_BUCKET"],
                                              Key=detail["object"]["key"])["ETag"].strip('"')


def load(path: Path, task_id: str) -> dict:
    return json.loads(path.read_text().replace(SAMPLE_TASK, task_id))


class SampleBus(InlineBus):
    """The inline bus, on which "Batch Continue" goes to SubmitFunction and "Sweep Shard" to PollFunction (the
    template's rules), in this thread."""

    def send(self, detail_type, details):
        if detail_type not in ("Batch Continue", bus.SWEEP_SHARD):
            return super().send(detail_type, details)
        handler = submit_handler.lambda_handler if detail_type == "Batch Continue" else poll_handler.lambda_handler
        for detail in details:
            handler({"version": "0", "id": "c", "detail-type": detail_type, "source": "imagegw",
                     "account": "123456789012", "time": "2026-11-21T12:00:00Z", "region": "us-east-1",
                     "resources": [], "detail": detail}, FakeContext())


@pytest.mark.parametrize("path", sorted((ROOT / "events").glob("*.json")), ids=lambda p: p.name)
def test_every_sample_event_runs_against_its_handler(aws, path, monkeypatch):
    monkeypatch.setenv("API_KEYS", "sk-local")
    inline = SampleBus({bus.TASK_QUEUED: submit_handler.lambda_handler,
                        bus.TASK_GENERATED: fetch_handler.lambda_handler})
    with bus.use(inline):
        _run_sample(path, inline)


def _run_sample(path: Path, inline: InlineBus) -> None:
    from imagegw.keys import owner_of_hash, key_hash

    task = tasks.create(owner_of_hash(key_hash("sk-local")), "gpt-image-1", {"model": "gpt-image-1", "prompt": "p"},
                        check_after_s=0)
    if path.name in ("bus-task-generated.json", "api-get-image.json"):
        # a task with its image ready: to fetch for "Task Generated", stored for the redirect
        claimed = tasks.claim(task.id, "queued", lease_s=60)
        if path.name == "bus-task-generated.json":
            tasks.advance(claimed, "generated", next_check_at=clock.now_ms() + 60_000, sources=[])
        else:
            tasks.finish(claimed, "succeeded", images=[{"index": 0, "key": f"images/{task.id}/0.png"}])
    event = load(path, task.id)
    if path.name == "s3-batch-created.json":
        _put_sample_batch(event)
    name = function_for(event)
    out = HANDLERS[name](event, FakeContext())
    inline.drain()
    after = tasks.get(task.id)
    if "httpMethod" in event:
        expected = {"api-create-images.json": 200, "api-get-image.json": 302}.get(path.name, 200)
        assert out["statusCode"] == expected, out["body"]
    elif path.name == "s3-batch-created.json":
        import boto3

        body = boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key="results/posters.jsonl")["Body"]
        assert [json.loads(line)["status"] for line in body.read().splitlines()] == ["succeeded"]
    elif path.name == "bus-task-queued.json":
        assert after.status == "succeeded" and len(after.images) == 1
    elif path.name == "bus-task-generated.json":
        assert after.status == "succeeded"
    else:
        # the sweep re-drove the task whose event was lost, and it finished
        assert inline.published == [(bus.TASK_QUEUED, task.id)] and after.status == "succeeded"
