"""The Makefile's deploy defaults: the caller's region is used (never forced), local targets set their own, and
`make providers` uploads only a file the caller names.

Each test runs the real Makefile with BIN pointing at stand-in tools (sam, python, ruff, mypy, cfn-lint) that
record their arguments and the region they were given, and STAMP at a fresh file (the venv counts as installed):
nothing is installed, nothing reaches AWS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

TOOLS = ("sam", "python", "ruff", "mypy", "cfn-lint")
REGION_VARS = ("AWS_DEFAULT_REGION", "AWS_REGION")


@pytest.fixture
def tools(tmp_path) -> Path:
    """A BIN directory of stand-ins, each appending `<tool> <args> | <AWS_DEFAULT_REGION> | <AWS_REGION>`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $* | ${{AWS_DEFAULT_REGION:-}} | ${{AWS_REGION:-}}" '
                          f'>> "{tmp_path}/calls"\n')
        script.chmod(0o755)
    (tmp_path / "stamp").touch()
    return bin_dir


def calls(tools: Path) -> list[tuple[str, str, str]]:
    path = tools.parent / "calls"
    if not path.exists():
        return []
    return [tuple(part.strip() for part in line.split("|")) for line in path.read_text().splitlines()]


def make(tools: Path, *args: str, stamp: bool = True, **env: str) -> subprocess.CompletedProcess:
    """`make <args>` in the repository, with only `env` for the region and provider variables, no credentials."""
    clean = {k: v for k, v in os.environ.items()
             if k not in REGION_VARS + ("PROVIDERS", "PROVIDERS_PARAM", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
             and not k.startswith("AWS_")}
    clean.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, **env)
    overrides = [f"BIN={tools}"] + ([f"STAMP={tools.parent / 'stamp'}"] if stamp else [])
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args, *overrides], env=clean,
                          capture_output=True, text=True, timeout=120)


def test_deploy_uses_the_callers_region(tools):
    done = make(tools, "deploy", AWS_DEFAULT_REGION="eu-west-1", AWS_REGION="eu-west-1")
    assert done.returncode == 0, done.stderr
    assert calls(tools) == [("sam build --template template.yaml", "eu-west-1", "eu-west-1"),
                            ("sam deploy", "eu-west-1", "eu-west-1")]


def test_deploy_forces_no_region_when_the_caller_sets_none(tools):
    """Then sam uses the profile's region or the one `make deploy GUIDED=1` saved in samconfig.toml."""
    done = make(tools, "deploy", GUIDED="1")
    assert done.returncode == 0, done.stderr
    assert calls(tools) == [("sam build --template template.yaml", "", ""), ("sam deploy --guided", "", "")]


def test_make_n_deploy_names_no_region(tools):
    done = make(tools, "-n", "deploy", AWS_REGION="eu-west-1")
    assert done.returncode == 0, done.stderr
    assert "sam deploy" in done.stdout and "us-east-1" not in done.stdout
    assert calls(tools) == []  # -n ran nothing


def test_local_targets_set_their_own_region_and_only_for_themselves(tools):
    """cfn-lint, sam validate, moto and the local stack need a region: lint and the tests get us-east-1 whatever
    the caller's is, and a deploy in the same shell still gets the caller's."""
    assert make(tools, "lint", AWS_DEFAULT_REGION="eu-west-1", AWS_REGION="eu-west-1").returncode == 0
    assert make(tools, "unit", AWS_DEFAULT_REGION="eu-west-1").returncode == 0
    assert make(tools, "deploy", AWS_DEFAULT_REGION="eu-west-1").returncode == 0
    recorded = calls(tools)
    assert [c[0].split()[0] for c in recorded] == ["ruff", "mypy", "cfn-lint", "sam", "python", "sam", "sam"]
    assert all(c[1:] == ("us-east-1", "us-east-1") for c in recorded[:5]), recorded
    assert recorded[5:] == [("sam build --template template.yaml", "eu-west-1", ""), ("sam deploy", "eu-west-1", "")]


def test_make_providers_without_providers_refuses_before_anything_runs(tools):
    # No STAMP override either: had the guard not stopped it, make would first "install" with the stand-in python.
    done = make(tools, "providers", stamp=False)
    assert done.returncode != 0
    assert "make providers: name your provider config, e.g. make providers PROVIDERS=my-providers.json" in done.stderr
    assert "nothing was uploaded" in done.stderr
    assert calls(tools) == []  # no python, so no put_providers and no AWS call


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_providers_is_no_file_either(tools, blank):
    done = make(tools, "providers", stamp=False, PROVIDERS=blank)
    assert done.returncode != 0 and "name your provider config" in done.stderr
    assert calls(tools) == []


def test_make_providers_uploads_the_named_file(tools):
    done = make(tools, "providers", "PROVIDERS=my-providers.json", AWS_REGION="eu-west-1")
    assert done.returncode == 0, done.stderr
    assert calls(tools) == [("python -m scripts.put_providers my-providers.json /imagegw/providers", "", "eu-west-1")]


def test_check_providers_still_checks_the_local_config_by_default(tools):
    assert make(tools, "check-providers").returncode == 0
    assert make(tools, "check-providers", "PROVIDERS=mine.yaml").returncode == 0
    assert [c[0] for c in calls(tools)] == ["python -m scripts.check_providers config/providers.local.json",
                                            "python -m scripts.check_providers mine.yaml"]
