"""The gateway's settings: every environment variable the layer reads, typed, with its default, in one place.

template.yaml sets these on the functions; the local stack and the tests set them too. `current()` parses the
environment once and parses it again only when one of these variables changes: a Lambda environment never
changes, while tests and the local stack switch values between invocations. No other module reads os.environ
(a test checks), except Powertools, which reads its own POWERTOOLS_* variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any


def _env(name: str, doc: str) -> dict[str, str]:
    return {"env": name, "doc": doc}


@dataclass(frozen=True)
class Settings:
    # Resources the template creates.
    task_table: str | None = field(default=None, metadata=_env("TASK_TABLE", "the DynamoDB table of tasks"))
    keys_table: str | None = field(default=None, metadata=_env("KEYS_TABLE", "the DynamoDB table of API keys"))
    idempotency_table: str | None = field(
        default=None, metadata=_env("IDEMPOTENCY_TABLE", "the table behind the Idempotency-Key header"))
    image_bucket: str | None = field(default=None, metadata=_env("IMAGE_BUCKET", "the private S3 bucket"))
    event_bus: str | None = field(default=None, metadata=_env("EVENT_BUS", "the EventBridge bus of the gateway"))
    check_queue: str | None = field(default=None, metadata=_env(
        "CHECK_QUEUE", "the SQS queue (URL or name) of async checks scheduled per task; unset: the sweep alone"))
    metrics_namespace: str = field(
        default="ImageGateway", metadata=_env("POWERTOOLS_METRICS_NAMESPACE", "the CloudWatch metrics namespace"))

    # Who may call, and with which providers.
    api_keys: str | None = field(default=None, metadata=_env(
        "API_KEYS", "comma-separated keys accepted instead of the keys table (local stack); set but empty: none"))
    providers_file: str | None = field(default=None, metadata=_env(
        "PROVIDERS_FILE", "a provider configuration file (JSON or YAML), read again when it changes"))
    providers_param: str | None = field(default=None, metadata=_env(
        "PROVIDERS_PARAM", "the SSM parameter holding the provider configuration (when no file is set)"))
    api_docs: bool = field(default=True, metadata=_env("API_DOCS", "serve /openapi.json and /docs"))
    event_tenant: str = field(default="events", metadata=_env(
        "EVENT_TENANT", "the owner of tasks that arrive over the bus or as batch files"))

    # Tasks.
    worker_lease_s: int = field(default=900, metadata=_env(
        "WORKER_LEASE_S", "how long a worker holds a task; at least the function timeout"))
    task_deadline_s: int = field(default=3600, metadata=_env(
        "TASK_DEADLINE_S", "a task not finished this long after creation fails upstream_timeout"))
    task_retention_days: int = field(default=30, metadata=_env(
        "TASK_RETENTION_DAYS", "tasks and batch records expire (DynamoDB TTL) after this many days"))
    sync_wait_s: float = field(default=25.0, metadata=_env(
        "SYNC_WAIT_S", "how long a sync request waits on a task it does not run itself"))

    # The schedule's sweep (see `shards` and `sweeper`).
    sweep_shards: int = field(default=1, metadata=_env(
        "SWEEP_SHARDS", "sweep-index partitions live tasks and webhooks are spread over (1 to 64; 1: unsharded)"))
    sweep_parallelism: int = field(default=8, metadata=_env(
        "SWEEP_PARALLELISM", "due tasks one sweep invocation advances at the same time (threads)"))
    sweep_budget_s: float = field(default=50.0, metadata=_env(
        "SWEEP_BUDGET_S", "a sweep invocation starts no task after this long (keep it under the schedule's rate)"))

    # Upstream calls and downloads.
    upstream_retries: int = field(default=2, metadata=_env(
        "UPSTREAM_RETRIES", "retries of a 429/5xx upstream answer, within the call's timeout"))
    upstream_backoff_s: float = field(default=0.5, metadata=_env(
        "UPSTREAM_BACKOFF_S", "urllib3 backoff factor between those retries"))
    allow_loopback_fetch: bool = field(default=False, metadata=_env(
        "ALLOW_LOOPBACK_FETCH", "let the SSRF guard fetch from loopback (local stack and tests only)"))
    max_image_bytes: int = field(default=50 * 1024 * 1024, metadata=_env(
        "MAX_IMAGE_BYTES", "largest image the gateway downloads or accepts"))
    max_image_pixels: int = field(default=8192 * 8192, metadata=_env(
        "MAX_IMAGE_PIXELS", "largest width x height (x frames) an image may declare in its header"))
    max_download_s: float = field(default=120.0, metadata=_env(
        "MAX_DOWNLOAD_S", "total time for one image download, redirects and body included"))
    presign_expires_s: int = field(default=3600, metadata=_env(
        "PRESIGN_EXPIRES_S", "lifetime of the presigned image URLs the API hands out"))

    # Pacing: providers' limits (provider configuration: max_concurrency, requests_per_minute).
    pacing_max_wait_s: float = field(default=30.0, metadata=_env(
        "PACING_MAX_WAIT_S", "longest backoff before a task answered 429 (or over a provider's requests_per_minute) is "
        "tried again; a task woken without a slot is sent again after this long should its event be lost"))
    pacing_line_check_s: float = field(default=300.0, metadata=_env(
        "PACING_LINE_CHECK_S", "how often the sweep looks at each task waiting in a provider's line for a slot (lost "
        "hand-overs are found sooner, by every scheduled run's check of the lines)"))
    pacing_line_max: int = field(default=2000, metadata=_env(
        "PACING_LINE_MAX", "most waiting tasks counted ahead of a task for its queue_position (one query)"))

    # Batches.
    batch_lines_per_run: int = field(default=2000, metadata=_env(
        "BATCH_LINES_PER_RUN", "lines of a batch file one invocation turns into tasks before handing over"))
    batch_check_s: int = field(default=300, metadata=_env(
        "BATCH_CHECK_S", "how long an unfinished batch waits before the sweep looks at it"))

    # Webhooks.
    webhook_secret: str | None = field(default=None, metadata=_env(
        "WEBHOOK_SECRET", "the signing secret (whsec_<base64>); else WEBHOOK_SECRET_ID"))
    webhook_secret_id: str | None = field(default=None, metadata=_env(
        "WEBHOOK_SECRET_ID", "the Secrets Manager secret holding the signing secret (whsec_<base64>, or the "
        "stack's generated JSON {prefix, secret})"))
    # After attempt k fails, wait delays[k - 1] (the first: at once, via the bus); 96 min in all.
    webhook_retry_delays_s: tuple[int, ...] = field(default=(0, 60, 120, 300, 600, 900, 1800, 1800), metadata=_env(
        "WEBHOOK_RETRY_DELAYS_S", "comma-separated delays between webhook deliveries"))

    # boto3 reads these itself; the gateway only asks whether S3 is a local endpoint (path-style URLs then).
    aws_endpoint_url: str | None = field(default=None, metadata=_env("AWS_ENDPOINT_URL", "a local AWS endpoint"))
    aws_endpoint_url_s3: str | None = field(default=None, metadata=_env(
        "AWS_ENDPOINT_URL_S3", "a local S3 endpoint"))

    # Lambda sets this; the handlers import every code path at init when no request waits on it (see `entry`).
    lambda_initialization_type: str | None = field(default=None, metadata=_env(
        "AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand, provisioned-concurrency or snap-start"))

    @property
    def s3_is_local(self) -> bool:
        return bool(self.aws_endpoint_url_s3 or self.aws_endpoint_url)

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str]) -> Settings:
        """Parse the variables of `environ`; an empty value counts as unset (except API_KEYS, where empty
        means "no key"). A value of the wrong type is a ValueError that names the variable."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None or (raw.strip() == "" and name != "API_KEYS"):
                continue
            try:
                values[f.name] = _parse(raw.strip() if name != "API_KEYS" else raw, f.type)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {f.type}: {f.metadata['doc']}.") from None
        return cls(**values)


def _parse(raw: str, kind: Any) -> Any:
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("tuple[int"):
        return tuple(int(part) for part in raw.split(","))
    return raw


ENV_NAMES = tuple(f.metadata["env"] for f in fields(Settings))
_cached: tuple[tuple[str | None, ...], Settings] | None = None


def current() -> Settings:
    """The settings of this environment (parsed again only when one of its variables changed)."""
    global _cached
    snapshot = tuple(os.environ.get(name) for name in ENV_NAMES)
    if _cached is None or _cached[0] != snapshot:
        _cached = (snapshot, Settings.from_env(os.environ))
    return _cached[1]


def named_secret(variable: str) -> str | None:
    """A provider's API key kept in an environment variable that the provider configuration names."""
    return os.environ.get(variable) or None
