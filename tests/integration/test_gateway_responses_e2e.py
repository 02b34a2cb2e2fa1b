"""What API Gateway answers itself, through the local stack: the bodies, statuses and headers template.yaml's
GatewayResponses declare, and what the OpenAI SDK makes of them (its typed errors, its retries).

An unknown route and an oversized body go to the real stack (`python -m local`); a throttle (every execution
environment busy) and a crashing function go to the local API Gateway in process, in front of a one-file handler,
so that their timing is the test's own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from local import template
from local.apigateway import ApiGateway
from local.environments import EnvironmentPool
from local.template import ApiRoute, Function
from tests.integration.test_local_stack_smoke import _local_stack

ROOT = Path(__file__).resolve().parents[2]
DECLARED = template.load(ROOT).gateway_responses["GatewayApi"]
KEY = {"Authorization": "Bearer sk-local"}
WAIT_S = 20  # the longest any request here may take
HANDLER = '''
import json, os, time

def lambda_handler(event, context):
    """{"sleep": s} answers after s seconds (and marks its start); {"crash": true} raises; {"result": r} returns r."""
    request = json.loads(event.get("body") or "{}")
    if request.get("sleep"):
        open(os.path.join(os.path.dirname(__file__), "started"), "w").close()
        time.sleep(request["sleep"])
    if request.get("crash"):
        raise RuntimeError("the handler crashed")
    if "result" in request:
        return request["result"]
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"data": [], "created": 0})}
'''
MODULE = "gateway_responses_e2e_handler"


def _declared_body(kind: str) -> dict:
    """The body the template declares for `kind` (these have no $context variables)."""
    text = DECLARED[kind].templates["application/json"]
    assert "$context" not in text
    return json.loads(text)


def _assert_declared(reply: requests.Response, kind: str, status: int) -> None:
    assert reply.status_code == status, reply.text[:300]
    assert reply.json() == _declared_body(kind)
    for name, value in DECLARED[kind].headers.items():
        assert reply.headers[name] == value, name
    assert reply.headers["x-amzn-RequestId"]


# -- the real stack: unknown routes, oversized bodies -------------------------------------------------------------

@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with _local_stack() as url:
        yield url


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/no-such-route"),
    ("POST", "/v1/models"),  # a path the API has, with a method it lacks: API Gateway answers the same
    ("DELETE", "/v1/images/generations"),
    ("GET", "/prod/v1/no-such-route"),  # the deployed URL's stage prefix
    ("GET", "/"),
])
def test_an_unknown_route_is_the_templates_404(api: str, method: str, path: str) -> None:
    reply = requests.request(method, api + path, headers=KEY, timeout=WAIT_S)
    _assert_declared(reply, "MISSING_AUTHENTICATION_TOKEN", 404)
    assert reply.json()["error"]["code"] == "unknown_route"


def test_a_body_over_10_mb_is_the_templates_413(api: str) -> None:
    body = json.dumps({"model": "gpt-image-1", "prompt": "x" * (10 * 1024 * 1024 + 1)})
    reply = requests.post(f"{api}/v1/images/generations", data=body, timeout=WAIT_S,
                          headers={**KEY, "Content-Type": "application/json"})
    _assert_declared(reply, "REQUEST_TOO_LARGE", 413)


def test_the_sdk_gets_not_found_with_our_message_and_does_not_retry(api: str) -> None:
    seen: list[int] = []
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
    sdk = openai.OpenAI(base_url=f"{api}/v1", api_key="sk-local", max_retries=2, timeout=WAIT_S,
                        http_client=http_client)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.get("/no-such-route", cast_to=object)
    declared = _declared_body("MISSING_AUTHENTICATION_TOKEN")["error"]
    assert missing.value.status_code == 404 and missing.value.body == declared
    assert declared["message"] in missing.value.message and missing.value.code == "unknown_route"
    assert seen == [404]


def test_the_sdk_gets_a_413_with_our_message_and_does_not_retry(api: str) -> None:
    seen: list[int] = []
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
    sdk = openai.OpenAI(base_url=f"{api}/v1", api_key="sk-local", max_retries=2, timeout=WAIT_S,
                        http_client=http_client)
    with pytest.raises(openai.APIStatusError) as too_large:
        sdk.images.generate(model="gpt-image-1", prompt="x" * (10 * 1024 * 1024 + 1))
    assert too_large.value.status_code == 413
    assert too_large.value.body == _declared_body("REQUEST_TOO_LARGE")["error"]
    assert too_large.value.code == "payload_too_large"
    assert seen == [413]


# -- in process: a throttle, a crashing function ---------------------------------------------------------------

class Gateway:
    def __init__(self, server: ApiGateway, pool: EnvironmentPool, marks: Path):
        self.server, self.pool, self.marks = server, pool, marks
        self.url = f"http://127.0.0.1:{server.port}"
        self.answers: list[tuple[float, int]] = []  # (monotonic time, status) of every answer
        handle = server.handle

        def recording(*args, **kwargs):
            answer = handle(*args, **kwargs)
            self.answers.append((time.monotonic(), answer[0]))
            return answer

        server.handle = recording  # type: ignore[method-assign]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator:
    (tmp_path / f"{MODULE}.py").write_text(HANDLER)
    function = Function(logical_id="ImagesFunction", name="images", code_dir=tmp_path,
                        handler=f"{MODULE}.lambda_handler", layer_dirs=[], timeout_s=30, memory_mb=128,
                        environment={})
    started: list[Gateway] = []

    def make(**pool_options) -> Gateway:
        route = ApiRoute(function=function.logical_id, event="Generate", path="/v1/images/generations",
                         method="POST", stage="prod", api="GatewayApi")
        pool = EnvironmentPool({function.logical_id: function}, "us-east-1", **pool_options)
        server = ApiGateway([route], pool, port=0, gateway_responses={"GatewayApi": DECLARED})
        pool.start()
        try:
            pool.wait_ready()
        except BaseException:
            server.server.server_close()
            pool.stop()
            raise
        server.start()
        started.append(Gateway(server, pool, tmp_path))
        return started[-1]

    yield make
    for gateway in started:
        gateway.server.stop()
        gateway.pool.stop()


def _hold_the_only_environment(gateway: Gateway, seconds: float) -> threading.Thread:
    def run() -> None:
        requests.post(f"{gateway.url}/v1/images/generations", json={"sleep": seconds}, timeout=WAIT_S)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not (gateway.marks / "started").exists():  # the slow request has its environment
        assert time.monotonic() < deadline, "the slow request never started"
        time.sleep(0.05)
    return thread


def test_a_throttle_is_the_templates_429_with_retry_after(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=1, throttle_wait_s=0.3)
    slow = _hold_the_only_environment(gateway, 3)
    reply = requests.post(f"{gateway.url}/v1/images/generations", json={}, timeout=WAIT_S)
    _assert_declared(reply, "THROTTLED", 429)
    assert (reply.headers["Retry-After"], reply.headers["retry-after-ms"]) == ("1", "1000")
    slow.join(WAIT_S)


def test_the_sdk_retries_a_throttle_after_retry_after_ms_and_gets_its_images(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=1, throttle_wait_s=0.3)
    slow = _hold_the_only_environment(gateway, 2.5)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=6, timeout=WAIT_S)
    assert sdk.images.generate(model="gpt-image-1", prompt="a lighthouse").data == []
    slow.join(WAIT_S)
    statuses = [status for _, status in gateway.answers]  # the SDK's tries, and the slow request's 200
    assert statuses.count(200) == 2 and statuses[-1] == 200 and statuses.count(429) >= 1, statuses
    assert set(statuses) == {200, 429}, statuses
    throttled_at = [at for at, status in gateway.answers if status == 429]
    # Each retry came retry-after-ms (1 s) after a 429 (the SDK's own first backoff is 0.375-0.5 s): the next
    # 429 another throttle wait (0.3 s) later, the 200 at once.
    gaps = [b - a for a, b in zip(throttled_at, throttled_at[1:], strict=False)]
    assert all(gap >= 1.25 for gap in gaps), gaps
    assert gateway.answers[-1][0] - throttled_at[-1] >= 0.95


def test_the_sdk_gets_a_rate_limit_error_with_our_message(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=1, throttle_wait_s=0.3)
    slow = _hold_the_only_environment(gateway, 2)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=0, timeout=WAIT_S)
    with pytest.raises(openai.RateLimitError) as throttled:
        sdk.images.generate(model="gpt-image-1", prompt="a lighthouse")
    assert throttled.value.body == _declared_body("THROTTLED")["error"]
    assert throttled.value.code == "rate_limit_exceeded"
    slow.join(WAIT_S)


@pytest.mark.parametrize("request_body", [{"crash": True}, {"result": "not a proxy result"}],
                         ids=["handler-raises", "malformed-result"])
def test_a_failing_function_is_the_templates_5xx(make_gateway, request_body: dict) -> None:
    gateway = make_gateway(size=1, max_size=1)
    reply = requests.post(f"{gateway.url}/v1/images/generations", json=request_body, timeout=WAIT_S)
    assert reply.status_code == 502, reply.text[:300]  # API Gateway's status for a function error
    for name, value in DECLARED["DEFAULT_5XX"].headers.items():
        assert reply.headers[name] == value, name
    request_id = reply.headers["x-amzn-RequestId"]
    expected = DECLARED["DEFAULT_5XX"].templates["application/json"] \
        .replace("$context.error.responseType", "DEFAULT_5XX") \
        .replace("$context.error.message", "Internal server error") \
        .replace("$context.requestId", request_id)
    assert reply.json() == json.loads(expected)
    assert "the handler crashed" not in reply.text  # the traceback is logged, never sent


def test_the_sdk_retries_a_crashing_function_after_retry_after_ms_then_raises(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=1)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=2, timeout=WAIT_S)
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.images.generate(model="gpt-image-1", prompt="a lighthouse", extra_body={"crash": True})
    assert failed.value.status_code == 502 and failed.value.code == "gateway_error"
    assert failed.value.type == "server_error"
    statuses = [status for _, status in gateway.answers]
    assert statuses == [502, 502, 502], statuses  # the first try and the SDK's two retries
    times = [at for at, _ in gateway.answers]
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:], strict=False)), times  # retry-after-ms: 1000
