"""The dialect registry: names the README documents, modules imported on first use (so no handler loads Pillow,
which only the `local` dialect needs), and names checked without importing any dialect."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagegw.dialects import REGISTRY, Dialect, get_dialect

ROOT = Path(__file__).resolve().parents[2]
IMPORT_PATH = os.pathsep.join(str(ROOT / p) for p in ("layers/imagegw", "functions/submit", "functions/poll",
                                                        "functions/fetch"))


def readme_dialects() -> list[str]:
    """The dialect names in the first column of the README's "Dialects" table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### Dialects\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)


def test_every_registered_dialect_has_a_readme_row_and_every_row_is_registered():
    rows = readme_dialects()
    assert len(rows) == len(set(rows))
    assert set(rows) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_entry_loads_the_dialect_of_its_name_once(name):
    dialect = get_dialect(name)
    assert isinstance(dialect, Dialect) and dialect.name == name
    assert get_dialect(name) is dialect


def run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": IMPORT_PATH, "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("module", ["submit_handler", "poll_handler", "fetch_handler", "imagegw.worker"])
def test_no_handler_loads_pillow(module):
    done = run(f"import sys, {module}, imagegw\n"
               f"assert imagegw.__file__.startswith({str(ROOT)!r}), imagegw.__file__\n"
               f"print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith('PIL.')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_provider_configuration_checks_dialect_names_without_importing_a_dialect():
    done = run("import sys\n"
               "from imagegw import provider_config\n"
               "found = provider_config.problems({'providers': {'p': {'dialect': 'opneai'}}, "
               "'models': {'m': [{'provider': 'p'}]}})\n"
               "print(found)\n"
               "print(sorted(m for m in sys.modules if m.startswith('imagegw.dialects.')))")
    assert done.returncode == 0, done.stderr
    problems, loaded = done.stdout.strip().splitlines()
    assert "unknown dialect 'opneai' (did you mean 'openai'?)" in problems
    assert loaded == "['imagegw.dialects.base']"
