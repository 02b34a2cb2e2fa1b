"""Batch jobs: a JSONL object under batches/ -> one task per line -> results/<name>.jsonl in input order."""

from __future__ import annotations

import json
import os
from collections import deque

import boto3
import pytest

import poll_handler
import submit_handler
from imagegw import bus, clock, table, tasks
from imagegw.batches import reader, record
from imagegw.batches import results as batch_results
from imagegw.intake import event_tenant
from tests.apiclient import FakeContext, bus_event
from tests.conftest import ROOT

SAMPLE = json.loads((ROOT / "events" / "s3-batch-created.json").read_text())


class Bus:
    """EventBridge and the submit function's rules (a `bus.use` sink), run in order in this thread until
    nothing is left. Lifecycle events are kept in `lifecycle`; `drop` loses the events it is given."""

    def __init__(self):
        self.queue: deque = deque()
        self.lifecycle: list[tuple[str, dict]] = []
        self.continues = 0
        self.drop = lambda kind, detail: False

    def send(self, kind, details):
        for detail in details:
            if self.drop(kind, detail):
                continue
            if kind == record.BATCH_CONTINUE:
                self.continues += 1
                self.queue.append({**bus_event(kind, ""), "detail": detail})
            elif kind in (bus.TASK_SUCCEEDED, bus.TASK_FAILED):
                self.lifecycle.append((kind, detail))
            else:
                self.queue.append(bus_event(kind, detail["task_id"]))

    def drain(self, context=None):
        while self.queue:
            submit_handler.lambda_handler(self.queue.popleft(), context or FakeContext())


@pytest.fixture
def inline(aws):
    with bus.use(Bus()) as inline_bus:
        yield inline_bus


def put_batch(key: str, lines: list, *, raw: bytes | None = None) -> dict:
    """Upload the batch and build S3's "Object Created" event for it (from the events/ sample)."""
    body = raw if raw is not None else "".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    s3 = boto3.client("s3")
    s3.put_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key, Body=body)
    etag = s3.head_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["ETag"].strip('"')
    event = json.loads(json.dumps(SAMPLE))
    event["detail"]["bucket"]["name"] = os.environ["IMAGE_BUCKET"]
    event["detail"]["object"].update(key=key, size=len(body), etag=etag)
    return event


def results(key: str) -> list[dict]:
    obj = boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)
    return [json.loads(line) for line in obj["Body"].read().decode().splitlines()]


def line(custom_id, prompt, **extra):
    return {"custom_id": custom_id, "body": {"model": "local-tiny", "prompt": prompt, "size": "64x64", **extra}}


MIXED = [
    line("a", "a red kite"),
    "{not json",
    {"custom_id": "b", "method": "POST", "url": "/v1/images/generations",
     "body": {"model": "gpt-image-1", "prompt": "a blue door", "n": 2}},
    line("bad-size", "x", size="7x7"),
    line("c", "a green field"),
]


def test_a_batch_gets_one_result_line_per_input_line_in_order(inline):
    event = put_batch("batches/my posters.jsonl", MIXED)  # a space: S3 sends the key URL-encoded
    submit_handler.lambda_handler(event, FakeContext())
    inline.drain()
    out = results("results/my posters.jsonl")
    assert [r["custom_id"] for r in out] == ["a", None, "b", "bad-size", "c"]
    assert [r["status"] for r in out] == ["succeeded", "failed", "succeeded", "failed", "succeeded"]
    assert out[1]["error"]["code"] == "invalid_json" and "not valid JSON" in out[1]["error"]["message"]
    assert out[3]["error"]["code"] == "invalid_size" and "size" in out[3]["error"]["message"]
    assert len(out[2]["data"]) == 2 and out[0]["error"] is None and out[1]["data"] is None
    bucket = os.environ["IMAGE_BUCKET"]
    for r in (out[0], out[2], out[4]):
        for image in r["data"]:
            assert image["s3_uri"].startswith(f"s3://{bucket}/images/{r['task_id']}/")
            assert image["url"].startswith("http") and "Signature" in image["url"]
    # the tasks belong to the event tenant and carry the custom_id as their reference
    task = tasks.get(out[0]["task_id"], event_tenant())
    assert task.reference == "a" and task.status == "succeeded"
    assert tasks.get(out[1]["task_id"]).reference == "batches/my posters.jsonl#2"
    # every line was announced like any other event-tenant task
    assert sorted(kind for kind, _ in inline.lifecycle) == ["Image Task Failed"] * 2 + ["Image Task Succeeded"] * 3


def test_the_batch_record_stays_out_of_listings_and_leaves_the_sweep_when_written(inline):
    submit_handler.lambda_handler(put_batch("batches/one.jsonl", [line("x", "one")]), FakeContext())
    assert len(tasks.list_for(event_tenant())[0]) == 1  # the task, not the batch record
    later = clock.now_ms() + 10**9
    assert all(not i.startswith("batch#") for i in tasks.due(now=later))  # not among the tasks
    assert len(table.due(record.SWEEP_PARTITION, now=later)) == 1  # watched until written
    inline.drain()
    assert [r["status"] for r in results("results/one.jsonl")] == ["succeeded"]
    assert table.due(record.SWEEP_PARTITION, now=later) == []


SWEEP = json.loads((ROOT / "events" / "schedule-sweep.json").read_text())


def sweep(inline) -> dict:
    """The schedule fires: the poll function's sweep, then whatever it published."""
    counts = poll_handler.lambda_handler(SWEEP, FakeContext())
    inline.drain()
    return counts


def test_a_count_that_fell_behind_is_recounted_by_the_sweep(inline, monkeypatch):
    monkeypatch.setenv("BATCH_CHECK_S", "0")  # due at once: no waiting for the schedule
    counted = record.task_ended
    lost = []
    monkeypatch.setattr(record, "task_ended",
                        lambda task: lost.append(task.id) if not lost else counted(task))  # the first ADD is lost
    submit_handler.lambda_handler(put_batch("batches/lost.jsonl", [line("1", "a"), line("2", "b"), line("3", "c")]),
                                  FakeContext())
    inline.drain()
    assert len(lost) == 1 and not object_exists("results/lost.jsonl")  # 2 of 3 counted: stuck without a sweep
    assert sweep(inline)["batches"] == 1
    assert [r["status"] for r in results("results/lost.jsonl")] == ["succeeded"] * 3
    assert sweep(inline)["batches"] == 0  # written: the sweep no longer looks at it


def test_a_lost_hand_over_is_picked_up_by_the_sweep(inline, monkeypatch):
    monkeypatch.setenv("BATCH_LINES_PER_RUN", "2")
    monkeypatch.setenv("BATCH_CHECK_S", "0")
    dropped = []

    def lose_the_first_hand_over(kind, detail):
        if kind == record.BATCH_CONTINUE and not dropped:
            dropped.append(detail)
            return True
        return False

    inline.drop = lose_the_first_hand_over
    submit_handler.lambda_handler(put_batch("batches/handover.jsonl", [line(str(i), f"p{i}") for i in range(5)]),
                                  FakeContext())
    inline.drain()
    assert len(dropped) == 1 and len(tasks.list_for(event_tenant(), limit=50)[0]) == 2  # reading stopped
    sweep(inline)
    out = results("results/handover.jsonl")
    assert [r["custom_id"] for r in out] == ["0", "1", "2", "3", "4"] and {r["status"] for r in out} == {"succeeded"}


def test_one_reader_at_a_time(inline):
    event = put_batch("batches/busy.jsonl", [line("1", "a"), line("2", "b")])
    obj = event["detail"]["object"]
    batch = record.start(os.environ["IMAGE_BUCKET"], obj["key"], obj["etag"])
    assert record.claim_reading(batch.id) is not None  # a reader in another Lambda, still running
    submit_handler.lambda_handler(event, FakeContext())  # the S3 event redelivered meanwhile
    assert tasks.list_for(event_tenant())[0] == [] and not inline.queue


def test_a_reader_that_failed_gives_the_lease_back(inline, monkeypatch):
    accept = reader.accept_line
    calls = []

    def flaky(batch, line_no, raw):
        calls.append(line_no)
        if len(calls) == 2:
            raise RuntimeError("DynamoDB unavailable")
        return accept(batch, line_no, raw)

    monkeypatch.setattr(reader, "accept_line", flaky)
    event = put_batch("batches/flaky.jsonl", [line("1", "a"), line("2", "b"), line("3", "c")])
    with pytest.raises(RuntimeError):
        submit_handler.lambda_handler(event, FakeContext())
    submit_handler.lambda_handler(event, FakeContext())  # Lambda's retry of the event reads on at once
    inline.drain()
    assert [r["custom_id"] for r in results("results/flaky.jsonl")] == ["1", "2", "3"]
    assert len(tasks.list_for(event_tenant(), limit=50)[0]) == 3  # line 1, read twice, has one task


def object_exists(key: str) -> bool:
    listing = boto3.client("s3").list_objects_v2(Bucket=os.environ["IMAGE_BUCKET"], Prefix=key)
    return listing.get("KeyCount", 0) > 0


def test_a_cancelled_task_still_lets_its_batch_finish(inline, monkeypatch):
    from imagegw.keys import key_hash, owner_of_hash
    from tests.apiclient import call

    monkeypatch.setenv("EVENT_TENANT", owner_of_hash(key_hash("sk-test")))  # the tenant's key may cancel
    submit_handler.lambda_handler(put_batch("batches/cancel.jsonl", [line("x", "one"), line("y", "two")]),
                                  FakeContext())
    first = tasks.list_for(owner_of_hash(key_hash("sk-test")))[0][-1]
    assert first.status == "queued"  # its "Task Queued" is still on the bus
    reply = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{first.id}/cancel", key="sk-test")
    assert reply.status == 200
    inline.drain()
    assert [(r["custom_id"], r["status"]) for r in results("results/cancel.jsonl")] == [("x", "cancelled"),
                                                                                        ("y", "succeeded")]


def test_a_redelivered_s3_event_creates_no_second_task(inline):
    event = put_batch("batches/twice.jsonl", [line("x", "one"), line("y", "two")])
    submit_handler.lambda_handler(event, FakeContext())
    submit_handler.lambda_handler(event, FakeContext())
    inline.drain()
    submit_handler.lambda_handler(event, FakeContext())  # after completion too
    inline.drain()
    assert len(tasks.list_for(event_tenant(), limit=50)[0]) == 2
    assert [r["custom_id"] for r in results("results/twice.jsonl")] == ["x", "y"]


def test_a_batch_is_read_across_runs_when_it_must_hand_over(inline, monkeypatch):
    monkeypatch.setenv("BATCH_LINES_PER_RUN", "3")
    monkeypatch.setattr(reader, "CHECKPOINT_LINES", 2)
    lines = [line(f"id-{i}", f"prompt {i}") for i in range(10)] + ["", "   "]  # blank lines are not lines
    submit_handler.lambda_handler(put_batch("batches/split.jsonl", lines), FakeContext())
    inline.drain()
    assert inline.continues >= 3  # 10 lines, 3 per run, plus the call to write the results
    out = results("results/split.jsonl")
    assert [r["custom_id"] for r in out] == [f"id-{i}" for i in range(10)]
    assert all(r["status"] == "succeeded" for r in out)


def test_a_run_that_reaches_the_end_finishes_instead_of_handing_over(inline, monkeypatch):
    monkeypatch.setenv("BATCH_LINES_PER_RUN", "2")
    reading_runs = []
    claim = record.claim_reading

    def counted_claim(batch_id):  # a run that takes the reading lease reads
        claimed = claim(batch_id)
        if claimed is not None:
            reading_runs.append(1)
        return claimed

    monkeypatch.setattr(record, "claim_reading", counted_claim)
    submit_handler.lambda_handler(put_batch("batches/even.jsonl", [line(str(i), f"p{i}") for i in range(4)]),
                                  FakeContext())
    inline.drain()
    assert [r["custom_id"] for r in results("results/even.jsonl")] == ["0", "1", "2", "3"]
    assert len(reading_runs) == 2  # lines 1-2, then 3-4 and the end: no third run that only finds the end


def test_a_run_short_of_time_hands_over(inline):
    class Short(FakeContext):
        @staticmethod
        def get_remaining_time_in_millis():
            return 1_000

    submit_handler.lambda_handler(put_batch("batches/short.jsonl", [line("1", "a"), line("2", "b")]), Short())
    inline.drain()  # each run reads one line then hands over
    assert [r["custom_id"] for r in results("results/short.jsonl")] == ["1", "2"]
    assert inline.continues >= 2


def test_a_line_too_long_a_non_object_and_a_wrong_url_fail_alone(inline, monkeypatch):
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 200)
    huge = json.dumps(line("huge", "p" * 500))
    lines = [huge, "[1, 2]", {"custom_id": "u", "url": "/v1/chat/completions", "body": {"prompt": "x"}},
             line("ok", "fine")]
    raw = "".join(x if isinstance(x, str) else json.dumps(x) for x in [lines[0] + "\n", lines[1] + "\n",
                                                                       json.dumps(lines[2]) + "\n"])
    raw += json.dumps(lines[3])  # no newline at the end of the last line
    submit_handler.lambda_handler(put_batch("batches/odd.jsonl", [], raw=raw.encode()), FakeContext())
    inline.drain()
    out = results("results/odd.jsonl")
    assert [r["status"] for r in out] == ["failed", "failed", "failed", "succeeded"]
    assert out[0]["error"]["code"] == "line_too_long" and out[2]["custom_id"] == "u"
    assert "url" in out[2]["error"]["message"]


def test_an_empty_batch_writes_empty_results(inline):
    submit_handler.lambda_handler(put_batch("batches/empty.jsonl", [], raw=b""), FakeContext())
    inline.drain()
    assert results("results/empty.jsonl") == []


def test_objects_outside_batches_are_ignored(inline):
    event = put_batch("batches/x.jsonl", [line("x", "one")])
    event["detail"]["object"]["key"] = "images/x.jsonl"
    submit_handler.lambda_handler(event, FakeContext())
    assert inline.queue == deque() and tasks.list_for(event_tenant())[0] == []


def test_large_results_go_up_in_parts_never_whole(aws, monkeypatch):
    """12 MiB of result lines: uploaded as 5 MiB parts while they are made, never held as one object."""
    line_bytes = b'{"custom_id": "x", "status": "succeeded", "pad": "' + b"p" * 650 + b'"}\n'
    n = (12 * 2**20) // len(line_bytes) + 1
    made = {"lines": 0, "most_buffered": 0}

    def lines():
        for _ in range(n):
            made["lines"] += 1
            made["most_buffered"] = max(made["most_buffered"], stream.buffered)
            yield line_bytes

    stream = batch_results.Stream(lines())
    s3 = boto3.client("s3")
    bucket = os.environ["IMAGE_BUCKET"]
    s3.upload_fileobj(stream, bucket, "results/big.jsonl", Config=batch_results.RESULTS_TRANSFER)
    head = s3.head_object(Bucket=bucket, Key="results/big.jsonl")
    assert head["ContentLength"] == n * len(line_bytes) and made["lines"] == n
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert made["most_buffered"] <= 5 * 2**20  # the stream never held more than one part


class RecordingEvents:
    """An EventBridge client that records each PutEvents call (and refuses the entries it is told to)."""

    def __init__(self, refuse: int = 0):
        self.calls: list[list[dict]] = []
        self.refuse = refuse

    def put_events(self, Entries):  # noqa: N803 - boto3's argument name
        self.calls.append(Entries)
        answers = [{"EventId": f"e{i}"} for i in range(len(Entries))]
        for answer in answers[:self.refuse]:
            answer.update(ErrorCode="ThrottlingException", ErrorMessage="Rate exceeded")
        return {"FailedEntryCount": min(self.refuse, len(Entries)), "Entries": answers}


def test_a_batch_hands_its_lines_to_eventbridge_ten_per_call(aws):
    events = RecordingEvents()
    lines = [line(f"id-{i}", f"poster {i}") for i in range(23)] + ["{not json"]
    with bus.use(bus.EventBridge(events)):
        submit_handler.lambda_handler(put_batch("batches/tens.jsonl", lines), FakeContext())
    queued = [call for call in events.calls if call[0]["DetailType"] == "Task Queued"]
    assert [len(call) for call in queued] == [10, 10, 3]
    ids = [json.loads(entry["Detail"])["task_id"] for call in queued for entry in call]
    assert len(set(ids)) == 23 and {tasks.get(i).status for i in ids} == {"queued"}
    # the bad line is failed at once and announced on its own
    assert [call[0]["DetailType"] for call in events.calls if call not in queued] == ["Image Task Failed"]


def test_a_refused_hand_over_is_an_error_that_names_it(aws):
    with bus.use(bus.EventBridge(RecordingEvents(refuse=2))), \
            pytest.raises(RuntimeError, match="refused 2 of 10 Task Queued events: ThrottlingException"):
        bus.publish_all(bus.TASK_QUEUED, [f"t{i}" for i in range(12)])


def test_hostile_lines_fail_on_their_own_and_the_batch_goes_on(inline):
    hostile = [
        "[" * 100_000 + "]" * 100_000,  # nesting far past what a parser can recurse into
        '{"custom_id": "deep", "body": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}",
        '{"custom_id": "surrogate", "body": {"model": "local-tiny", "prompt": "\\ud800"}}',
        '{"custom_id": "seed", "body": {"model": "local-tiny", "prompt": "x", "seed": ' + "9" * 5000 + "}}",
        '{"custom_id": "nan", "body": {"model": "local-tiny", "prompt": "x", "n": NaN}}',
        line("ok", "a calm sea"),
    ]
    submit_handler.lambda_handler(put_batch("batches/hostile.jsonl", hostile), FakeContext())
    inline.drain()
    out = results("results/hostile.jsonl")
    assert [r["status"] for r in out] == ["failed"] * 5 + ["succeeded"]
    assert {r["error"]["code"] for r in out[:5]} <= {"invalid_json", "invalid_value"}
    assert out[3]["custom_id"] == "seed" and "seed" in out[3]["error"]["message"]
