"""The `imagegw` command (the console script `make install` puts in .venv/bin) against the local stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def imagegw(stack, *args: str, cwd: Path, key: str = "sk-local") -> subprocess.CompletedProcess:
    script = shutil.which("imagegw", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "imagegw_cli.main"]
    env = {**os.environ, "IMAGEGW_BASE_URL": stack.base_url, "IMAGEGW_API_KEY": key,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "cli"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_generate_shows_progress_saves_the_images_and_status_reads_the_task(stack, tmp_path):
    result = imagegw(stack, "generate", "a lighthouse", "--model", "gpt-image-1", "--n", "2", "--size", "1024x1024",
                     "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    progress = result.stderr.splitlines()
    assert "\r" not in result.stderr  # not a terminal: one line per change
    assert all(re.fullmatch(r"imgtask_\w+  (queued|in_progress|succeeded) +\d{1,3}%", line) for line in progress)
    assert progress[-1].endswith("succeeded   100%")
    task_id = progress[-1].split()[0]
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert paths == [tmp_path / "out" / f"{task_id}-{i}.png" for i in range(2)]
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (1024, 1024))

    status = imagegw(stack, "status", task_id, cwd=tmp_path)
    assert status.returncode == 0 and "status     succeeded 100%" in status.stdout and "images     2" in status.stdout
    raw = json.loads(imagegw(stack, "status", task_id, "--json", cwd=tmp_path).stdout)
    assert raw["id"] == task_id and raw["status"] == "succeeded" and len(raw["data"]) == 2

    other = imagegw(stack, "status", task_id, cwd=tmp_path, key="sk-other")  # another key's task: 404
    assert other.returncode == 1 and other.stderr.startswith("error: ") and "(param: " in other.stderr


def test_api_error_is_printed_with_its_param(stack, tmp_path):
    result = imagegw(stack, "generate", "a lighthouse", "--model", "gpt-image-1", "--size", "7x7",
                     "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(r"error: .*7x7.* \(param: size\)\n", result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_batch_uploads_a_jsonl_and_waits_for_its_results(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGW_BUCKET", "imagegw-local-images")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{stack.aws_port}")
    source = tmp_path / "cli-posters.jsonl"
    source.write_text("\n".join(json.dumps({"custom_id": f"p{i}", "body": {"model": "gpt-image-1",
                                                                           "prompt": f"poster {i}"}})
                                for i in range(3)) + "\n")
    result = imagegw(stack, "batch", str(source), "--timeout", "90", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = tmp_path / "cli-posters.results.jsonl"
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [(r["custom_id"], r["status"]) for r in lines] == [("p0", "succeeded"), ("p1", "succeeded"),
                                                                ("p2", "succeeded")]
