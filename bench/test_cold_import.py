"""Cold-start import cost of each function handler, as a ratio to `import boto3` measured in the same run.

A Lambda cold start pays for every module its handler imports. Each figure is the median wall time of fresh
interpreters (`python -c "import <handler>"`), so the ratio is stable across machines where absolute times are
not. The bench also lists the heavy packages each handler pulls in (`-X importtime`): PIL must not be among them,
because only the local dialect draws images.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 9
HANDLERS = {"submit": "submit_handler", "poll": "poll_handler", "fetch": "fetch_handler"}
WATCH = ("PIL", "pydantic", "requests", "yaml", "aws_xray_sdk")


def _env() -> dict[str, str]:
    paths = [ROOT / "layers/imagegw", *(ROOT / "functions" / name for name in HANDLERS)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_SERVICE_NAME": "imagegw", "POWERTOOLS_TRACE_DISABLED": "true",
            "PYTHONDONTWRITEBYTECODE": "0"}


def _median_import_s(module: str) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], env=_env(), check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _top_level_packages(module: str) -> set[str]:
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=_env(), check=True,
                         capture_output=True, text=True)
    names = set()
    for line in run.stderr.splitlines():
        if "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_handler_import_time_as_a_ratio_to_boto3():
    _median_import_s("boto3")  # warm the byte-code caches before anything is timed
    for module in HANDLERS.values():
        _median_import_s(module)
    bare = _median_import_s("sys")
    boto3_s = _median_import_s("boto3") - bare
    print(f"\nimport boto3: {boto3_s * 1000:.0f} ms over a bare interpreter ({bare * 1000:.0f} ms), median of {RUNS}")
    for function, module in HANDLERS.items():
        seconds = _median_import_s(module) - bare
        heavy = sorted(_top_level_packages(module) & set(WATCH))
        print(f"{function:7s} {module:15s} {seconds * 1000:5.0f} ms = {seconds / boto3_s:4.2f} x import boto3;"
              f" imports {', '.join(heavy) or 'none of ' + ', '.join(WATCH)}")
        assert seconds > 0
