"""Check a provider configuration file (JSON or YAML) on its own: `make check-providers PROVIDERS=file`.

Prints every problem, each with its JSON path, and exits 1; or a one-line summary and exits 0. It runs the
gateway's own checks (imagegw.provider_config), so an operator's CI can refuse a change before it is uploaded.
"""

from __future__ import annotations

import sys

from imagegw.provider_config import check_file, load_config_text


def report(path: str) -> tuple[bool, str]:
    """(valid, what to print) for the file at `path`."""
    found = check_file(path)
    if found:
        lines = [f"{path}: {len(found)} problem{'s' if len(found) > 1 else ''}"] + [f"  - {p}" for p in found]
        return False, "\n".join(lines)
    with open(path, encoding="utf-8") as handle:
        config = load_config_text(handle.read())
    return True, f"{path}: valid ({len(config.providers)} providers, {len(config.models)} models)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m scripts.check_providers FILE", file=sys.stderr)
        return 2
    valid, text = report(args[0])
    print(text, file=sys.stdout if valid else sys.stderr)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
