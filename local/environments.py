"""The API's Lambda execution environments: an elastic pool of worker processes, one invocation at a time each.

Deployed, API Gateway gives each concurrent request its own execution environment. Handlers rely on that:
Powertools' REST resolver keeps the current request in class-level state (`BaseRouter.current_event`) and
per-request context on the shared resolver, so two overlapping invocations in one process would read each
other's request. Here every environment is a process started with `spawn` (the parent has threads, so
`fork` is unsafe), which inherits the stack's environment variables (set before the pool starts), puts
the functions' code and layers on sys.path and imports their handlers once, as Lambda's init phase does,
then runs invocations one after another.

As Lambda does, the pool grows with concurrency: API_CONCURRENCY environments are started warm with the
stack, and a request that finds none free starts one more (a cold start of a second or two), up to
API_MAX_CONCURRENCY; those extra ones stay warm and are stopped after IDLE_TTL_S unused. So requests
waiting on a slow upstream never starve the others. Only when the maximum is running and none comes free
within THROTTLE_WAIT_S does a request get `Throttled` (the caller answers 429, as for a throttled Lambda).
Each environment is a process of about ENVIRONMENT_MB: the default maximum is lowered so that they would
take at most half the memory available at start.

Past the caller's deadline (the route's integration timeout) `invoke` raises `IntegrationTimeout`, which
the caller answers as API Gateway would (the template's INTEGRATION_TIMEOUT gateway response). The function
is not stopped, as Lambda does not stop it: its environment stays busy until it returns, then its result is
logged and dropped and the environment serves again; meanwhile other requests get other environments. A
handler's exception comes back as its traceback text, and an environment that dies or runs past its
function's Timeout (late or not) is replaced by a fresh one.

Only the API runs here: EventBridge deliveries and the schedule invoke the functions in the stack's own
process (local/queues.py, local/schedule.py), since they do not go through the resolver.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Final

from .template import Function

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = min(4, os.cpu_count() or 1)  # warm at start: more processes than cores slows the start
DEFAULT_MAX_CONCURRENCY = 16  # started on demand; fewer if memory is short (default_max_concurrency)
ENVIRONMENT_MB = 110  # one environment with the shipped functions: measured 106 MB resident, 77 MB of it private
IDLE_TTL_S = 300  # an environment beyond API_CONCURRENCY unused this long is stopped
THROTTLE_WAIT_S = 5  # at API_MAX_CONCURRENCY, how long a request waits for a free environment before a 429
RETRY_AFTER_S = 1  # the Retry-After of that 429
START_BACKOFF_S = 5  # after an environment failed to start, before another is tried
WARM_TIMEOUT_S = 90  # one environment's init phase (imports), generous for a loaded laptop
STOP_TIMEOUT_S = 5
KILL_GRACE_S = 1  # after a function's Timeout, before its environment is stopped
# Final: the names stay literals, which boto3.client()'s typed overloads need.
WARM_SERVICES: Final = ("dynamodb", "s3", "events")  # what the functions call (local/aws.py creates these too)


class IntegrationTimeout(TimeoutError):
    """No answer before the deadline: no environment came free (`queued`), or the function was too slow."""

    def __init__(self, message: str, *, queued: bool):
        super().__init__(message)
        self.queued = queued


class Throttled(Exception):
    """Every environment, API_MAX_CONCURRENCY of them, stayed busy: Lambda would throttle the invocation."""

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvocationFailed(Exception):
    """The invocation ended without a result: `detail` is the handler's traceback, or what happened."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


@dataclass(eq=False)
class _Environment:
    name: str
    process: BaseProcess
    conn: Connection  # the parent's end; used only by whoever has the environment checked out
    idle_since: float = 0.0  # time.monotonic() of its last check-in


class EnvironmentPool:
    """Worker processes serving invocations of `functions` (by logical id): `size` warm, up to `max_size`.

    `count` environments exist (or are starting); `_idle` holds the free ones, warmest last. A request that
    finds none free starts one more, unless `max_size` are running: it then waits up to `throttle_wait_s`
    for one to come free before `Throttled`. Environments beyond `size` idle for `idle_ttl_s` are stopped.
    """

    def __init__(self, functions: dict[str, Function], region: str, size: int = DEFAULT_CONCURRENCY,
                 max_size: int | None = None, *, idle_ttl_s: float = IDLE_TTL_S,
                 throttle_wait_s: float = THROTTLE_WAIT_S):
        if size < 1:
            raise ValueError(f"API_CONCURRENCY must be at least 1, not {size}")
        max_size = default_max_concurrency(size) if max_size is None else max_size
        if max_size < size:
            raise ValueError(f"API_MAX_CONCURRENCY ({max_size}) must be at least API_CONCURRENCY ({size})")
        self.size = size
        self.max_size = max_size
        self.idle_ttl_s = idle_ttl_s
        self.throttle_wait_s = throttle_wait_s
        self._specs = {str(logical_id): _plain(fn) for logical_id, fn in functions.items()}
        self._region = region
        self._ctx = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()  # guards everything below
        # Last in, first out: sequential requests keep reusing the warmest environment (as Lambda reuses
        # warm ones), and the coldest, at the bottom, are the ones stopped when idle.
        self._idle: list[_Environment] = []
        self._live: dict[str, _Environment] = {}  # every started process, busy or idle, until retired
        self._count = 0  # environments running or being started: never above max_size
        self._cold = 0  # of which being started on demand
        self._waiting = 0  # requests waiting for an environment
        self._no_start_until = 0.0  # after a failed start, not another for a while
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._initial: list[_Environment] = []
        self._reaper = threading.Thread(target=self._reap_idle, name="api-env-reaper", daemon=True)

    @property
    def count(self) -> int:
        """Environments running or being started."""
        with self._cond:
            return self._count

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the `size` warm environments (their init phases run in parallel); `wait_ready` waits for them.

        The processes copy os.environ now: the stack's environment must be complete before this is called
        (and so are the ones started later, on demand: the stack does not change its environment meanwhile).
        """
        with self._cond:
            self._count = self.size
        self._initial = [self._spawn() for _ in range(self.size)]

    def wait_ready(self, timeout_s: float = WARM_TIMEOUT_S) -> float:
        """Wait until every environment has imported its handlers; the seconds waited. Raises if one failed."""
        started = time.monotonic()
        deadline = started + timeout_s
        for env in self._initial:
            self._await_init(env, deadline)
            self._checkin(env)
        self._initial = []
        self._reaper.start()
        return time.monotonic() - started

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Terminate every environment (a running invocation is cut short, as on a deployment) and reap them."""
        self._stopping.set()
        with self._cond:
            envs = list(self._live.values())
            self._live.clear()
            self._idle.clear()
            self._cond.notify_all()
        for env in envs:
            if env.process.is_alive():
                env.process.terminate()
        deadline = time.monotonic() + timeout_s
        for env in envs:
            env.process.join(max(0.0, deadline - time.monotonic()))
            if env.process.is_alive():
                env.process.kill()
                env.process.join(1)
            env.conn.close()
        if self._reaper.is_alive():
            self._reaper.join(timeout=2)

    # -- invocations ------------------------------------------------------------------------------------------
    def invoke(self, logical_id: str, event: dict[str, Any], *, request_id: str, deadline: float) -> Any:
        """Run one invocation in a free environment and return the handler's result.

        `deadline` (time.monotonic()) is when API Gateway stops waiting: reached while queued or while the
        function runs, it raises IntegrationTimeout; a function still running then goes on in its
        environment (as in Lambda) until it answers or reaches its Timeout.
        """
        fn = self._specs[logical_id]
        env = self._checkout(deadline)
        fn_deadline = time.monotonic() + fn.timeout_s
        try:
            payload = _pickle((str(logical_id), event, str(request_id)))
        except Exception:  # noqa: BLE001 - nothing was sent: the environment is still clean
            self._checkin(env)
            raise InvocationFailed(f"{logical_id}: the event could not be passed on", traceback.format_exc()) from None
        try:
            env.conn.send_bytes(payload)
        except OSError as exc:
            self._replace(env)
            detail = f"{env.name} could not be sent the invocation (exit code {env.process.exitcode})"
            raise InvocationFailed(f"{logical_id}: its execution environment is gone", detail) from exc
        answered = env.conn.poll(max(0.0, min(deadline, fn_deadline) - time.monotonic()))
        if not answered:
            if fn_deadline <= deadline:  # Lambda stops the function at its Timeout: API Gateway answers 502
                self._replace(env)
                raise InvocationFailed(f"{logical_id}: timed out",
                                       f"{env.name} ran past the function's {fn.timeout_s} s Timeout and was stopped")
            # API Gateway answers 504; the function itself runs on, and its environment stays busy until done.
            threading.Thread(target=self._finish_late, args=(env, logical_id, request_id, fn_deadline),
                             name=f"{env.name}-late", daemon=True).start()
            raise IntegrationTimeout(f"{logical_id} is still running in {env.name}, which stays busy until it returns",
                                     queued=False)
        return self._reply(env, logical_id)

    def _reply(self, env: _Environment, logical_id: str) -> Any:
        try:
            status, payload = env.conn.recv()
        except (EOFError, OSError):
            env.process.join(1)
            code = env.process.exitcode
            self._replace(env)
            raise InvocationFailed(f"{logical_id}: its execution environment died",
                                   f"{env.name} exited with code {code} during the invocation") from None
        self._checkin(env)
        if status == "error":
            raise InvocationFailed(f"{logical_id} raised", payload)
        return payload

    def _finish_late(self, env: _Environment, logical_id: str, request_id: str, fn_deadline: float) -> None:
        if env.conn.poll(max(0.0, fn_deadline - time.monotonic()) + KILL_GRACE_S):
            try:
                status, payload = env.conn.recv()
            except (EOFError, OSError):
                if not self._stopping.is_set():
                    log.error("%s: %s died after the integration timeout (request %s)", logical_id, env.name,
                              request_id)
                self._replace(env)
                return
            log.warning("%s finished request %s after API Gateway had answered 504 (%s)", logical_id, request_id,
                        "raised:\n" + payload if status == "error" else "its result is dropped")
            self._checkin(env)
        else:
            log.warning("%s: request %s ran past the function's Timeout; stopping %s as Lambda would",
                        logical_id, request_id, env.name)
            self._replace(env)

    def _checkout(self, deadline: float) -> _Environment:
        """The warmest free environment; else one started for this request, or one that comes free first.

        Raises Throttled when `max_size` environments are running and none came free within
        `throttle_wait_s`, IntegrationTimeout(queued=True) if API Gateway's deadline passes first.
        """
        throttle_at = time.monotonic() + self.throttle_wait_s
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._stopping.is_set():
                        raise InvocationFailed("the stack is stopping", "no execution environment is left")
                    if self._idle:
                        env = self._idle.pop()
                        if env.process.is_alive():
                            return env
                        log.error("%s exited while idle (code %s); replacing it", env.name, env.process.exitcode)
                        self._replace(env)  # the lock is reentrant; joining a dead process does not wait
                        continue
                    now = time.monotonic()
                    if self._waiting > self._cold and self._count < self.max_size and now >= self._no_start_until:
                        self._start_one()  # as Lambda does: a concurrent request gets a new environment
                        continue
                    at_max = self._count >= self.max_size
                    if now >= deadline:
                        raise IntegrationTimeout(f"all {self._count} execution environments stayed busy", queued=True)
                    if at_max and self._waiting > self._cold and now >= throttle_at:
                        raise Throttled(f"all {self._count} execution environments (API_MAX_CONCURRENCY) stayed busy "
                                        f"for {self.throttle_wait_s:g} s", retry_after_s=RETRY_AFTER_S)
                    wake = min(deadline, throttle_at) if at_max else deadline
                    self._cond.wait(min(0.5, max(0.01, wake - now)))  # slices: notice stop() and the deadline
            finally:
                self._waiting -= 1

    def _checkin(self, env: _Environment) -> None:
        with self._cond:
            if self._stopping.is_set() or env.name not in self._live:
                return  # stop() has taken it over
            env.idle_since = time.monotonic()
            self._idle.append(env)
            self._cond.notify()

    # -- environments -----------------------------------------------------------------------------------------
    def _spawn(self) -> _Environment:
        name = f"api-env-{next(self._ids)}"
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_environment_main, name=name, daemon=True,
                                    args=(child_end, self._specs, self._region, _logging_setup()))
        process.start()
        child_end.close()  # so that the parent's end sees EOF when the process dies
        env = _Environment(name, process, parent_end)
        with self._cond:
            if not self._stopping.is_set():
                self._live[name] = env
                return env
        process.kill()  # stop() ran meanwhile and would not have seen this one
        process.join(1)
        parent_end.close()
        raise RuntimeError("the pool is stopping")

    def _await_init(self, env: _Environment, deadline: float) -> None:
        try:
            if not env.conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{env.name} did not finish importing the handlers in time")
            status, detail = env.conn.recv()
        except (EOFError, OSError):
            env.process.join(1)
            raise RuntimeError(f"{env.name} exited with code {env.process.exitcode} while importing the handlers; "
                               "see its output above") from None
        if status != "ready":
            raise RuntimeError(f"{env.name} could not import the handlers:\n{detail}")
        log.debug("%s warm in %.2f s", env.name, detail)

    def _start_one(self) -> None:
        """Count one more environment and start it in the background. The caller holds the lock."""
        self._count += 1
        self._cold += 1
        threading.Thread(target=self._cold_start, name="api-env-start", daemon=True).start()

    def _cold_start(self) -> None:
        started = time.monotonic()
        env: _Environment | None = None
        try:
            env = self._spawn()
            self._await_init(env, started + WARM_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the pool runs on, one environment short
            if not self._stopping.is_set():
                log.exception("could not start an execution environment")
            if env is not None:
                self._retire(env)
            with self._cond:
                self._count -= 1
                self._cold -= 1
                self._no_start_until = time.monotonic() + START_BACKOFF_S  # not one failed start per request
                self._cond.notify_all()
            return
        with self._cond:
            self._cold -= 1
            count = self._count
        log.info("%s started in %.2f s (%d of at most %d execution environments)", env.name,
                 time.monotonic() - started, count, self.max_size)
        self._checkin(env)

    def _replace(self, env: _Environment) -> None:
        """Retire a broken or stuck environment; start another at once if fewer than `size` are left."""
        if not self._retire(env):
            return  # stop() has taken it over (it terminates, reaps and closes every live environment)
        with self._cond:
            self._count -= 1
            if not self._stopping.is_set() and self._count < self.size:
                self._start_one()
            self._cond.notify_all()  # a waiting request may start one now

    def _retire(self, env: _Environment, *, graceful: bool = False) -> bool:
        """Stop one environment's process (asked to exit if `graceful`, else killed); False if stop() has it."""
        with self._cond:
            if self._live.pop(env.name, None) is None:
                return False
        if graceful:
            try:
                env.conn.send(None)  # its loop returns: the process exits
            except OSError:
                pass
            env.process.join(STOP_TIMEOUT_S)
        if env.process.is_alive():
            env.process.kill()
        env.process.join(1)
        env.conn.close()
        return True

    def _reap_idle(self) -> None:
        """Stop environments beyond `size` once idle for `idle_ttl_s` (Lambda too stops idle ones)."""
        interval = max(0.1, min(5.0, self.idle_ttl_s / 4))
        while not self._stopping.wait(interval):
            now = time.monotonic()
            expired: list[_Environment] = []
            with self._cond:
                while self._count > self.size and self._idle and now - self._idle[0].idle_since >= self.idle_ttl_s:
                    expired.append(self._idle.pop(0))  # the bottom of the stack has idled longest
                    self._count -= 1
                count = self._count
            for env in expired:
                self._retire(env, graceful=True)
                log.info("%s stopped after %.0f s idle (%d execution environments left)", env.name,
                         now - env.idle_since, count)


def default_max_concurrency(size: int) -> int:
    """DEFAULT_MAX_CONCURRENCY, or fewer if that many environments would take over half the available memory."""
    cap = DEFAULT_MAX_CONCURRENCY
    available = _available_memory_mb()
    if available is not None:
        cap = min(cap, int(available / 2 // ENVIRONMENT_MB))
    return max(size, cap)


def _available_memory_mb() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None  # not Linux: the default stands


def _warm_clients() -> None:
    """Create boto3 clients on the default session, as the stack's own process does before the handlers run.

    The handlers create theirs on first use, on that same session; its loader then has the service models
    in memory already, which takes a few hundred milliseconds off the first request of each environment.
    Creating a client makes no request.
    """
    try:
        import boto3

        for service in WARM_SERVICES:
            boto3.client(service)
    except Exception:  # noqa: BLE001 - only an optimisation: the handlers will say what is wrong
        log.debug("could not pre-create boto3 clients", exc_info=True)


def _pickle(obj: Any) -> memoryview:
    """What `Connection.send` sends, pickled apart so that a failure to pickle leaves the pipe untouched."""
    return ForkingPickler.dumps(obj)


def _plain(fn: Function) -> Function:
    """The spec with plain str/int values: the template decoder's string nodes cannot be pickled."""
    return dataclasses.replace(
        fn, logical_id=str(fn.logical_id), name=str(fn.name), code_dir=Path(str(fn.code_dir)), handler=str(fn.handler),
        layer_dirs=[Path(str(d)) for d in fn.layer_dirs], timeout_s=int(fn.timeout_s), memory_mb=int(fn.memory_mb),
        environment={str(k): str(v) for k, v in fn.environment.items()})


def _logging_setup() -> tuple[int, bool, dict[str, int]]:
    """The parent's logging, for the environments to mirror: root level, whether configured, named levels."""
    root = logging.getLogger()
    named = {name: logging.getLogger(name).level for name in ("botocore", "boto3", "urllib3", "local")
             if logging.getLogger(name).level}
    return root.getEffectiveLevel(), bool(root.handlers), named


def _environment_main(conn: Connection, specs: dict[str, Function], region: str,
                      logging_setup: tuple[int, bool, dict[str, int]]) -> None:
    """One execution environment: the init phase (import the handlers), then invocations, one at a time."""
    from .lambdas import Functions  # the package is importable here: spawn gave us the parent's sys.path

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    for stream in (sys.stdout, sys.stderr):  # a terminated environment must not take buffered log lines with it
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    level, configured, named = logging_setup
    if configured:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s[%(processName)s]: %(message)s")
    for name, named_level in named.items():
        logging.getLogger(name).setLevel(named_level)
    # As in the stack's process: with metrics disabled Powertools warns on each invocation that published none.
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
    started = time.monotonic()
    try:
        functions = Functions(specs, region)
        functions.load()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the start with it
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", time.monotonic() - started))
    _warm_clients()  # after "ready": it shortens the first request without lengthening the start
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the stack is gone
        if message is None:
            return
        logical_id, event, request_id = message
        try:
            reply = ("ok", functions.invoke(logical_id, event, request_id=request_id))
        except BaseException:  # noqa: BLE001 - as the Lambda runtime reports any error of the handler
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:
            return
        except Exception:  # noqa: BLE001 - a result that cannot be pickled: Lambda could not serialise it either
            conn.send(("error", "the function's result could not be returned:\n" + traceback.format_exc()))
