"""SnapStart on the functions: the template publishes each function through the `live` alias with SnapStart on
published versions, every trigger invokes that alias, and a restored environment re-makes what a snapshot would
otherwise share (random's state, cached AWS clients and HTTP sessions)."""

import random
import subprocess
import sys

import pytest

from imagegw import entry, table, transport
from tests.conftest import ROOT


def transformed() -> dict:
    pytest.importorskip("samtranslator")
    from samtranslator.translator.transform import transform  # type: ignore[import-untyped]
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    document = yaml_parse((ROOT / "template.yaml").read_text())
    for resource in document["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if isinstance((resource.get("Properties") or {}).get(key), str):
                resource["Properties"][key] = "s3://bucket/key"

    class NoPolicies:
        def load(self) -> dict:
            return {}

    return transform(document, {"SnapStart": "PublishedVersions"}, NoPolicies())["Resources"]


def test_every_function_is_published_with_snapstart_and_triggered_through_its_alias(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = transformed()
    functions = {name: r for name, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    assert set(functions) == {"SubmitFunction", "PollFunction", "FetchFunction"}
    for name, function in functions.items():
        assert function["Properties"]["SnapStart"] == {"ApplyOn": {"Ref": "SnapStart"}}, name
        aliases = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Alias"
                   and r["Properties"]["FunctionName"] == {"Ref": name}]
        assert len(aliases) == 1 and aliases[0]["Properties"]["Name"] == "live", name
    alias_ids = {n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Alias"}
    # every permission (API Gateway, EventBridge rules, the schedule) is granted on an alias, none on $LATEST
    permissions = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"]
    assert permissions and all(p["FunctionName"].get("Ref") in alias_ids for p in permissions)
    mappings = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert mappings and all(m["FunctionName"].get("Ref") in alias_ids for m in mappings)
    configs = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::EventInvokeConfig"]
    assert len(configs) == 3 and all(c["Qualifier"] == "live" for c in configs)


def test_a_restored_environment_draws_its_own_random_numbers_and_opens_new_connections(aws):
    transport.session()
    table.task_table()
    random.seed(7)
    drawn_in_the_snapshot = random.random()
    random.seed(7)  # the state every environment restored from one snapshot would share
    entry.after_restore()
    assert random.random() != drawn_in_the_snapshot
    assert transport.session.cache_info().currsize == 0 and table.task_table.cache_info().currsize == 0


def test_the_hook_is_registered_where_the_runtime_has_the_library():
    code = (
        "import sys, types\n"
        "hooks = []\n"
        "sys.modules['snapshot_restore_py'] = types.SimpleNamespace(register_after_restore=hooks.append)\n"
        "from imagegw import entry\n"
        "assert hooks == [entry.after_restore], hooks\n"
        "print('registered')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "", "PYTHONPATH": str(ROOT / "layers" / "imagegw"),
                               "AWS_DEFAULT_REGION": "us-east-1"})
    assert done.stdout.strip() == "registered", done.stderr
