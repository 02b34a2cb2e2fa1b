"""API keys: hashed in the keys table when deployed, API_KEYS locally; the owner never reveals the key."""

import os

import boto3
import pytest

from imagegw import keys
from imagegw.errors import AuthenticationFailed


def test_created_keys_are_stored_hashed_and_authenticate(aws, monkeypatch):
    monkeypatch.delenv("API_KEYS")
    monkeypatch.setenv("KEYS_TABLE", os.environ["KEYS_TABLE_NAME"])
    key = keys.create_key("team-a")
    assert key.startswith("sk-imagegw-")
    items = boto3.resource("dynamodb").Table(os.environ["KEYS_TABLE"]).scan()["Items"]
    assert len(items) == 1 and key not in str(items) and items[0]["key_hash"] == keys.key_hash(key)
    owner = keys.authenticate(f"Bearer {key}")
    assert owner == items[0]["owner"] and key not in owner
    with pytest.raises(AuthenticationFailed):
        keys.authenticate("Bearer sk-imagegw-guess")


def test_local_keys_and_malformed_headers(aws):
    assert keys.authenticate("Bearer sk-test") != keys.authenticate("bearer sk-other")
    for header in (None, "", "Basic abc", "Bearer ", "sk-test"):
        with pytest.raises(AuthenticationFailed):
            keys.authenticate(header)
