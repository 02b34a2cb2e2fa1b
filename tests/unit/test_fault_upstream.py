"""Every fault a hostile upstream can commit ends the task terminal, with a clear code, and leaks nothing.

One route to a FaultSimulator (tests/simulators/fault_sim.py) per case, through the real handlers: the
request is accepted (202), the bus runs the workers, the schedule runs on a clock moved forward a minute at
a time (so retries come due), and the task ends. Then: its error code is the expected one, the status a
sync request would answer is not 500, the provider's key is in neither the task, the API's answers nor the
logs, and the bucket holds nothing.
"""

import json

import pytest

import poll_handler
import submit_handler
from imagegw import errors, safe_fetch, tasks, worker
from tests.apiclient import call
from tests.conftest import API_KEY, s3_objects
from tests.simulators.fault_sim import FaultSimulator

KEY = "sk-fault-0123456789abcdefghijklmnop"

CASES = [  # (id, FaultSimulator kwargs, the task's error code)
    ("echo headers in a 400", {"fault": "echo_headers", "status": 400}, "upstream_rejected"),
    ("echo headers in a 401", {"fault": "echo_headers", "status": 401}, "provider_auth_failed"),
    # a 429 means "wait" (see test_pacing.py): the task is queued again, not failed, and leaks nothing meanwhile
    ("echo headers in a 429", {"fault": "echo_headers", "status": 429}, None),
    ("echo headers in a 500", {"fault": "echo_headers", "status": 500}, "upstream_error"),
    ("drip the whole answer", {"fault": "drip", "drip_s": 0.2}, "upstream_timeout"),
    ("drip the body", {"fault": "drip", "drip_s": 0.2, "drip_headers": False}, "upstream_timeout"),
    ("hang", {"fault": "hang"}, "upstream_timeout"),
    ("drip the image", {"fault": "drip_image", "drip_s": 0.2}, "upstream_timeout"),
    ("hang on the image", {"fault": "hang_image"}, "upstream_timeout"),
    ("bomb by URL", {"fault": "bomb_url"}, "upstream_invalid_image"),
    ("bomb as b64_json", {"fault": "bomb_b64"}, "upstream_invalid_image"),
    ("redirect to the metadata service", {"fault": "redirect_unsafe"}, "unsafe_result_url"),
    ("redirect to a private address", {"fault": "redirect_unsafe", "unsafe_target": "http://10.0.0.1/x.png"},
     "unsafe_result_url"),
    ("image URL on the metadata service", {"fault": "unsafe_url"}, "unsafe_result_url"),
    ("200 that is not JSON", {"fault": "garbage_200", "variant": "not_json"}, "bad_upstream_response"),
    ("200 without data", {"fault": "garbage_200", "variant": "wrong_shape"}, "no_image"),
    ("200 whose data are not objects", {"fault": "garbage_200", "variant": "data_not_dicts"}, "no_image"),
    ("200 whose url is not a string", {"fault": "garbage_200", "variant": "url_not_string"}, "no_image"),
    ("an HTML page as the image", {"fault": "not_an_image"}, "not_an_image"),
]


@pytest.fixture
def guarded(monkeypatch):
    """Refused addresses are refused before any connection (the resolver is stubbed, connecting is checked)."""
    import socket

    real = socket.create_connection

    def connect(address, *args, **kwargs):
        assert str(address[0]).startswith("127."), f"connected to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(safe_fetch, "default_resolver", lambda host, port: ["127.0.0.1"])


@pytest.mark.parametrize("kwargs, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_fault_upstream_ends_the_task_with_a_clear_code_and_leaks_nothing(
        inline_bus, providers_file, loopback_fetch, guarded, fake_clock, monkeypatch, caplog, kwargs, code):
    monkeypatch.setenv("MAX_DOWNLOAD_S", "1")
    caplog.set_level("INFO")
    with FaultSimulator(api_key=KEY, **kwargs) as sim:
        providers_file({"providers": {"bad": {"dialect": "openai", "base_url": sim.base_url, "api_key": KEY,
                                              "timeout_s": 1}},
                        "models": {"gpt-image-1": [{"provider": "bad"}]}})
        submitted = call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                         query={"async": "true"}, body={"model": "gpt-image-1", "prompt": "a lighthouse"})
        assert submitted.status == 202, submitted.body
        task_id = submitted.json()["id"]
        answers = [submitted.body]
        for _ in range(10):  # bounded: a minute of gateway time per round
            inline_bus.drain()
            seen = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{task_id}", key=API_KEY)
            answers.append(seen.body)
            if seen.json()["status"] != "in_progress" and seen.json()["status"] != "queued":
                break
            fake_clock.advance(60_000)
            worker.sweep()
        task = seen.json()
        if code is None:
            assert task["status"] == "queued" and task["waiting_for"] == "rate_limit", task
        else:
            assert task["status"] == "failed", task
            assert task["error"]["code"] == code, task["error"]
            assert errors.from_task_error(task["error"]).status != 500
        logs = [json.dumps(vars(record), default=str) for record in caplog.records]  # message and extras
        assert any(task_id in line for line in logs)  # the task's own log lines are there to be searched
        for text in [*answers, json.dumps(tasks.get(task_id).__dict__, default=str), *logs]:
            assert KEY not in text and KEY[3:15] not in text
        assert s3_objects() == []
