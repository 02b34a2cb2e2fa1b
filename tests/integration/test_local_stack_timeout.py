"""API Gateway's integration timeout, as the local stack plays it from template.yaml.

A route's timeout is its `Api` event's TimeoutInMillis (the template's ApiTimeoutMillis, API_TIMEOUT_MS
locally). A function that outlasts it gets the API's INTEGRATION_TIMEOUT gateway response, rendered with the
request's $context (it names the task `imgtask_<requestTimeEpoch><requestId>`), and runs on to the end in
its environment, as in Lambda. The gateway tests run in process in front of a one-file handler; the last
one runs the real stack behind the OpenAI SDK.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from local import stack as local_stack
from local import template
from local.apigateway import ApiGateway, context_variables, render_context
from local.environments import EnvironmentPool
from local.template import ApiRoute, Function, TemplateError
from tests.integration.conftest import start_stack
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

ROOT = Path(__file__).resolve().parents[2]
HANDLER = '''
import json, os, time
from pathlib import Path

def lambda_handler(event, context):
    """Writes <marks>/<requestId>.json (its pid and requestContext) at once, sleeps, then <requestId>.done."""
    request = json.loads(event["body"])
    marks, ctx = Path(request["marks"]), event["requestContext"]
    started = {"pid": os.getpid(), "requestId": ctx["requestId"], "requestTimeEpoch": ctx["requestTimeEpoch"]}
    (marks / (ctx["requestId"] + ".json")).write_text(json.dumps(started))
    time.sleep(request["sleep"])
    (marks / (ctx["requestId"] + ".done")).write_text("done")
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(started)}
'''
MODULE = "local_stack_timeout_sleeper"
TIMEOUT_MS = 1000
MARGIN_S = 1.0  # the answer comes this soon after the integration timeout, even on a loaded machine
SLEEP_S = 2.5  # past TIMEOUT_MS
WAIT_S = 15  # the longest any test waits for something to happen


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sleeper_function")
    (directory / f"{MODULE}.py").write_text(HANDLER)
    return directory


@pytest.fixture(scope="module")
def shipped() -> template.LocalTemplate:
    return template.load(ROOT)


@pytest.fixture
def make_gateway(code_dir: Path) -> Iterator:
    started: list[ApiGateway] = []

    def make(gateway_responses: dict | None, function_timeout_s: int = 20) -> ApiGateway:
        fn = Function(logical_id="SleepFunction", name="sleep", code_dir=code_dir, handler=f"{MODULE}.lambda_handler",
                      layer_dirs=[], timeout_s=function_timeout_s, memory_mb=128, environment={})
        route = ApiRoute(function=fn.logical_id, event="Sleep", path="/v1/sleep", method="POST", stage="prod",
                         timeout_ms=TIMEOUT_MS, api="GatewayApi")
        pool = EnvironmentPool({fn.logical_id: fn}, "us-east-1", size=2, max_size=2)
        gateway = ApiGateway([route], pool, port=0, gateway_responses=gateway_responses)
        started.append(gateway)
        pool.start()
        pool.wait_ready()
        gateway.start()
        return gateway

    yield make
    for gateway in started:
        gateway.stop()
        gateway.environments.stop()


def _post(gateway: ApiGateway, marks: Path, sleep_s: float) -> tuple[requests.Response, float]:
    started = time.monotonic()
    reply = requests.post(f"http://127.0.0.1:{gateway.port}/v1/sleep", json={"sleep": sleep_s, "marks": str(marks)},
                          timeout=WAIT_S)
    return reply, time.monotonic() - started


def _started_file(marks: Path) -> Path:
    """The one invocation's start mark. On a loaded machine the 504 may come before the handler has even
    started (its environment was still busy), so the mark is waited for, not expected."""
    _wait_for(lambda: any(mark.read_text().endswith("}") for mark in marks.glob("*.json")),
              "start of the invocation")  # written whole
    [started_file] = marks.glob("*.json")
    return started_file


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)


# -- the gateway ----------------------------------------------------------------------------------------------

def test_past_the_timeout_the_client_gets_the_templates_gateway_response_and_the_function_runs_on(
        make_gateway, shipped: template.LocalTemplate, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gateway = make_gateway(shipped.gateway_responses)
    reply, elapsed = _post(gateway, tmp_path, SLEEP_S)

    assert reply.status_code == 504, reply.text[:300]
    assert TIMEOUT_MS / 1000 <= elapsed < TIMEOUT_MS / 1000 + MARGIN_S
    assert reply.headers["x-should-retry"] == "true"  # what the OpenAI SDKs honour, with the delays below
    assert (reply.headers["retry-after-ms"], reply.headers["Retry-After"]) == ("1000", "1")
    assert reply.headers["Content-Type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("server_error", None, "generation_in_progress")
    started_file = _started_file(tmp_path)
    seen = json.loads(started_file.read_text())  # the requestContext the function got
    assert re.fullmatch(r"\d{13}", str(seen["requestTimeEpoch"]))
    task_id = f"imgtask_{seen['requestTimeEpoch']}{seen['requestId']}"
    assert f"by task {task_id}. " in error["message"] and error["message"].endswith(f"/v1/images/tasks/{task_id}")
    assert reply.headers["x-amzn-RequestId"] == seen["requestId"]
    done = tmp_path / f"{seen['requestId']}.done"
    assert not done.exists(), "the function had finished before the timeout answer"

    # Its environment is still busy: another request meanwhile is served by the other one.
    other, _ = _post(gateway, tmp_path, 0)
    assert other.status_code == 200 and other.json()["pid"] != seen["pid"]
    _wait_for(done.exists, "end of the timed-out invocation")  # it ran on to the end
    _wait_for(lambda: any("after API Gateway had answered 504" in r.getMessage() and seen["requestId"] in r.getMessage()
                          for r in caplog.records), "log line for the dropped late result")


def test_without_a_declared_gateway_response_the_routes_timeout_is_api_gateways_own_504(make_gateway,
                                                                                      tmp_path: Path) -> None:
    gateway = make_gateway(None)
    reply, elapsed = _post(gateway, tmp_path, SLEEP_S)
    assert reply.status_code == 504, reply.text[:300]
    assert TIMEOUT_MS / 1000 <= elapsed < TIMEOUT_MS / 1000 + MARGIN_S  # the route's 1 s, not API Gateway's 29 s
    assert reply.json() == {"message": "Endpoint request timed out"}  # what a deployed API without one answers
    assert "x-should-retry" not in reply.headers


def test_a_late_function_is_still_stopped_at_its_own_timeout(make_gateway, shipped: template.LocalTemplate,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gateway = make_gateway(shipped.gateway_responses, function_timeout_s=2)
    started = time.monotonic()
    reply, _ = _post(gateway, tmp_path, 5)  # past the Timeout and the grace before its environment is stopped
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "generation_in_progress"
    request_id = json.loads(_started_file(tmp_path).read_text())["requestId"]
    _wait_for(lambda: any("ran past the function's Timeout" in r.getMessage() and request_id in r.getMessage()
                          for r in caplog.records), "log line for the environment stopped at the function's Timeout")
    time.sleep(max(0.0, started + 5.5 - time.monotonic()))  # past the moment the handler would have finished
    assert not (tmp_path / f"{request_id}.done").exists(), "the function ran past its Timeout"
    _wait_for(lambda: gateway.environments.count == 2, "replacement environment")
    assert _post(gateway, tmp_path, 0)[0].status_code == 200


# -- the template -----------------------------------------------------------------------------------------------

def test_every_route_takes_api_timeout_millis_and_its_override(shipped: template.LocalTemplate) -> None:
    assert {r.timeout_ms for r in shipped.api_routes} == {29000}
    overridden = template.load(ROOT, parameter_overrides={"ApiTimeoutMillis": "1234"})
    assert [(r.path, r.timeout_ms) for r in overridden.api_routes] == [(r.path, 1234) for r in shipped.api_routes]
    assert {r.api for r in overridden.api_routes} == {"GatewayApi"}


MINIMAL = """
Resources:
  Api:
    Type: AWS::Serverless::Api
    Properties:
      StageName: v
      GatewayResponses:
        INTEGRATION_TIMEOUT:
          ResponseParameters: {Headers: {X-Echo: HEADER_VALUE}}
          ResponseTemplates: {text/plain: "slow $context.path"}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: h.handler
      Events:
        Slow: {Type: Api, Properties: {RestApiId: !Ref Api, Path: /slow, Method: GET, TimeoutInMillis: 5000}}
        Plain: {Type: Api, Properties: {Path: /plain, Method: GET}}
"""


def test_timeout_in_millis_is_read_per_route_and_defaults_to_29_s(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(MINIMAL.replace("HEADER_VALUE", "\"'yes'\""))
    loaded = template.load(tmp_path)
    routes = {r.path: r for r in loaded.api_routes}
    assert (routes["/slow"].timeout_ms, routes["/slow"].api, routes["/slow"].stage) == (5000, "Api", "v")
    assert (routes["/plain"].timeout_ms, routes["/plain"].api, routes["/plain"].stage) == \
        (29000, template.IMPLICIT_API, "Prod")
    response = loaded.gateway_responses["Api"]["INTEGRATION_TIMEOUT"]
    assert (response.status, response.headers, response.templates) == (None, {"X-Echo": "yes"},
                                                                       {"text/plain": "slow $context.path"})


def test_a_gateway_response_header_that_is_not_a_literal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(MINIMAL.replace("HEADER_VALUE", "method.request.header.Accept"))
    with pytest.raises(TemplateError, match=r"GatewayResponses\.INTEGRATION_TIMEOUT\.ResponseParameters.*X-Echo"):
        template.load(tmp_path)


def test_the_shipped_gateway_response_renders_to_an_openai_error(shipped: template.LocalTemplate) -> None:
    response = shipped.gateway_responses["GatewayApi"]["INTEGRATION_TIMEOUT"]
    assert response.status == 504
    assert response.headers == {"x-should-retry": "true", "retry-after-ms": "1000", "Retry-After": "1",
                                "Content-Type": "application/json"}
    context = {"requestId": "c0ffee", "requestTimeEpoch": 1764547200123, "path": "/prod/v1/images/generations",
               "identity": {"sourceIp": "127.0.0.1", "userAgent": None}}
    body = render_context(response.templates["application/json"], context_variables(context, "INTEGRATION_TIMEOUT",
                                                                                     "Endpoint request timed out"))
    error = json.loads(body)["error"]
    assert error["code"] == "generation_in_progress" and error["param"] is None
    assert error["message"].count("imgtask_1764547200123c0ffee") == 2 and "$context" not in error["message"]


def test_render_context_fills_known_names_and_leaves_the_rest() -> None:
    variables = context_variables({"requestId": "r1", "httpMethod": "POST", "path": "/prod/x",
                                   "identity": {"sourceIp": "127.0.0.1"}}, "INTEGRATION_TIMEOUT", "timed out")
    text = "$context.httpMethod ${context.path}! $context.identity.sourceIp $context.error.messageString " \
           "$context.requestId. $context.nope $context.requestId.more"
    assert render_context(text, variables) == \
        'POST /prod/x! 127.0.0.1 "timed out" r1. $context.nope $context.requestId.more'


def test_parameter_overrides_are_checked_as_cloudformation_checks_them() -> None:
    for value in ("10", "300001", "soon"):
        with pytest.raises(TemplateError, match="ApiTimeoutMillis"):
            template.load(ROOT, parameter_overrides={"ApiTimeoutMillis": value})
    loaded = template.load(ROOT, parameter_overrides={"SyncWaitSeconds": "7"})
    assert loaded.functions["SubmitFunction"].environment["SYNC_WAIT_S"] == "7"


def test_api_timeout_ms_and_sync_wait_s_override_the_template_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TIMEOUT_MS", "1500")
    monkeypatch.setenv("SYNC_WAIT_S", " 7 ")
    assert local_stack._parameters_from_env() == {"ApiTimeoutMillis": "1500", "SyncWaitSeconds": "7"}
    monkeypatch.setenv("API_TIMEOUT_MS", "")
    monkeypatch.delenv("SYNC_WAIT_S")
    assert local_stack._parameters_from_env() == {}


# -- the real stack, through the OpenAI SDK ---------------------------------------------------------------------

def test_the_openai_sdk_gets_an_error_naming_the_task_when_a_sync_request_times_out(tmp_path: Path) -> None:
    with OpenAISimulator(behaviour=Behaviour(delay_s=6)) as sim:
        providers = tmp_path / "providers.json"
        providers.write_text(json.dumps({
            "providers": {"slow": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}},
            "models": {"dall-e-3": [{"provider": "slow"}]}}))
        stack = start_stack(PROVIDERS_FILE=str(providers), API_TIMEOUT_MS="2000")
        try:
            sdk = openai.OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=WAIT_S)
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as timed_out:
                sdk.images.generate(model="dall-e-3", prompt="a slow lighthouse")
            assert time.monotonic() - started < 2 + MARGIN_S + 1  # API_TIMEOUT_MS, not the 29 s default
            error = timed_out.value
            assert error.status_code == 504 and error.body["code"] == "generation_in_progress"
            headers = error.response.headers
            assert headers["x-should-retry"] == "true" and headers["retry-after-ms"] == "1000"
            task_id = re.search(r"imgtask_\d{13}" + re.escape(headers["x-amzn-RequestId"]), error.body["message"])
            assert task_id and f"/v1/images/tasks/{task_id[0]}" in error.message
            auth = {"Authorization": "Bearer sk-local"}
            for _ in range(100):  # the named task is real, and the invocation API Gateway gave up on finishes it
                task = requests.get(f"{stack.base_url}/images/tasks/{task_id[0]}", headers=auth, timeout=10).json()
                if task["status"] != "in_progress":
                    break
                time.sleep(0.1)
            assert task["status"] == "succeeded" and len(sim.generations) == 1
        finally:
            stack.stop()
