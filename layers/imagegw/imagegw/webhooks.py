"""Webhooks: the task, on a terminal status, POSTed to the caller's URL and signed per Standard Webhooks.

Headers `webhook-id` (the same on every retry), `webhook-timestamp`, `webhook-signature: v1,<base64
HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the bytes of a `whsec_`-prefixed base64 secret
(`WEBHOOK_SECRET` locally, the Secrets Manager secret named by `WEBHOOK_SECRET_ID` when deployed: a whsec_
string, or the stack's generated `{"prefix": "whsec_", "secret": ...}`, see `signing_secret`). Body:
`{"type": "image.task.succeeded" | "image.task.failed", "timestamp", "data": <task>}`.

Delivery never sleeps in a Lambda. The first attempt and the first retry are "Webhook Due" events on the
bus (so the first retry comes within seconds); later retries wait in the task table's sweep index and the
schedule re-publishes them when due, with growing delays
(`WEBHOOK_RETRY_DELAYS_S`, over an hour in all). A 2xx
ends it; so does running out of delays (the task records why). URLs pass the SSRF guard twice: at submit
(`check_target`: a refusal is a 400 naming `webhook`, so nothing is accepted that would never be delivered)
and at every delivery (a name may resolve elsewhere by then: that refusal ends the delivery at once).

The task object shows where delivery stands (`views.webhook_state`): waiting (the task is not finished),
pending (due or retrying), delivered, failed (given up: `last_error` says why) or skipped (a cancelled task).

That delivery state lives on the task item (`webhook_status`, `webhook_attempts`, `webhook_lease`,
`webhook_error`) but is this module's alone: a terminal task whose webhook is due re-enters the sweep index
under its own partitions (`shards.WEBHOOK`), and only the functions below move it, each one conditional write
through `tasks.update`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import lru_cache
from urllib.parse import urlsplit

import requests
from aws_lambda_powertools import Logger

from . import bus, clock, safe_fetch, settings, shards, tasks, views
from .errors import BadRequest, GatewayError
from .tasks import Task

logger = Logger(child=True)

TIMEOUT_S = (5, 15)
REPUBLISH_AFTER_S = 60  # a due delivery the sweep re-published is not re-published again before this
EVENT_TYPES = {"succeeded": "image.task.succeeded", "failed": "image.task.failed"}


TARGET_CACHE_S = 60  # a batch of 10,000 lines with one webhook resolves its host once a minute, not per line
_checked_targets: dict[tuple[str, int], float] = {}


def forget_checked_targets() -> None:
    """Forget which webhook hosts resolved to public addresses, so the next check resolves afresh (tests)."""
    _checked_targets.clear()


def check_target(url: str) -> None:
    """Refuse, with a 400 naming `webhook`, a URL that delivery would refuse: another scheme, credentials,
    a literal non-public address, or a name that resolves to one (every address must be public)."""
    allow_loopback = safe_fetch.loopback_allowed()
    try:
        safe_fetch.check_url(url, allow_loopback=allow_loopback)
    except safe_fetch.UnsafeURL:
        raise BadRequest("Invalid 'webhook': it must be an http or https URL with a public host and no "
                         "credentials.", param="webhook", code="invalid_webhook_url") from None
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if _checked_targets.get((host, port), 0) > time.monotonic():
        return
    try:
        safe_fetch.resolve_checked(host, port, safe_fetch.default_resolver, allow_loopback)
    except safe_fetch.UnsafeURL:
        raise BadRequest(f"Invalid 'webhook': the host {host!r} resolves to a private, loopback or link-local "
                         f"address; webhooks go to public addresses only.", param="webhook",
                         code="invalid_webhook_url") from None
    except OSError:
        raise BadRequest(f"Invalid 'webhook': the host {host!r} does not resolve.", param="webhook",
                         code="invalid_webhook_url") from None
    _checked_targets[(host, port)] = time.monotonic() + TARGET_CACHE_S


def secret_bytes() -> bytes:
    raw = settings.current().webhook_secret or _secret_from_manager()
    if not raw:
        raise GatewayError("No webhook secret: set WEBHOOK_SECRET or WEBHOOK_SECRET_ID.")
    return base64.b64decode(signing_secret(raw).removeprefix("whsec_"))


def signing_secret(raw: str) -> str:
    """The `whsec_<base64>` signing secret in a secret's text: the text itself, or, in the JSON the stack
    generates (template.yaml's WebhookSecret: Secrets Manager cannot prefix a generated string),
    `{"prefix": "whsec_", "secret": <letters and digits>}`: prefix + secret."""
    text = raw.strip()
    if not text.startswith("{"):
        return text
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("secret"), str) \
            or not isinstance(document.get("prefix", "whsec_"), str):
        raise GatewayError('The webhook secret is JSON but not {"prefix": "whsec_", "secret": "<base64>"}.')
    return document.get("prefix", "whsec_") + document["secret"]


@lru_cache(maxsize=1)
def _secret_from_manager() -> str | None:
    secret_id = settings.current().webhook_secret_id
    if not secret_id:
        return None
    from aws_lambda_powertools.utilities import parameters

    return parameters.get_secret(secret_id, max_age=300)


def sign(secret: bytes, msg_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(task: Task) -> str:
    return json.dumps({"type": EVENT_TYPES.get(task.status, f"image.task.{task.status}"),
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "data": views.event_task(task)}, ensure_ascii=False, separators=(",", ":"))


def wants_delivery(task: Task) -> bool:
    return bool(task.webhook) and task.status in EVENT_TYPES


def schedule(task: Task) -> bool:
    """A task ended: queue the first delivery of its webhook, if it wants one, and ask for it on the bus at once
    (the sweep index holds it should that event be lost). False when there is nothing to deliver, or it was
    queued already."""
    if not wants_delivery(task) or queue_first(task) is None:
        return False
    bus.publish(bus.WEBHOOK_DUE, task.id)
    return True


def republish(task_id: str) -> bool:
    """Re-publish "Webhook Due" for one delivery the sweep found due (unless another sweep just did)."""
    if touch(task_id, next_at=clock.now_ms() + REPUBLISH_AFTER_S * 1000):
        bus.publish(bus.WEBHOOK_DUE, task_id)
        return True
    return False


def deliver_due(task_id: str) -> str | None:
    """One delivery attempt of a task's webhook, if one is due and nobody else is making it.

    Returns "delivered", "retry" or "gave_up" (None when there was nothing to do)."""
    task = claim(task_id)
    if task is None or not wants_delivery(task) or not task.webhook:
        return None
    url = task.webhook
    attempt = int(task.webhook_attempts or 0) + 1
    try:
        secret = secret_bytes()
    except Exception as exc:  # noqa: BLE001 - a deployment without its secret: say so once, do not loop
        close(task, attempts=attempt - 1, status="failed", last_error=f"not sent: {exc}")
        logger.error("webhook not sent: no usable secret", extra={"task_id": task.id})
        return "gave_up"
    msg_id = f"msg_{task.id}"
    body = payload(task)
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, msg_id, timestamp, body),
               "User-Agent": "imagegw-webhooks"}
    outcome, final = _post(url, body, headers)
    if outcome is None:
        close(task, attempts=attempt, status="delivered")
        logger.info("webhook delivered", extra={"task_id": task.id, "attempt": attempt})
        return "delivered"
    delays = settings.current().webhook_retry_delays_s
    if final or attempt > len(delays):
        reason = outcome if final else f"gave up after {attempt} attempts: {outcome}"
        close(task, attempts=attempt, status="failed", last_error=reason)
        logger.warning("webhook given up", extra={"task_id": task.id, "attempt": attempt, "reason": outcome})
        return "gave_up"
    delay_s = delays[attempt - 1]
    retry_later(task, attempts=attempt, next_at=clock.now_ms() + delay_s * 1000, last_error=outcome)
    logger.info("webhook failed, will retry", extra={"task_id": task.id, "attempt": attempt, "reason": outcome,
                                                      "retry_in_s": delay_s})
    if delay_s == 0:  # the first retry goes straight back on the bus
        bus.publish(bus.WEBHOOK_DUE, task.id)
    return "retry"


def _post(url: str, body: str, headers: dict[str, str]) -> tuple[str | None, bool]:
    """(None, _) on a 2xx answer, else (why it failed, whether that is final). Never the body: it may hold
    anything. A URL the guard refuses is final: retrying would only be refused again."""
    allow_loopback = safe_fetch.loopback_allowed()
    try:
        safe_fetch.check_url(url, allow_loopback=allow_loopback)
        resp = safe_fetch.guarded_session(allow_loopback=allow_loopback).post(
            url, data=body.encode(), headers=headers, timeout=TIMEOUT_S, allow_redirects=False)
    except safe_fetch.UnsafeURL as exc:
        return f"refused: {exc.message}", True
    except GatewayError as exc:
        return exc.message, False
    except requests.RequestException as exc:
        return f"no answer ({type(exc).__name__})", False
    return (None, False) if 200 <= resp.status_code < 300 else (f"HTTP {resp.status_code}", False)


# -- the delivery state on the task item ---------------------------------------------------------------------

_FREE = "(attribute_not_exists(webhook_lease) OR webhook_lease < :now)"


def queue_first(task: Task, *, check_after_s: int = 60) -> Task | None:
    """Queue the first delivery of a terminal task's webhook (once: a second call finds it queued)."""
    now = clock.now_ms()
    return tasks.update(task.id, {"webhook_status": "pending", "sweep": shards.partition(shards.WEBHOOK, task.id),
                                  "next_check_at": now + check_after_s * 1000, "webhook_attempts": 0},
                        condition=f"NOT {tasks.LIVE} AND attribute_not_exists(webhook_status)",
                        values=tasks.LIVE_VALUES)


def claim(task_id: str, *, lease_s: int = 60) -> Task | None:
    """Take the next delivery attempt; None if it is not pending or another worker is making it."""
    now = clock.now_ms()
    return tasks.update(task_id, {"webhook_lease": now + lease_s * 1000},
                        condition=f"webhook_status = :pending AND {_FREE}", values={":pending": "pending", ":now": now})


def retry_later(task: Task, *, attempts: int, next_at: int, last_error: str) -> Task | None:
    """The attempt failed: try again at `next_at`. A retry due at once also travels on the bus; the index
    entry (a minute on) is its safety net should that event be lost."""
    now = clock.now_ms()
    return tasks.update(task.id, {"webhook_attempts": attempts, "webhook_error": last_error,
                                  "next_check_at": next_at if next_at > now else now + 60_000},
                        condition="webhook_lease = :lease", values={":lease": task.webhook_lease},
                        removes=("webhook_lease",))


def close(task: Task, *, attempts: int, status: str, last_error: str | None = None) -> Task | None:
    """The delivery ended: `delivered`, or `failed` with why in `webhook_error`; it leaves the sweep index."""
    sets: dict[str, object] = {"webhook_attempts": attempts, "webhook_status": status}
    if last_error:
        sets["webhook_error"] = last_error
    return tasks.update(task.id, sets, condition="webhook_lease = :lease", values={":lease": task.webhook_lease},
                        removes=("webhook_lease", "sweep", "next_check_at"))


def touch(task_id: str, *, next_at: int) -> Task | None:
    """The sweep re-published a due delivery: not again until `next_at` unless it fails meanwhile."""
    now = clock.now_ms()
    return tasks.update(task_id, {"next_check_at": next_at}, condition=f"webhook_status = :pending AND {_FREE}",
                        values={":pending": "pending", ":now": now})
