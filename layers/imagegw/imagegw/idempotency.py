"""`Idempotency-Key` on task creation: Powertools idempotency over the idempotency table.

A POST carrying `Idempotency-Key` creates (and queues) its task once per API key and header value for
24 hours; a repeat answers with that same task. The record's key is a hash of (owner, header value), so
two API keys never share a record; the hash of the validated request body is stored beside it, so the
same key with a different body is refused (422 `idempotency_key_reused`) and a repeat arriving while the
first is still creating the task is refused too (409 `idempotency_in_progress`; retry it).

The Powertools objects are built on first use, from `IDEMPOTENCY_TABLE` as it is then (not at import).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)

from . import settings
from .errors import BadRequest, Conflict, GatewayError, ServerError

HEADER = "Idempotency-Key"
EXPIRES_AFTER_S = 24 * 60 * 60
KEY_PREFIX = "imagegw.create_images"  # stable whatever the function is named
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, as HTTP header values are
_build_lock = threading.Lock()


class KeyReused(GatewayError):
    status = 422
    type = "invalid_request_error"
    default_code = "idempotency_key_reused"


def validate_key(value: str | None) -> str | None:
    """The header's value, None when absent; a 400 naming the header when it is not 1-255 printable chars."""
    if value is None:
        return None
    if not _VALID_KEY.fullmatch(value):
        raise BadRequest(f"Invalid '{HEADER}' header: send 1 to 255 printable ASCII characters.", param=HEADER,
                         code="invalid_value")
    return value


def _run(create: Callable[[], str], *, payload: dict[str, Any]) -> dict[str, Any]:
    """The protected step: `create` makes the task and returns its id (payload only keys the record)."""
    return {"task_id": create()}


def _mark_replayed(response: Any, idempotent_data: Any) -> Any:
    return {**response, "replayed": True}


@lru_cache(maxsize=4)
def _guarded(table_name: str) -> tuple[Callable[..., dict[str, Any]], IdempotencyConfig]:
    config = IdempotencyConfig(
        event_key_jmespath="[owner, key]",  # scoped per API key
        payload_validation_jmespath="body",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=EXPIRES_AFTER_S,
        hash_function="sha256",
        response_hook=_mark_replayed,
    )
    with _build_lock:  # boto3's default session is not safe to use from threads the first time
        client = boto3.client("dynamodb")
    store = DynamoDBPersistenceLayer(table_name=table_name, boto3_client=client)  # key `id`, TTL `expiration`
    guarded = idempotent_function(_run, data_keyword_argument="payload", persistence_store=store, config=config,
                                  key_prefix=KEY_PREFIX)
    return guarded, config


def reset() -> None:
    """Forget the Powertools objects (tests: a new moto account, a new client)."""
    _guarded.cache_clear()


def once(owner: str, key: str, body: dict[str, Any], create: Callable[[], str],
         context: Any = None) -> tuple[str, bool]:
    """Run `create` at most once per (owner, key) for 24 h: (task id, whether it is a replay).

    `body` is the validated request: a repeat whose body differs is a 422. `context` is the Lambda context:
    a record left in progress by an invocation that died frees itself when that invocation's time is up."""
    table_name = settings.current().idempotency_table
    if not table_name:
        raise ServerError(f"This deployment cannot honour '{HEADER}': IDEMPOTENCY_TABLE is not set.",
                          code="idempotency_unavailable")
    guarded, config = _guarded(table_name)
    if context is not None and callable(getattr(context, "get_remaining_time_in_millis", None)):
        config.register_lambda_context(context)
    try:
        result = guarded(create, payload={"owner": owner, "key": key, "body": body})
    except IdempotencyValidationError:
        raise KeyReused(f"This '{HEADER}' was already used with a different request body: send a new key for "
                        "a new request.") from None
    except IdempotencyAlreadyInProgressError:
        raise Conflict(f"A request with this '{HEADER}' is still being processed: retry shortly.",
                       code="idempotency_in_progress") from None
    return str(result["task_id"]), bool(result.get("replayed"))
