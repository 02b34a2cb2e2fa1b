"""template.yaml's deploy settings: the image bucket's lifecycle covers every prefix the code writes, each function
logs to a declared log group kept LogRetentionDays, and traces never capture handler responses.

The template is read as CloudFormation reads it (cfn-lint's decoder, and local/template.py's resolver for values).
"""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import boto3
import pytest

import submit_handler
from imagegw import bus, worker
from imagegw.batches import record
from local import template as local_template
from tests.apiclient import FakeContext, call
from tests.conftest import API_KEY, ROOT

LAYER = ROOT / "layers" / "imagegw" / "imagegw"


def raw_template() -> dict:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.loads((ROOT / "template.yaml").read_text(encoding="utf-8"))


def lifecycle(**overrides: str) -> list[dict]:
    bucket = local_template.load(ROOT, parameter_overrides=overrides).buckets["ImageBucket"]
    return bucket["LifecycleConfiguration"]["Rules"]


def expiring_rule(key: str, rules: list[dict]) -> dict | None:
    """The enabled rule that expires `key` (S3 applies the shortest when several match; one is enough here)."""
    for rule in rules:
        prefix = rule.get("Prefix", (rule.get("Filter") or {}).get("Prefix"))
        if rule.get("Status") == "Enabled" and prefix is not None and key.startswith(prefix) \
                and ("ExpirationInDays" in rule or "ExpirationDate" in rule):
            return rule
    return None


# ---- lifecycle -----------------------------------------------------------------------------------------------

# Every call in the layer that writes to S3, by file, with the prefix of what it writes. A new one fails
# test_every_s3_write_in_the_layer_is_known until its prefix has a lifecycle rule and a line here.
S3_WRITES = {
    "storage.py": ("images/", 2),  # store_bytes (put_object), store_url (upload_fileobj): worker._key_prefix
    "inputs.py": ("inputs/", 1),  # an edit's or a variation's input files
    "batches/results.py": ("results/", 1),  # a batch's results file
}
_WRITE_CALL = re.compile(r"\.(put_object|upload_fileobj|upload_file|copy_object|copy|create_multipart_upload)\(")


def test_every_s3_write_in_the_layer_is_known():
    found = {}
    for path in sorted(LAYER.rglob("*.py")):
        count = len(_WRITE_CALL.findall(path.read_text(encoding="utf-8")))
        if count:
            found[path.relative_to(LAYER).as_posix()] = count
    assert found == {name: count for name, (_, count) in S3_WRITES.items()}, (
        "an S3 write was added or moved: give its prefix a lifecycle rule in template.yaml and a line in S3_WRITES")


def test_the_prefixes_the_code_names_are_those_above():
    assert worker._key_prefix(SimpleNamespace(id="imgtask_1"), 0).startswith("images/")
    assert record.RESULTS_PREFIX == "results/"
    assert record.results_key("batches/a.jsonl") == "results/a.jsonl"
    assert record.INPUT_PREFIX == "batches/"  # written by batch users; the batch trigger's prefix
    batch_rule = raw_template()["Resources"]["SubmitFunction"]["Properties"]["Events"]["BatchCreated"]
    assert batch_rule["Properties"]["Pattern"]["detail"]["object"]["key"] == [{"prefix": record.INPUT_PREFIX}]


@pytest.mark.parametrize("prefix", sorted({p for p, _ in S3_WRITES.values()} | {record.INPUT_PREFIX}))
def test_every_prefix_expires(prefix):
    assert expiring_rule(prefix + "x/0.png", lifecycle()) is not None, f"nothing expires {prefix}"


def test_retention_follows_the_parameters():
    rules = lifecycle(ImageRetentionDays="7", BatchRetentionDays="90")
    days = {p: str(expiring_rule(p + "k", rules)["ExpirationInDays"]) for p in ("images/", "batches/", "results/")}
    assert days == {"images/": "7", "batches/": "90", "results/": "90"}
    # an edit's inputs: kept while a task may need them
    assert str(expiring_rule("inputs/t/image-0.png", rules)["ExpirationInDays"]) == "2"
    params = raw_template()["Parameters"]
    assert params["ImageRetentionDays"]["Default"] == 30 and params["BatchRetentionDays"]["Default"] == 30
    assert any("AbortIncompleteMultipartUpload" in r for r in rules)  # a results upload that died leaves no parts


def bucket_keys() -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=os.environ["IMAGE_BUCKET"])
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_what_a_generation_and_an_edit_write_expires(inline_bus):
    from tests.unit.test_edits import EDITS, half_mask, png, send

    reply = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                 body={"model": "gpt-image-1", "prompt": "a lighthouse", "n": 2})
    assert reply.status == 200, reply.body
    reply = send(EDITS, {"model": "gpt-image-1", "prompt": "a lighthouse"},
                 [("image", ("in.png", png(), "image/png")), ("mask", ("mask.png", half_mask(), "image/png"))])
    assert reply.status == 200, reply.body
    inline_bus.drain()
    keys, rules = bucket_keys(), lifecycle()
    assert {k.split("/")[0] + "/" for k in keys} == {"images/", "inputs/"}
    assert [k for k in keys if expiring_rule(k, rules) is None] == []


def test_what_a_batch_writes_expires(aws):
    from tests.unit.test_batches import Bus, line, put_batch

    with bus.use(Bus()) as inline:
        submit_handler.lambda_handler(put_batch("batches/posters.jsonl", [line("a", "one"), line("b", "two")]),
                                      FakeContext())
        inline.drain()
    keys, rules = bucket_keys(), lifecycle()
    assert "results/posters.jsonl" in keys and "batches/posters.jsonl" in keys
    assert {k.split("/")[0] + "/" for k in keys} == {"images/", "batches/", "results/"}
    assert [k for k in keys if expiring_rule(k, rules) is None] == []


# ---- log groups ------------------------------------------------------------------------------------------------

def functions(raw: dict) -> dict[str, dict]:
    return {name: res for name, res in raw["Resources"].items() if res["Type"] == "AWS::Serverless::Function"}


def test_each_function_logs_to_its_own_declared_group_kept_log_retention_days():
    raw = raw_template()
    fns = functions(raw)
    assert sorted(fns) == ["FetchFunction", "PollFunction", "SubmitFunction"]
    groups = []
    for name, fn in fns.items():
        ref = fn["Properties"]["LoggingConfig"]["LogGroup"]
        assert set(ref) == {"Ref"}, f"{name}: LoggingConfig.LogGroup must be !Ref to a declared log group"
        group = raw["Resources"][ref["Ref"]]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        groups.append(ref["Ref"])
    assert len(set(groups)) == len(fns)  # one each
    param = raw["Parameters"]["LogRetentionDays"]
    assert param["Default"] == 30 and 30 in param["AllowedValues"] and 3653 in param["AllowedValues"]
    # the names, as CloudFormation resolves them: one per function, under /aws/lambda/<stack>/
    resolve = local_template.Resolver(raw["Resources"], {"LogRetentionDays": "30"}, {}, stack_name="gw",
                                      region="us-east-1", conditions={})
    names = sorted(resolve(raw["Resources"][g]["Properties"]["LogGroupName"]) for g in groups)
    assert names == ["/aws/lambda/gw/fetch", "/aws/lambda/gw/poll", "/aws/lambda/gw/submit"]


# ---- traces ----------------------------------------------------------------------------------------------------

def test_tracer_response_capture_is_off_for_every_function():
    globals_env = raw_template()["Globals"]["Function"]["Environment"]["Variables"]
    assert globals_env["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    assert globals_env["POWERTOOLS_TRACER_CAPTURE_ERROR"] == "true"
    for fn in local_template.load(ROOT).functions.values():
        assert fn.environment["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false", fn.logical_id
    # and no handler asks for it in code: capture_lambda_handler(capture_response=True) would win over the env.
    # The handlers are traced through imagegw.entry.lambda_handler -> traced, which wraps them with no arguments.
    for handler in (ROOT / "functions").rglob("*_handler.py"):
        text = handler.read_text(encoding="utf-8")
        assert "@entry.lambda_handler(logger)\n" in text and "capture_response" not in text, handler
    entry = (ROOT / "layers" / "imagegw" / "imagegw" / "entry.py").read_text(encoding="utf-8")
    assert "Tracer().capture_lambda_handler(handler)" in entry and "capture_response" not in entry
    assert "traced(inner)" in entry


class Subsegment:
    def __init__(self):
        self.metadata: dict[str, object] = {}

    def put_metadata(self, key, value, namespace=None):
        self.metadata[key] = value

    def put_annotation(self, key, value):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def traced(env: dict[str, str], monkeypatch, handler):
    """`handler` decorated as the functions decorate theirs (@tracer.capture_lambda_handler, no arguments) under
    `env`, with a provider that records the subsegment instead of sending it to X-Ray."""
    from aws_lambda_powertools import Tracer

    for name in ("POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_TRACER_CAPTURE_ERROR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    segment = Subsegment()
    tracer = Tracer.__new__(Tracer)  # not Tracer(): its configuration is shared by every Tracer in the process
    tracer.provider = SimpleNamespace(in_subsegment=lambda name: segment)
    tracer.service = "imagegw"
    return tracer.capture_lambda_handler(handler), segment


BIG = {"data": [{"b64_json": "A" * 3_000_000, "url": "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc"}]}


def test_with_the_template_env_a_handlers_answer_stays_out_of_its_trace(monkeypatch):
    env = {k: v for k, v in local_template.load(ROOT).environment.items() if k.startswith("POWERTOOLS_TRACER_")}
    handler, segment = traced(env, monkeypatch, lambda event, context: BIG)
    assert handler({}, None) is BIG
    assert segment.metadata == {}
    # the same without the setting: Powertools' default puts the whole answer in the trace
    handler, segment = traced({}, monkeypatch, lambda event, context: BIG)
    handler({}, None)
    assert segment.metadata == {"<lambda> response": BIG}


def test_errors_still_reach_the_trace(monkeypatch):
    env = {k: v for k, v in local_template.load(ROOT).environment.items() if k.startswith("POWERTOOLS_TRACER_")}

    def failing(event, context):
        raise RuntimeError("upstream unavailable")

    handler, segment = traced(env, monkeypatch, failing)
    with pytest.raises(RuntimeError):
        handler({}, None)
    assert [str(v) for v in segment.metadata.values()] == ["upstream unavailable"]
    assert json.dumps(list(segment.metadata)) == '["failing error"]'
