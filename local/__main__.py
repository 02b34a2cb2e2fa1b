"""`python -m local`: run the local stack until Ctrl-C or SIGTERM.

Settings come from the environment: PORT (3000), AWS_PORT (4566), API_KEYS (sk-local), PROVIDERS_FILE
(config/providers.local.json), SWEEP_INTERVAL_S (2; "template" for the template's own rate),
AWS_DEFAULT_REGION (us-east-1), IMAGE_BUCKET (imagegw-local-images), LOCAL_LOG_LEVEL (INFO), API_CONCURRENCY
(min(4, cores): the API's warm execution environments, worker processes that each serve one request at a
time), API_MAX_CONCURRENCY (16, fewer if memory is short: more are started on demand up to this many, then
a request is throttled with a 429), API_TIMEOUT_MS (the template's ApiTimeoutMillis, 29000: API Gateway's
integration timeout for every route) and SYNC_WAIT_S (its SyncWaitSeconds, 25). The ready line is printed
once the warm environments have imported the handlers.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from .stack import DEFAULT_API_KEYS, DEV_WEBHOOK_SECRET, start

READY_LINE = "imagegw local stack ready"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        sys.exit(f"{name} must be a port number, not {raw!r}")


def _sweep_interval() -> float | None:
    raw = os.environ.get("SWEEP_INTERVAL_S", "").strip()
    if raw.lower() == "template":
        return None
    try:
        value = float(raw) if raw else 2.0
    except ValueError:
        sys.exit(f"SWEEP_INTERVAL_S must be a number of seconds or 'template', not {raw!r}")
    if value <= 0:
        sys.exit("SWEEP_INTERVAL_S must be positive")
    return value


def _webhook_secret_shown() -> str:
    # Like the key: the development default is shown (receivers need it to verify); a configured one never.
    return DEV_WEBHOOK_SECRET if not os.environ.get("WEBHOOK_SECRET") or \
        os.environ["WEBHOOK_SECRET"] == DEV_WEBHOOK_SECRET else "WEBHOOK_SECRET (as configured)"


def banner(api_url: str, aws_url: str, base_url: str) -> str:
    # The default development key is shown so the curl pastes as is; a configured key is never printed.
    keys = os.environ.get("API_KEYS", DEFAULT_API_KEYS)
    key = DEFAULT_API_KEYS if keys.strip() == DEFAULT_API_KEYS else "<one of your API_KEYS>"
    body = '{"model": "gpt-image-1", "prompt": "a lighthouse at dawn", "size": "1024x1024"}'
    return "\n".join([
        "",
        f"  API (OpenAI base_url)  {api_url}",
        f"  Embedded AWS (moto)    {aws_url}",
        f"  Webhook secret         {_webhook_secret_shown()}",
        "",
        "  Try it:",
        f"  curl -s {base_url}/v1/images/generations -H \"Authorization: Bearer {key}\" "
        f"-H \"Content-Type: application/json\" -d '{body}'",
        "",
    ])


def main() -> int:
    logging.basicConfig(level=os.environ.get("LOCAL_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # "Found credentials/endpoint" on every client
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack = start(port=_int_env("PORT", 3000), aws_port=_int_env("AWS_PORT", 4566),
                      sweep_interval_s=_sweep_interval())
    except (OSError, ValueError, RuntimeError) as exc:
        logging.getLogger("local").error("could not start the local stack: %s", exc)
        return 1
    try:
        print(banner(stack.api_url, stack.aws_url, stack.base_url), flush=True)
        print(READY_LINE, flush=True)
        while not stop.wait(1):
            pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
