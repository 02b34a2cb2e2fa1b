"""What every function handler wraps itself in, kept light enough to import on a cold start.

A handler module imports only this, the logger and the metrics sink; each kind of event imports the modules of
its own code path when it first comes (`import` is a dictionary look-up after that). So a cold start pays for
the path of the event that woke it, not for all of them: a "Task Queued" event never loads the HTTP API's
resolver and its pydantic models, an API request never loads the batch reader. Where initialisation is not
on a request's clock (a SnapStart snapshot, provisioned concurrency) `preload` imports every path at init
instead, so the snapshot holds them and no restored invocation pays for an import. `bench/test_cold_import.py`
measures it and tests/unit/test_cold_import.py keeps the heavy packages out of the handlers' imports.
"""

from __future__ import annotations

import functools
import random
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from importlib import import_module
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Tracer

from . import correlation, observability, settings

T = TypeVar("T")

#: the invocation's `context.get_remaining_time_in_millis` (worker: stage retries start only while there is time)
time_left_ms: ContextVar[Callable[[], int] | None] = ContextVar("time_left_ms", default=None)

#: AWS_LAMBDA_INITIALIZATION_TYPE values whose init no request waits for
PRELOADED_INITIALIZATIONS = frozenset({"snap-start", "provisioned-concurrency"})


def preload(*modules: str) -> bool:
    """Import a handler's code paths at init where that init is done ahead of requests (see
    PRELOADED_INITIALIZATIONS); on an on-demand cold start each path loads when its first event comes."""
    if settings.current().lambda_initialization_type not in PRELOADED_INITIALIZATIONS:
        return False
    for module in modules:
        import_module(module)
    return True


_importing = threading.Lock()


def load(module: str) -> Any:
    """A code path's module, imported when its first event comes (`import` is a dictionary look-up after that).
    One first import at a time in a process: on the local stack and in tests handlers run in threads of one
    process, and two threads importing modules that share dependencies, in different orders, deadlock Python's
    per-module import locks (`_DeadlockError`)."""
    found = sys.modules.get(module)
    if found is not None and not getattr(getattr(found, "__spec__", None), "_initializing", False):
        return found
    with _importing:
        return import_module(module)

def lambda_time_bound(handler: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
    """Decorate a Lambda handler: the stage retries it makes start only while the invocation has time for them
    (one killed mid-backoff would leave its task on a lease for WORKER_LEASE_S)."""

    @functools.wraps(handler)
    def bounded(event: Any, context: Any) -> T:
        token = time_left_ms.set(getattr(context, "get_remaining_time_in_millis", None))
        try:
            return handler(event, context)
        finally:
            time_left_ms.reset(token)

    return bounded


def tracing_disabled() -> bool:
    """Powertools' own rule: POWERTOOLS_TRACE_DISABLED, or not running in Lambda (or in `sam local`)."""
    return bool(Tracer._is_tracer_disabled())


def traced(handler: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
    """`Tracer().capture_lambda_handler` where tracing is on (in Lambda, `Tracing: Active`). Where it is off, the
    handler as it is: a disabled Tracer would still import the X-Ray SDK (about half an `import boto3`) only to
    record nothing."""
    if tracing_disabled():
        return handler
    return Tracer().capture_lambda_handler(handler)



def lambda_handler(logger: Logger) -> Callable[[Callable[[Any, Any], T]], Callable[[Any, Any], T]]:
    """What every function handler is wrapped in, outermost first: the Lambda context and the correlation id in
    each log line of `logger`'s service, tracing (`traced`), the metrics flush (with `ColdStart`), the time bound
    of stage retries, and the correlation id bound for the layer (`correlation.bound`)."""

    def wrap(handler: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
        inner = observability.log_metrics(lambda_time_bound(correlation.bound(handler)))
        return logger.inject_lambda_context(clear_state=True, correlation_id_path=correlation.PATH)(traced(inner))

    return wrap

# -- SnapStart ------------------------------------------------------------------------------------------------

#: what caches a connection or a session when first used (module, cached callable): a snapshot taken after
#: one was made would hand every restored environment the same frozen connection
_CONNECTIONS = (("imagegw.table", "task_table"), ("imagegw.bus", "client"), ("imagegw.storage", "s3"),
                ("imagegw.keys", "keys_table"), ("imagegw.transport", "session"), ("imagegw.checks", "_queue"))


def after_restore() -> None:
    """What a function resumed from a SnapStart snapshot makes again: `random`'s state (every environment
    restored from one snapshot would otherwise draw the same backoff jitter and slot order; uuid4 and secrets
    read the OS's entropy and need nothing) and the AWS clients and HTTP sessions cached before the snapshot,
    whose connections it froze."""
    random.seed()
    for module_name, attribute in _CONNECTIONS:
        module = sys.modules.get(module_name)
        cached = getattr(module, attribute, None) if module is not None else None
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()


def register_snapstart_hooks() -> bool:
    """Register `after_restore` with Lambda's runtime hooks (the `snapshot_restore_py` library the Python
    managed runtimes include); False where it is absent (tests, the local stack)."""
    try:
        from snapshot_restore_py import register_after_restore  # type: ignore[import-not-found]
    except ImportError:
        return False
    register_after_restore(after_restore)
    return True


register_snapstart_hooks()
