"""Give every task of a deployed stack its `owner_key` (the owner-key-index key), for a stack created before it.

Part of the upgrade in README ("Capacity model", migration): deploy with KeepOwnerIndex=true, run this, then
deploy with KeepOwnerIndex=false. Items that already have an owner_key are left alone (safe to run again).
Pass the stack's EventTenant if it is not the default `events`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import boto3

from imagegw import shards
from scripts.make_key import stack_output


def backfill(table: Any) -> int:
    """Set owner_key on the tasks that lack one; how many were set."""
    set_count = 0
    kwargs: dict[str, Any] = {"ProjectionExpression": "id, #o, owner_key", "ExpressionAttributeNames": {"#o": "owner"}}
    while True:
        page = table.scan(**kwargs)
        for item in page["Items"]:
            if "owner" in item and "owner_key" not in item:
                table.update_item(Key={"id": item["id"]}, UpdateExpression="SET owner_key = :k",
                                  ConditionExpression="attribute_exists(id) AND attribute_not_exists(owner_key)",
                                  ExpressionAttributeValues={":k": shards.owner_key(str(item["owner"]), item["id"])})
                set_count += 1
        if "LastEvaluatedKey" not in page:
            return set_count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", default="imagegw", help="CloudFormation stack name")
    parser.add_argument("--event-tenant", default="events", help="the stack's EventTenant parameter")
    args = parser.parse_args()
    os.environ["EVENT_TENANT"] = args.event_tenant
    table = boto3.resource("dynamodb").Table(stack_output(args.stack, "TaskTableName"))
    print(f"owner_key set on {backfill(table)} tasks")


if __name__ == "__main__":
    main()
