"""Upload a provider configuration file (JSON or YAML) to the SSM parameter a deployed stack reads.

It is checked first with the gateway's own checks (scripts/check_providers.py), so a typo fails here, with
every problem listed, rather than in production; nothing is uploaded then.

SSM's Standard tier holds 4 KB (counted here in UTF-8 bytes); a longer config is uploaded all the same, on
the Advanced tier (8 KB; charged per parameter and month): the parameter is put with
`Tier="Intelligent-Tiering"`, which SSM makes Standard when the value fits and Advanced when it does not, and
which never fails on a parameter that is already Advanced (an explicit Standard would). Over 8 KB nothing is
uploaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import boto3

from imagegw.provider_config import load_config_text
from scripts.check_providers import report


STANDARD_TIER_MAX = 4096  # bytes of a Standard-tier parameter value
ADVANCED_TIER_MAX = 8192  # bytes of an Advanced-tier one: SSM's largest
TIER = "Intelligent-Tiering"  # Standard while it fits, Advanced when it does not


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
    size = len(content.encode("utf-8"))
    if size > ADVANCED_TIER_MAX:
        print(f"{path}: {size} bytes, over the {ADVANCED_TIER_MAX} an SSM parameter holds (Advanced "
              f"tier): shorten it (e.g. drop comments and indentation). Nothing was uploaded.", file=sys.stderr)
        return 1
    tier = boto3.client("ssm").put_parameter(Name=name, Value=content, Type="String", Overwrite=True,
                                             Tier=TIER).get("Tier", TIER)
    note = f", {size} bytes: Advanced tier" if size > STANDARD_TIER_MAX else ""
    print(f"{path} -> SSM {name} ({tier}{note}): {len(config.providers)} providers, {len(config.models)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
