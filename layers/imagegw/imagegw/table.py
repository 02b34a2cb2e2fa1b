"""The task table's mechanics, shared by tasks, webhook deliveries and batch records (one DynamoDB table).

What every writer of the table needs, written once: numbers back as ints and floats instead of Decimal,
the conditional write that answers None (or False) when its condition does not hold instead of raising,
the retention expiry (DynamoDB TTL) each item carries, and the sparse sweep index by `next_check_at` that
the schedule reads. What the items mean is for `tasks`, `webhooks` and `batches.record`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeVar

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from . import clock, settings

SWEEP_INDEX = "sweep-index"

T = TypeVar("T")


@lru_cache(maxsize=1)
def task_table() -> Any:
    """The task table (created on first use; `task_table.cache_clear()` resets it, e.g. in tests)."""
    return boto3.resource("dynamodb").Table(settings.current().task_table)


def plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal: give callers ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def retention_expiry() -> int:
    """When an item written now expires (epoch seconds, TASK_RETENTION_DAYS from now)."""
    return clock.now_ms() // 1000 + settings.current().task_retention_days * 86400


def _unless_condition_fails(write: Callable[[], T]) -> T | None:
    """Run a conditional write; None when its condition does not hold (someone else got there first)."""
    try:
        return write()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return None
        raise


def put_if_absent(item: dict[str, Any]) -> bool:
    """Put `item` unless an item with its id exists; False when one does (a repeated create is a no-op)."""
    put = _unless_condition_fails(
        lambda: task_table().put_item(Item=item, ConditionExpression="attribute_not_exists(id)"))
    return put is not None


def update_if(key: str, **kwargs: Any) -> dict[str, Any] | None:
    """One conditional UpdateItem on the item `key`: its attributes as they are after the update (those
    ReturnValues asks for, plain numbers), or None when the condition does not hold."""
    resp = _unless_condition_fails(lambda: task_table().update_item(Key={"id": key}, **kwargs))
    return None if resp is None else plain(resp.get("Attributes") or {})


def update(key: str, **kwargs: Any) -> dict[str, Any]:
    """One UpdateItem without a condition: the attributes ReturnValues asks for, plain numbers."""
    return plain(task_table().update_item(Key={"id": key}, **kwargs).get("Attributes") or {})


def delete(key: str) -> None:
    """Delete the item `key` (nothing happens when there is none)."""
    task_table().delete_item(Key={"id": key})


def delete_if_exists(key: str) -> bool:
    """Delete the item `key`; False when there was none (another worker deleted it first)."""
    deleted = _unless_condition_fails(
        lambda: task_table().delete_item(Key={"id": key}, ConditionExpression="attribute_exists(id)"))
    return deleted is not None


def get(key: str) -> dict[str, Any] | None:
    """The item, read consistently, with plain numbers; None when there is none."""
    item = task_table().get_item(Key={"id": key}, ConsistentRead=True).get("Item")
    return plain(item) if item else None


def get_many(keys: list[str], *, attributes: list[str]) -> dict[str, dict[str, Any]]:
    """The items of `keys` that exist (only `attributes`, id included), read consistently, by id."""
    client, name = task_table().meta.client, task_table().name
    wanted = ["id", *(a for a in attributes if a != "id")]
    request = {name: {"Keys": [{"id": k} for k in keys], "ConsistentRead": True,
                      "ProjectionExpression": ", ".join(f"#a{i}" for i in range(len(wanted))),
                      "ExpressionAttributeNames": {f"#a{i}": a for i, a in enumerate(wanted)}}}
    out: dict[str, dict[str, Any]] = {}
    while request:
        resp = client.batch_get_item(RequestItems=request)
        for raw in resp["Responses"].get(name, []):
            item = plain(raw)  # the resource's client hands back plain values
            out[item["id"]] = item
        request = resp.get("UnprocessedKeys") or {}
    return out


def due_pages(partition: str, *, now: int | None = None) -> Iterator[list[str]]:
    """Ids of the items in the sweep index under `partition` whose `next_check_at` has passed, a page (up to
    1 MB of index entries) at a time, oldest check first: the query is paginated to its end, never capped."""
    now = now if now is not None else clock.now_ms()
    kwargs: dict[str, Any] = {"IndexName": SWEEP_INDEX, "ProjectionExpression": "id",
                              "KeyConditionExpression": Key("sweep").eq(partition) & Key("next_check_at").lte(now)}
    while True:
        resp = task_table().query(**kwargs)
        yield [item["id"] for item in resp["Items"]]
        if "LastEvaluatedKey" not in resp:
            return
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def due(partition: str, *, now: int | None = None, limit: int | None = None) -> list[str]:
    """Ids of the items in the sweep index under `partition` whose `next_check_at` has passed (all of them,
    or the first `limit`)."""
    ids: list[str] = []
    for page in due_pages(partition, now=now):
        ids += page
        if limit is not None and len(ids) >= limit:
            return ids[:limit]
    return ids


def has_due(partition: str, *, now: int | None = None) -> bool:
    """Whether anything under `partition` is due (one query reading at most one index entry)."""
    now = now if now is not None else clock.now_ms()
    resp = task_table().query(IndexName=SWEEP_INDEX, Limit=1, ProjectionExpression="id",
                              KeyConditionExpression=Key("sweep").eq(partition) & Key("next_check_at").lte(now))
    return bool(resp["Items"])


def holds_any(partition: str) -> bool:
    """Whether anything sits in the sweep index under `partition`, due or not (one query, one entry)."""
    resp = task_table().query(IndexName=SWEEP_INDEX, Limit=1, ProjectionExpression="id",
                              KeyConditionExpression=Key("sweep").eq(partition))
    return bool(resp["Items"])


def oldest_in_index(partition: str, *, limit: int) -> list[str]:
    """Ids of the first `limit` items in the sweep index under `partition`, lowest `next_check_at` first (one
    query, however many items the partition holds)."""
    resp = task_table().query(IndexName=SWEEP_INDEX, Limit=limit, ProjectionExpression="id",
                              KeyConditionExpression=Key("sweep").eq(partition))
    return [item["id"] for item in resp["Items"]]


def count_in_index(partition: str, *, before: int, limit: int) -> int:
    """How many items in the sweep index under `partition` have a `next_check_at` below `before`, counted up to
    `limit` (one query page)."""
    resp = task_table().query(IndexName=SWEEP_INDEX, Limit=limit, Select="COUNT",
                              KeyConditionExpression=Key("sweep").eq(partition) & Key("next_check_at").lt(before))
    return int(resp["Count"])
