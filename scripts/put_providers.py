"""Upload a provider configuration file (JSON or YAML) to the SSM parameter a deployed stack reads.

It is validated first with the gateway's own loader, so a typo fails here rather than in production.
"""

from __future__ import annotations

import sys
from pathlib import Path

import boto3

from imagegw.routing import load_config_text


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m scripts.put_providers FILE /ssm/parameter/name")
    path, name = sys.argv[1], sys.argv[2]
    text = Path(path).read_text(encoding="utf-8")
    config = load_config_text(text)
    for provider_name, provider in config.providers.items():
        if provider.api_key:
            raise SystemExit(f"provider {provider_name!r} has a literal api_key: use api_key_secret when deployed")
    boto3.client("ssm").put_parameter(Name=name, Value=text, Type="String", Overwrite=True)
    print(f"{path} -> SSM {name}: {len(config.providers)} providers, {len(config.models)} models")


if __name__ == "__main__":
    main()
