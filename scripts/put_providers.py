"""Upload a provider configuration file (JSON or YAML) to the SSM parameter a deployed stack reads.

It is checked first with the gateway's own checks (scripts/check_providers.py), so a typo fails here, with
every problem listed, rather than in production; nothing is uploaded then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import boto3

from imagegw.provider_config import load_config_text
from scripts.check_providers import report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m scripts.put_providers FILE /ssm/parameter/name", file=sys.stderr)
        return 2
    path, name = args
    valid, text = report(path)
    if not valid:
        print(text + "\nNothing was uploaded.", file=sys.stderr)
        return 1
    content = Path(path).read_text(encoding="utf-8")
    config = load_config_text(content)
    literal = [name_ for name_, provider in config.providers.items() if provider.api_key]
    if literal:
        print(f"{path}: {', '.join(literal)} carr{'ies' if len(literal) == 1 else 'y'} a literal api_key: use "
              f"api_key_secret when deployed. Nothing was uploaded.", file=sys.stderr)
        return 1
    boto3.client("ssm").put_parameter(Name=name, Value=content, Type="String", Overwrite=True)
    print(f"{path} -> SSM {name}: {len(config.providers)} providers, {len(config.models)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
