"""Runs sample events through one function as Lambda would run its built artifact: started with `python -I -S`
(no site-packages, no PYTHONPATH), with only the function's build directory and the built layer (`/opt/python`'s
layout) on sys.path. Prints one JSON line per event: its file, and the status (an API answer's statusCode, `ok`
for an event, or `error: <type>: <message>`). Standard library only, so nothing from the test's venv leaks in."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


class Context:
    function_name = "packaged-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:packaged-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def main() -> None:
    function_dir, layer_dir, handler, *events = sys.argv[1:]
    sys.path[:0] = [function_dir, layer_dir]
    module_name, _, attribute = handler.rpartition(".")
    try:
        module = __import__(module_name)
        run = getattr(module, attribute)
    except BaseException as exc:  # noqa: BLE001 - reported, not raised: the test names what is missing
        print(json.dumps({"event": "(import)", "status": f"error: {type(exc).__name__}: {exc}"}), flush=True)
        return
    leaked = [name for name in ("pytest", "moto", "local", "tests") if name in sys.modules]
    print(json.dumps({"event": "(import)", "status": "ok", "leaked": leaked,
                      "files": sorted({str(Path(getattr(m, "__file__", "") or "").resolve())
                                       for m in list(sys.modules.values())
                                       if getattr(m, "__file__", None) and "site-packages" in m.__file__})[:5]}),
          flush=True)
    for path in events:
        event = json.loads(Path(path).read_text())
        try:
            answer = run(event, Context())
            status = str(answer.get("statusCode")) if isinstance(answer, dict) and "statusCode" in answer else "ok"
        except BaseException as exc:  # noqa: BLE001
            traceback.print_exc()
            status = f"error: {type(exc).__name__}: {exc}"
        print(json.dumps({"event": Path(path).name, "status": status}), flush=True)


if __name__ == "__main__":
    main()
