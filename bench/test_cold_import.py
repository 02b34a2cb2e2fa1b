"""Cold-start import cost of each function handler, as a ratio to `import boto3` measured in the same run.

A Lambda cold start pays for every module its handler imports, then for what its first event's code path imports
(each path loads its modules when its first event comes: imagegw.entry). Each figure is the shortest wall time of
RUNS fresh interpreters (`python -c "import ..."`), taken round-robin: on a shared machine other work only ever
adds time, so the shortest is the import's own cost, and the ratio is stable across machines where absolute
times are not. The bench prints:

- each handler's import, with tracing off (as `sam local`, the tests and the local stack run; asserted at most
  TARGET x `import boto3`) and on, as deployed (`Tracing: Active`: the X-Ray SDK and its patches load at init,
  with LAMBDA_TASK_ROOT set, where the SDK costs far less than outside Lambda);
- each code path's first event: the handler plus the modules that path imports, tracing off and on;
- with COLD_IMPORT_BASELINE=<another checkout of this repository> (e.g. the main branch), the same figures for
  that checkout side by side, in the same run.

It also lists the heavy packages each handler's import pulls in (`-X importtime`): none of WATCH may be among
them (tests/unit/test_cold_import.py asserts it without timing anything).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = os.environ.get("COLD_IMPORT_BASELINE")
RUNS = 9
TARGET = 1.5
HANDLERS = {"submit": "submit_handler", "poll": "poll_handler", "fetch": "fetch_handler"}
#: what each kind of event imports on top of its handler (see the handlers)
CODE_PATHS = {
    "submit": {"http": ("imagegw.api",), "task queued": ("imagegw.batches.jobs", "imagegw.bus", "imagegw.worker"),
               "generation requested": ("imagegw.batches.jobs", "imagegw.bus", "imagegw.intake"),
               "batch": ("imagegw.batches.jobs",)},
    "poll": {"http": ("imagegw.api",), "sweep/check": ("imagegw.sweeper",)},
    "fetch": {"http": ("imagegw.api",), "task generated": ("imagegw.bus", "imagegw.worker"),
              "webhook due": ("imagegw.bus", "imagegw.webhooks")},
}
WATCH = ("PIL", "pydantic", "requests", "yaml", "aws_xray_sdk")


def _env(root: Path, tracing: bool = False) -> dict[str, str]:
    paths = [root / "layers/imagegw", *(root / "functions" / name for name in HANDLERS)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "AWS_DEFAULT_REGION": "us-east-1",
           "POWERTOOLS_SERVICE_NAME": "imagegw", "POWERTOOLS_TRACE_DISABLED": "true"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # any value, "0" too, would stop the warm-up writing the byte-code
    env.pop("AWS_LAMBDA_INITIALIZATION_TYPE", None)  # on demand: each path loads when its first event comes
    if tracing:  # as in Lambda with `Tracing: Active`: Powertools turns the Tracer on
        del env["POWERTOOLS_TRACE_DISABLED"]
        env["LAMBDA_TASK_ROOT"] = str(root)
    return env


def _run(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def _shortest(probes: dict[str, tuple[str, dict[str, str]]]) -> dict[str, float]:
    """Each probe's shortest time over RUNS, the probes taken round-robin (after a warm-up round for the byte-code)."""
    for code, env in probes.values():
        _run(code, env)
    times: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(RUNS):
        for name, (code, env) in probes.items():
            times[name].append(_run(code, env))
    return {name: min(values) for name, values in times.items()}


def _top_level_packages(module: str, env: dict[str, str]) -> set[str]:
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=env, check=True,
                         capture_output=True, text=True)
    names = set()
    for line in run.stderr.splitlines():
        if "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _probes(label: str, root: Path) -> dict[str, tuple[str, dict[str, str]]]:
    probes = {}
    for function, module in HANDLERS.items():
        for tracing, suffix in ((False, ""), (True, " traced")):
            probes[f"{label} {function}{suffix}"] = (f"import {module}", _env(root, tracing))
            for path, modules in CODE_PATHS[function].items():
                probes[f"{label} {function} {path}{suffix}"] = (f"import {module}, {', '.join(modules)}",
                                                                 _env(root, tracing))
    return probes


def test_handler_import_time_as_a_ratio_to_boto3():
    roots = {"after": ROOT, **({"before": Path(BASELINE)} if BASELINE else {})}
    probes = {"bare": ("import sys", _env(ROOT)), "boto3": ("import boto3", _env(ROOT))}
    for label, root in roots.items():
        probes.update(_probes(label, root))
    shortest = _shortest(probes)
    bare = shortest["bare"]
    boto3_s = shortest["boto3"] - bare
    print(f"\nimport boto3: {boto3_s * 1000:.0f} ms over a bare interpreter ({bare * 1000:.0f} ms), shortest of {RUNS};"
          f" ratios to it" + (f", before = {BASELINE}" if BASELINE else ""))

    def ratio(name: str) -> float:
        return (shortest[name] - bare) / boto3_s

    def row(what: str, name: str) -> str:
        cells = ["  ".join(f"{label} {ratio(f'{label} {name}{suffix}'):4.2f} x" for label in reversed(roots))
                 for suffix in ("", " traced")]
        return f"  {what:36s} {cells[0]:28s} | {cells[1]}"

    over = []
    for function, module in HANDLERS.items():
        heavy = sorted(_top_level_packages(module, _env(ROOT)) & set(WATCH))
        print(f"{function}: import {module} loads {', '.join(heavy) or 'none of ' + ', '.join(WATCH)}")
        print(f"  {'':36s} {'tracing off':28s} | tracing on (in Lambda, as deployed)")
        print(row("import", function))
        for path in CODE_PATHS[function]:
            print(row(f"+ first {path} event", f"{function} {path}"))
        if ratio(f"after {function}") > TARGET:
            over.append(f"{function} {ratio(f'after {function}'):.2f} x")
        assert not heavy, f"{module} imports {heavy} at start"
    assert not over, f"handler imports over {TARGET} x import boto3: {over}"
