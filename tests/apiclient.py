"""Drive the handlers in-process with API Gateway REST proxy events and an in-process bus.

Requests are built from events/api-create-images.json (made by `sam local generate-event`), so the tests
feed the handlers the same shape API Gateway does. Bus events go to the function the template's rule names.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
_TEMPLATE_EVENT = json.loads((ROOT / "events" / "api-create-images.json").read_text())


class FakeContext:
    function_name = "imagegw-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imagegw-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def api_event(method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None,
              query: dict[str, str] | None = None) -> dict[str, Any]:
    event = copy.deepcopy(_TEMPLATE_EVENT)
    hdrs = {k: v for k, v in event["headers"].items() if k.lower() not in ("authorization", "content-type")}
    hdrs.update(headers or {})
    raw = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    event.update(
        httpMethod=method, path=path, resource=path, headers=hdrs,
        multiValueHeaders={k: [v] for k, v in hdrs.items()},
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in (query or {}).items()} or None,
        body=None if raw is None else base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode(),
        isBase64Encoded=raw is not None,
    )
    # Each request its own id and time, as API Gateway gives them (a sync request's task id derives from them).
    event["requestContext"].update(httpMethod=method, path=f"/prod{path}", resourcePath=path,
                                   requestId=str(uuid.uuid4()), requestTimeEpoch=int(time.time() * 1000))
    return event


def call(handler, method: str, path: str, *, key: str | None = None, body: Any = None,
         headers: dict[str, str] | None = None, query: dict[str, str] | None = None) -> Reply:
    hdrs = dict(headers or {})
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    out = handler(api_event(method, path, body=body, headers=hdrs, query=query), FakeContext())
    merged = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
    merged.update({k.lower(): v[-1] for k, v in (out.get("multiValueHeaders") or {}).items()})
    text = base64.b64decode(out["body"]).decode() if out.get("isBase64Encoded") else (out.get("body") or "")
    return Reply(out["statusCode"], merged, text)


def bus_event(detail_type: str, task_id: str, **extra: str) -> dict[str, Any]:
    return {"version": "0", "id": "test", "detail-type": detail_type, "source": "imagegw",
            "account": "123456789012", "time": "2026-11-21T12:00:00Z", "region": "us-east-1", "resources": [],
            "detail": {"task_id": task_id, **extra}}


class InlineBus:
    """Stands in for EventBridge + its rules (a `bus.use` sink): each event a target takes runs the rule's
    function in a thread; any other event (lifecycle events, "Batch Continue") goes on to `fallback` (moto's
    EventBridge by default), as it would in AWS. `published` lists the (detail type, task id) run here."""

    def __init__(self, targets: dict[str, Any], fallback: Any = None):
        from imagegw import bus

        self.targets = targets
        self.fallback = fallback if fallback is not None else bus.EventBridge()
        self.published: list[tuple[str, str]] = []
        self.threads: list[threading.Thread] = []

    def send(self, detail_type: str, details: list[dict]) -> None:
        if detail_type not in self.targets:
            self.fallback.send(detail_type, details)
            return
        for detail in details:
            self.published.append((detail_type, detail["task_id"]))
            thread = threading.Thread(target=self.targets[detail_type],
                                      args=(bus_event(detail_type, **detail), FakeContext()), daemon=True)
            self.threads.append(thread)
            thread.start()

    def drain(self, timeout_s: float = 30) -> None:
        """Wait for every delivery, including those that earlier deliveries published."""
        joined = 0
        while joined < len(self.threads):
            self.threads[joined].join(timeout_s)
            joined += 1


def generate(body: Any, *, key: str | None = None, **kwargs: Any) -> Reply:
    """`POST /v1/images/generations` through the real submit handler, with the tests' API key by default."""
    import submit_handler

    from tests.conftest import API_KEY

    return call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=key or API_KEY, body=body,
                **kwargs)


def read_task(task_id: str, *, key: str | None = None) -> Reply:
    """`GET /v1/images/tasks/{id}` through the real poll handler, with the tests' API key by default."""
    import poll_handler

    from tests.conftest import API_KEY

    return call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=key or API_KEY)
