"""Assembling the local stack: environment, embedded AWS, functions, triggers and the HTTP API.

`start()` returns a running `Stack`; `Stack.stop()` takes it all down and restores the environment. The
environment is process-wide and every function reads the same names (template Globals); by the same token
only one stack can run per process. API requests run in a pool of worker processes, the execution
environments (local/environments.py: API_CONCURRENCY warm, more on demand up to API_MAX_CONCURRENCY), which
inherit that environment; events and the schedule invoke the functions in this process.

The environments are started with multiprocessing's `spawn`: a script that calls `start()` needs the
usual `if __name__ == "__main__":` guard (`python -m local` and pytest need nothing).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import aws, eventbridge, template
from .apigateway import ApiGateway
from .environments import DEFAULT_CONCURRENCY, EnvironmentPool, default_max_concurrency
from .lambda_api import LambdaApi
from .lambdas import Functions
from .queues import QueueDelivery, WorkerPool
from .schedule import Timer, rate_seconds

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_NAME = "imagegw-local"
DEFAULT_BUCKET = "imagegw-local-images"
DEFAULT_API_KEYS = "sk-local"
DEV_WEBHOOK_SECRET = "whsec_aW1hZ2Vndy1sb2NhbC13ZWJob29rLXNlY3JldA=="  # base64 of "imagegw-local-webhook-secret"
FAKE_CREDENTIAL = "testing"
EVENT_WORKERS = 8
# Environment variables that override a template parameter, as `sam deploy --parameter-overrides` would.
PARAMETER_ENV = {"API_TIMEOUT_MS": "ApiTimeoutMillis", "SYNC_WAIT_S": "SyncWaitSeconds"}

_active_lock = threading.Lock()
_active = False  # one stack per process: the environment it sets is process-wide


@dataclass
class Stack:
    """A running local stack. `api_url` is the OpenAI base_url; `aws_url` the moto endpoint."""

    port: int
    aws_port: int
    template: template.LocalTemplate
    _moto: aws.MotoServer
    _api: ApiGateway
    _stopping: threading.Event
    _pool: WorkerPool
    _environments: EnvironmentPool
    _threads: list[threading.Thread] = field(default_factory=list)
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _stopped: bool = False
    _lambda_api: LambdaApi | None = None

    @property
    def lambda_url(self) -> str | None:
        """Lambda's Invoke API for the local functions (AWS_ENDPOINT_URL_LAMBDA for tools such as make redrive)."""
        return self._lambda_api.url if self._lambda_api else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    def stop(self) -> None:
        """Stop serving, let the loops notice, stop moto, restore the environment. Idempotent."""
        global _active
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._api.stop()
        if self._lambda_api is not None:
            self._lambda_api.stop()
        self._environments.stop()
        for thread in self._threads:
            thread.join(timeout=5)  # receive loops wake within their 1 s long poll
        self._pool.stop()
        self._moto.stop()
        _restore_env(self._saved_env)
        with _active_lock:
            _active = False
        log.info("imagegw local stack stopped")

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


def start(port: int = 3000, aws_port: int = 4566, *, api_keys: str | None = None,
          providers_file: str | os.PathLike[str] | None = None, region: str | None = None,
          sweep_interval_s: float | None = 2.0, bucket_name: str | None = None,
          parameter_overrides: dict[str, str] | None = None, root: str | os.PathLike[str] | None = None,
          event_workers: int = EVENT_WORKERS, api_concurrency: int | None = None,
          api_max_concurrency: int | None = None) -> Stack:
    """Start the stack on 127.0.0.1 (port 0 picks a free port; see `Stack.port` / `Stack.aws_port`).

    `sweep_interval_s=None` runs each Schedule event at the template's own rate. Parameters left as None
    come from the environment (API_KEYS, PROVIDERS_FILE, AWS_DEFAULT_REGION, IMAGE_BUCKET, API_CONCURRENCY,
    API_MAX_CONCURRENCY) or defaults. Template parameters come from `parameter_overrides`, else from the
    environment variables of PARAMETER_ENV (API_TIMEOUT_MS, SYNC_WAIT_S), else their Default. It returns once
    the warm execution environments of the API have imported the handlers.
    """
    global _active
    concurrency = api_concurrency if api_concurrency is not None else _concurrency_from_env()
    if concurrency < 1:
        raise ValueError(f"API_CONCURRENCY must be at least 1, not {concurrency}")
    max_concurrency = api_max_concurrency if api_max_concurrency is not None else _max_concurrency_from_env(concurrency)
    if max_concurrency < concurrency:
        raise ValueError(f"API_MAX_CONCURRENCY ({max_concurrency}) must be at least API_CONCURRENCY ({concurrency})")
    root_path = Path(root) if root else REPO_ROOT
    providers = _existing_file(providers_file or os.environ.get("PROVIDERS_FILE")
                               or root_path / "config" / "providers.local.json")
    with _active_lock:
        if _active:
            raise RuntimeError("a local stack is already running in this process (environment is process-wide)")
        _active = True
    # With metrics disabled Powertools still warns on every invocation that published none.
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    saved: dict[str, str | None] = {}
    stopping = threading.Event()
    moto: aws.MotoServer | None = None
    api: ApiGateway | None = None
    environments: EnvironmentPool | None = None
    try:
        moto = aws.MotoServer(aws_port)
        endpoint = moto.start()
        _set_env(_base_env(
            endpoint=endpoint,
            region=region,
            api_keys=api_keys if api_keys is not None else os.environ.get("API_KEYS", DEFAULT_API_KEYS),
            providers_file=providers,
        ), saved)

        tpl = template.load(root_path, stack_name=STACK_NAME, region=region,
                            bucket_name=bucket_name or os.environ.get("IMAGE_BUCKET") or DEFAULT_BUCKET,
                            parameter_overrides={**_parameters_from_env(), **(parameter_overrides or {})})
        _set_env(_function_env(tpl), saved)
        functions = Functions(tpl.functions, region)
        api_functions = {r.function: tpl.functions[r.function] for r in tpl.api_routes}
        environments = EnvironmentPool(api_functions, region, concurrency, max_concurrency)
        # Binds now: a taken PORT fails before the rest.
        api = ApiGateway(tpl.api_routes, environments, port=port, gateway_responses=tpl.gateway_responses,
                         binary_media_types=tpl.binary_media_types)
        # The environment is complete: start the execution environments now, so that their imports overlap
        # with the rest of the start (resources, this process's own imports), and wait for them at the end.
        environments.start()

        clients = aws.clients()
        aws.create_resources(tpl, clients)
        functions.load()
        _check_providers(providers)  # with the template's own layer on sys.path now, as the functions see it
        functions.cold_start()

        pool = WorkerPool(event_workers, stopping)
        pool.start()
        lambda_api = LambdaApi(functions, pool, port=int(os.environ.get("LAMBDA_PORT") or 0),
                               on_failure=eventbridge.destinations(tpl, clients))
        lambda_api.start()
        log.info("Lambda Invoke API on %s (AWS_ENDPOINT_URL_LAMBDA)", lambda_api.url)
        threads: list[threading.Thread] = []
        for source in (eventbridge.rule_sources(tpl, clients) + eventbridge.s3_sources(tpl, clients)
                       + eventbridge.sqs_sources(tpl, clients)):
            delivery = QueueDelivery(source, clients["sqs"], functions, pool, stopping)
            delivery.start()
            threads.append(delivery.thread)
        for sched in tpl.schedules:
            if not sched.enabled:
                continue
            interval = sweep_interval_s if sweep_interval_s else rate_seconds(sched.expression)
            rule_name = f"{STACK_NAME}-{sched.function}-{sched.event}"[:64]
            timer = Timer(sched, functions, rule_arn=aws.rule_arn(region, "default", rule_name), region=region,
                          interval_s=interval, stopping=stopping)
            timer.start()
            threads.append(timer.thread)
            log.info("schedule %s.%s (%s) every %g s", sched.function, sched.event, sched.expression, interval)

        waited = environments.wait_ready()
        log.info("%d API execution environments warm (waited %.2f s for them), up to %d on demand",
                 environments.size, waited, environments.max_size)
        api.start()
    except BaseException:
        stopping.set()
        if api is not None:
            api.server.server_close()
        if environments is not None:
            environments.stop()
        if moto is not None:
            try:
                moto.stop()
            except Exception:  # noqa: BLE001 - it may not have started
                pass
        _restore_env(saved)
        with _active_lock:
            _active = False
        raise
    assert api is not None and moto is not None and environments is not None
    stack = Stack(port=api.port, aws_port=moto.port, template=tpl, _moto=moto, _api=api, _stopping=stopping,
                  _pool=pool, _environments=environments, _threads=threads, _saved_env=saved,
                  _lambda_api=lambda_api)
    for route in tpl.api_routes:
        log.info("route %-6s %s -> %s", route.method, route.path, route.function)
    return stack


def _parameters_from_env() -> dict[str, str]:
    """The template parameters set through PARAMETER_ENV (e.g. API_TIMEOUT_MS=2000 for ApiTimeoutMillis)."""
    return {parameter: os.environ[name].strip() for name, parameter in PARAMETER_ENV.items()
            if os.environ.get(name, "").strip()}


def _concurrency_from_env() -> int:
    raw = os.environ.get("API_CONCURRENCY", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_CONCURRENCY
    except ValueError:
        raise ValueError(f"API_CONCURRENCY must be a whole number of execution environments, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"API_CONCURRENCY must be at least 1, not {value}")
    return value


def _max_concurrency_from_env(concurrency: int) -> int:
    raw = os.environ.get("API_MAX_CONCURRENCY", "").strip()
    if not raw:
        return default_max_concurrency(concurrency)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"API_MAX_CONCURRENCY must be a whole number of execution environments, not {raw!r}") from None


def _existing_file(path: str | os.PathLike[str]) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"PROVIDERS_FILE {path} does not exist")
    return str(Path(path).resolve())


def _check_providers(path: str) -> None:
    """The gateway's own checks of the provider configuration (a stack that started would answer every request
    503): ValueError listing every problem. Imported only once the functions put the template's layer on
    sys.path, so this process runs the layer the template names, not another copy."""
    from imagegw.provider_config import check_file

    found = check_file(path)
    if found:
        raise ValueError(f"PROVIDERS_FILE {path} is invalid ({len(found)} problem{'s' if len(found) > 1 else ''}):\n"
                         + "\n".join(f"  - {problem}" for problem in found))


def _base_env(*, endpoint: str, region: str, api_keys: str, providers_file: str) -> dict[str, str | None]:
    """What makes boto3 and Powertools work with no AWS account, and the gateway's local-only settings."""
    env: dict[str, str | None] = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ACCESS_KEY_ID": FAKE_CREDENTIAL,
        "AWS_SECRET_ACCESS_KEY": FAKE_CREDENTIAL,
        # Nothing from a real account may leak in: no session token, profile or shared config (whose
        # profiles could carry credentials or per-service endpoint_url settings).
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon locally
        "POWERTOOLS_METRICS_DISABLED": "true",  # no CloudWatch EMF consumer locally
        "ALLOW_LOOPBACK_FETCH": "1",  # local only: upstream simulators and webhook receivers on loopback
        "API_KEYS": api_keys,
        "PROVIDERS_FILE": providers_file,
        # Webhooks are signed with WEBHOOK_SECRET (whsec_...); without one, a fixed development secret that
        # `python -m local` prints, so a local receiver can verify what it gets.
        "WEBHOOK_SECRET": os.environ.get("WEBHOOK_SECRET") or DEV_WEBHOOK_SECRET,
    }
    for name in os.environ:
        if name.startswith("AWS_ENDPOINT_URL_"):
            env[name] = None  # a per-service endpoint would send that service somewhere other than moto
    return env


def _function_env(tpl: template.LocalTemplate) -> dict[str, str | None]:
    """The template's Globals/Function variables, local style.

    Variables naming a resource take the local physical names; other template values yield to one
    already set in the shell (e.g. `POWERTOOLS_LOG_LEVEL=DEBUG make run`). PROVIDERS_PARAM and KEYS_TABLE
    are dropped: locally the provider config is PROVIDERS_FILE and the keys are API_KEYS.
    """
    env: dict[str, str | None] = {}
    for name, value in tpl.environment.items():
        if name in tpl.resource_variables or name not in os.environ:
            env[name] = value
    env["PROVIDERS_PARAM"] = None
    env["KEYS_TABLE"] = None
    env["WEBHOOK_SECRET_ID"] = None  # locally the secret is WEBHOOK_SECRET
    return env


def _set_env(values: dict[str, str | None], saved: dict[str, str | None]) -> None:
    for name, value in values.items():
        saved.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
