"""The packaged artifact, not just the source: `sam build` of the template, then

- every native library in the built layer and functions is for the template's architecture (arm64: aarch64 ELF);
- each function imported from `.aws-sam/build/<Function>` with only the built layer on sys.path (Lambda's
  `/opt/python`), in `python -I -S` (no site-packages, no PYTHONPATH), runs every sample event in `events/` that
  its triggers receive, against moto, without an exception or a 5xx.

The import check needs libraries this machine can load, so it runs on a second build of the same template for
this machine's architecture (x86_64); what differs between the two builds is only the wheels' platform.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from local.aws import clients, create_resources
from local.template import load
from tests.integration.conftest import ROOT, free_port

SAM = Path(sys.executable).parent / "sam"
# Which function each sample event reaches (its trigger in the template).
EVENTS = {
    "SubmitFunction": ["api-create-images.json", "api-list-models.json", "bus-task-queued.json",
                       "s3-batch-created.json"],
    "PollFunction": ["api-get-task.json", "api-list-tasks.json", "api-cancel-task.json", "bus-sweep-shard.json",
                     "schedule-sweep.json"],
    "FetchFunction": ["api-get-image.json", "bus-task-generated.json"],
}
ELF_MACHINE = {183: "aarch64", 62: "x86_64"}


def build(tmp: Path, architecture: str) -> Path:
    """`sam build` of a copy of the template (for `architecture`), into tmp/build."""
    source = tmp / "src"
    for part in ("functions", "layers"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    template = (ROOT / "template.yaml").read_text()
    if architecture != "arm64":
        template = template.replace("[arm64]", f"[{architecture}]").replace(
            "BuildArchitecture: arm64", f"BuildArchitecture: {architecture}")
    (source / "template.yaml").write_text(template)
    env = {**os.environ, "PATH": f"{SAM.parent}{os.pathsep}{os.environ['PATH']}", "AWS_DEFAULT_REGION": "us-east-1",
           "SAM_CLI_TELEMETRY": "0"}
    done = subprocess.run([str(SAM), "build", "--template", "template.yaml", "--build-dir", str(tmp / "build")],
                          cwd=source, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "build"


def elf_machine(path: Path) -> str:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return ELF_MACHINE.get(int.from_bytes(header[18:20], "little"), f"machine {header[18:20].hex()}")


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory):
    return build(tmp_path_factory.mktemp("arm64"), "arm64")


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    return build(tmp_path_factory.mktemp("host"), "x86_64")


def test_the_built_layer_holds_aarch64_libraries_only(arm_build):
    libraries = sorted(arm_build.rglob("*.so")) + sorted(arm_build.rglob("*.so.*"))
    assert any("pydantic_core" in str(p) for p in libraries)  # the one the layer cannot do without
    wrong = {str(p.relative_to(arm_build)): elf_machine(p) for p in libraries if elf_machine(p) != "aarch64"}
    assert not wrong, wrong
    assert not any("x86_64" in p.name for p in libraries)


@pytest.fixture(scope="module")
def moto_account():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing")
    try:
        template = load(ROOT)
        create_resources(template, clients())
        yield endpoint, template
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.mark.parametrize("function", sorted(EVENTS))
def test_each_built_function_runs_its_sample_events_with_only_the_built_layer(host_build, moto_account, function):
    endpoint, template = moto_account
    spec = template.functions[function]
    env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true", "API_KEYS": "sk-local",
           "PROVIDERS_FILE": str(ROOT / "config" / "providers.local.json"), "WEBHOOK_SECRET": "whsec_" + "A" * 32,
           **{name: template.environment[name] for name in template.resource_variables}}
    env.pop("PROVIDERS_PARAM", None)
    env.pop("KEYS_TABLE", None)
    env.pop("WEBHOOK_SECRET_ID", None)
    events = [str(ROOT / "events" / name) for name in EVENTS[function]]
    done = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "tests" / "packaged" / "runner.py"),
                           str(host_build / function), str(host_build / "GatewayLayer" / "python"), spec.handler,
                           *events], env=env, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{\"event\"")]
    assert lines and lines[0]["event"] == "(import)", done.stdout[-2000:] + done.stderr[-3000:]
    assert lines[0]["status"] == "ok" and lines[0]["leaked"] == [], lines[0]
    results = {line["event"]: line["status"] for line in lines[1:]}
    assert set(results) == set(EVENTS[function]), done.stderr[-3000:]
    failed = {name: status for name, status in results.items()
              if status.startswith("error") or (status.isdigit() and int(status) >= 500)}
    assert not failed, (failed, done.stderr[-3000:])
