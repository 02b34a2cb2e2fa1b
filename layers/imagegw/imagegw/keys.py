"""API keys: who is calling, and so which tasks are theirs.

Deployed, keys live hashed (SHA-256) in the keys table (`KEYS_TABLE`); `make key` creates one and prints
it once. Locally and in tests, `API_KEYS` (comma-separated) lists the accepted keys instead. Either way
the caller's identity is an opaque `owner` derived from the hash, never the key itself.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from functools import lru_cache

import boto3

from . import settings
from .errors import AuthenticationFailed

KEY_PREFIX = "sk-imagegw-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of_hash(digest: str) -> str:
    return f"key_{digest[:24]}"


@lru_cache(maxsize=1)
def keys_table():
    return boto3.resource("dynamodb").Table(settings.current().keys_table)


def authenticate(authorization: str | None) -> str:
    """The owner behind an `Authorization: Bearer <key>` header, or 401."""
    if not authorization:
        raise AuthenticationFailed("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                                   code="missing_api_key")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed("Send the API key as `Authorization: Bearer <key>`.")
    digest = key_hash(key)
    local_keys = settings.current().api_keys
    if local_keys is not None:
        if any(secrets.compare_digest(digest, key_hash(k.strip())) for k in local_keys.split(",") if k.strip()):
            return owner_of_hash(digest)
    elif settings.current().keys_table:
        item = keys_table().get_item(Key={"key_hash": digest}).get("Item")
        if item and not item.get("disabled"):
            return str(item.get("owner") or owner_of_hash(digest))
    raise AuthenticationFailed("Incorrect API key provided.")


def create_key(name: str) -> str:
    """Create and store a new key (hashed); the plaintext is returned once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = key_hash(key)
    keys_table().put_item(
        Item={"key_hash": digest, "owner": owner_of_hash(digest), "name": name, "created_at": int(time.time())},
        ConditionExpression="attribute_not_exists(key_hash)",
    )
    return key
