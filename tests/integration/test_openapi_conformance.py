"""The API answers what its OpenAPI document says. schemathesis reads the local stack's `/openapi.json` and, for
every operation, generates valid and invalid requests (a bounded number, derandomized, no shrinking) and checks
each answer: no 5xx, a declared status, the declared content type, a body and headers matching the document.

(schemathesis' pytest integration, `from_fixture(...).parametrize()`, fails under pytest 9 with "'Function' object
has no attribute '_nodeid'", so each operation's strategy is driven with Hypothesis's `given` here.)
"""

from __future__ import annotations

import os
import time

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

# Bounded for `make test`; CONFORMANCE_EXAMPLES=200 for a deeper look by hand.
EXAMPLES_PER_OPERATION = int(os.environ.get("CONFORMANCE_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
AUTH = {"Authorization": "Bearer sk-local"}
EXTRA_EXAMPLES = 4  # per pass of real task ids, and of async generations
BUDGET_S = 6 * EXAMPLES_PER_OPERATION  # 90 s for the default 15


def test_every_answer_conforms_to_the_document(stack):
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json", timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "POST /v1/images/generations", "GET /v1/images/tasks", "GET /v1/images/tasks/{task_id}",
        "POST /v1/images/tasks/{task_id}/cancel", "GET /v1/images/tasks/{task_id}/images/{index}", "GET /v1/models",
        "POST /v1/images/edits", "POST /v1/images/variations"}
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    started = time.monotonic()
    with requests.Session() as session:
        tasks = [_task(session, stack.url, cancel=cancel) for cancel in (False, True)]
        for operation in operations:
            strategies = [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
            passes = [(st.one_of(strategies), EXAMPLES_PER_OPERATION)]
            # Passes of their own for what a derandomized draw from the mix above might never pick:
            if "{task_id}" in operation.path:  # real tasks, or every answer would be a 404
                index = {"index": "0"} if "{index}" in operation.path else {}
                passes += [(operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"task_id": t, **index}),
                            EXTRA_EXAMPLES) for t in tasks]
            if operation.label == "POST /v1/images/generations":  # the task protocol (202, Location)
                passes.append((operation.as_strategy(GenerationMode.POSITIVE, query={"async": "true"}), EXTRA_EXAMPLES))
            for strategy, examples in passes:
                _exercise(operation.label, strategy, examples, session, statuses, counts, failures)
    elapsed = time.monotonic() - started
    print(f"conformance: {sum(counts.values())} requests {counts}, statuses seen {statuses}, {elapsed:.1f} s")
    assert not failures, "\n\n".join(failures)
    assert elapsed < BUDGET_S
    # Generated requests reach the handlers, not just the error paths.
    assert {200, 202, 400} <= statuses["POST /v1/images/generations"]
    assert 200 in statuses["GET /v1/images/tasks/{task_id}"] and 302 in statuses[
        "GET /v1/images/tasks/{task_id}/images/{index}"]


def _exercise(label: str, strategy, examples: int, session: requests.Session, statuses: dict[str, set[int]],
              counts: dict[str, int], failures: list[str]) -> None:
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def exercise(case):
        try:
            response = case.call_and_validate(session=session, headers=AUTH, checks=CHECKS, timeout=30)
            statuses.setdefault(label, set()).add(response.status_code)
            counts[label] = counts.get(label, 0) + 1
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - list every finding, not the first
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:1500]}")

    exercise()


def _task(session: requests.Session, url: str, *, cancel: bool) -> str:
    """A succeeded task's id, or a queued one that is then cancelled."""
    reply = session.post(f"{url}/v1/images/generations", params={"async": "true"}, headers=AUTH, timeout=30,
                         json={"prompt": "a conformance check", "size": "256x256"})
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["id"]
    if cancel:
        assert session.post(f"{url}/v1/images/tasks/{task_id}/cancel", headers=AUTH, timeout=30).status_code in (
            200, 409)
        return task_id
    deadline = time.monotonic() + 30
    while session.get(f"{url}/v1/images/tasks/{task_id}", headers=AUTH, timeout=30).json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the local stack did not finish a task in 30 s"
        time.sleep(0.2)
    return task_id
