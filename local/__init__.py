"""imagegw's docker-free local stack: template.yaml's API, functions, events and schedule over moto.

`python -m local` (what `make run` runs) serves the API on 127.0.0.1:$PORT and moto on 127.0.0.1:$AWS_PORT;
tests can run it in-process with `start(...)` -> `Stack` and `Stack.stop()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stack import Stack, start

__all__ = ["Stack", "start"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: the API's execution environments are processes that
    # import `local.environments` (and so this package), and must not pay for moto and boto3 here.
    if name in __all__:
        from . import stack

        return getattr(stack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
