"""Create an API key in a deployed stack: stored hashed in its keys table, printed here once."""

from __future__ import annotations

import argparse
import os

import boto3

from imagegw import keys


def stack_output(stack: str, key: str) -> str:
    outputs = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    for output in outputs:
        if output["OutputKey"] == key:
            return output["OutputValue"]
    raise SystemExit(f"stack {stack!r} has no output {key!r}: is it deployed?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", default="imagegw", help="CloudFormation stack name")
    parser.add_argument("--name", default="default", help="a label for the key (who or what uses it)")
    args = parser.parse_args()
    os.environ["KEYS_TABLE"] = stack_output(args.stack, "KeysTableName")
    key = keys.create_key(args.name)
    print(f"API key for {args.name!r} (shown once, store it now):\n{key}")


if __name__ == "__main__":
    main()
