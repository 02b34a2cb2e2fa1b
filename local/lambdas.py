"""The functions of template.yaml, imported and invoked in this process, unchanged.

Each function's CodeUri and its layers' ContentUri go on sys.path (as Lambda puts them on the runtime's
path), the Handler module is imported once (a "warm" environment) and `lambda_handler(event, context)` is
called with a context object carrying what Powertools' `inject_lambda_context` reads.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from .template import ACCOUNT_ID, Function, TemplateError

log = logging.getLogger(__name__)


class LambdaContext:
    """The attributes of the Lambda runtime's context object that handlers and Powertools use."""

    def __init__(self, fn: Function, region: str, request_id: str | None = None):
        self.function_name = fn.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{fn.name}"
        self.memory_limit_in_mb = fn.memory_mb
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{fn.name}"
        self.log_stream_name = f"local/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = time.monotonic() + fn.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Functions:
    """The template's functions by logical id, each bound to its imported handler."""

    def __init__(self, functions: dict[str, Function], region: str):
        self.specs = functions
        self.region = region
        self.handlers: dict[str, Callable[[dict, Any], Any]] = {}

    def load(self) -> None:
        """Put code and layers on sys.path and import every handler (all at start: errors show at once)."""
        _check_unique_modules(self.specs.values())
        for fn in self.specs.values():
            for directory in [fn.code_dir, *fn.layer_dirs]:
                if not directory.is_dir():
                    raise TemplateError(f"{fn.logical_id}: {directory} is not a directory")
                if str(directory) not in sys.path:
                    sys.path.insert(0, str(directory))
        for fn in self.specs.values():
            module = importlib.import_module(fn.module_name)
            origin = Path(getattr(module, "__file__", "") or "").resolve()
            if fn.code_dir not in origin.parents:
                raise TemplateError(f"{fn.logical_id}: module {fn.module_name} was imported from {origin}, "
                                    f"not from its CodeUri {fn.code_dir} (a name clash on sys.path?)")
            handler = getattr(module, fn.handler_name, None)
            if not callable(handler):
                raise TemplateError(f"{fn.logical_id}: {fn.handler} is not a function")
            self.handlers[fn.logical_id] = handler
            log.debug("loaded %s (%s) from %s", fn.logical_id, fn.handler, origin)

    def cold_start(self) -> None:
        """Forget what earlier runs in this process cached (boto3 clients bound to an old endpoint, ...).

        Lambda gives a new deployment fresh environments; in one process, the equivalent is clearing the
        module-level `functools` caches of the function and layer code.
        """
        # Real paths per directory, compared as strings: resolving every module's own path (thousands of
        # them) took most of a second of each start.
        dirs = {d for fn in self.specs.values() for d in [fn.code_dir, *fn.layer_dirs]}
        roots = tuple(os.path.join(os.path.realpath(d), "") for d in dirs)
        real_dirs: dict[str, str] = {}
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if not isinstance(path, str):
                continue
            directory = os.path.dirname(path)
            if directory not in real_dirs:
                real_dirs[directory] = os.path.join(os.path.realpath(directory), "")
            if not real_dirs[directory].startswith(roots):
                continue
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                    value.cache_clear()

    def invoke(self, logical_id: str, event: dict[str, Any], *, request_id: str | None = None) -> Any:
        """Call the function's handler; exceptions propagate (the caller decides: 502, retry, log)."""
        fn = self.specs[logical_id]
        context = LambdaContext(fn, self.region, request_id)
        started = time.monotonic()
        try:
            return self.handlers[logical_id](event, context)
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.debug("%s %s took %.0f ms", fn.logical_id, context.aws_request_id, elapsed_ms)
            if elapsed_ms > fn.timeout_s * 1000:
                # Lambda would have killed it; in-process it ran on. Worth knowing before deploying.
                log.warning("%s ran %.1f s, past its %d s Timeout", fn.logical_id, elapsed_ms / 1000, fn.timeout_s)


def _check_unique_modules(functions: Any) -> None:
    seen: dict[str, Function] = {}
    for fn in functions:
        other = seen.setdefault(fn.module_name, fn)
        if other is not fn and other.code_dir != fn.code_dir:
            raise TemplateError(f"{other.logical_id} and {fn.logical_id} both use a module named "
                                f"{fn.module_name!r}; in one process each handler module needs a unique name")
