"""The API's GatewayResponses (template.yaml) as the local stack reads and renders them, and OpenApiVersion.

What API Gateway answers itself must be readable by the OpenAI SDKs: each declared response renders, with a
request's $context variables, to `{"error": {"message", "type", "param": null, "code"}}` with the status and
retry headers the SDKs act on; an undeclared type falls back to DEFAULT_4XX / DEFAULT_5XX, then to API Gateway's
own `{"message": ...}`, as deployed. The transformed template (samtranslator, as `sam validate` runs it) has
no stray `Stage` stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local import template
from local.apigateway import RESPONSE_TYPES, ApiGateway, context_variables, render_gateway_response, request_context
from local.template import ApiRoute, GatewayResponse

ROOT = Path(__file__).resolve().parents[2]
# "Gateway response types for API Gateway" (AWS docs) and their default status codes (None: DEFAULT_*).
AWS_TYPES = {"ACCESS_DENIED": 403, "API_CONFIGURATION_ERROR": 500, "AUTHORIZER_CONFIGURATION_ERROR": 500,
             "AUTHORIZER_FAILURE": 500, "BAD_REQUEST_PARAMETERS": 400, "BAD_REQUEST_BODY": 400,
             "DEFAULT_4XX": None, "DEFAULT_5XX": None, "EXPIRED_TOKEN": 403, "INTEGRATION_FAILURE": 504,
             "INTEGRATION_TIMEOUT": 504, "INVALID_API_KEY": 403, "INVALID_SIGNATURE": 403,
             "MISSING_AUTHENTICATION_TOKEN": 403, "QUOTA_EXCEEDED": 429, "REQUEST_TOO_LARGE": 413,
             "RESOURCE_NOT_FOUND": 404, "THROTTLED": 429, "UNAUTHORIZED": 401, "UNSUPPORTED_MEDIA_TYPE": 415,
             "WAF_FILTERED": 403}


@pytest.fixture(scope="module")
def declared() -> dict[str, GatewayResponse]:
    return template.load(ROOT).gateway_responses["GatewayApi"]


def _context(request_id: str = "c0ffee-1") -> dict[str, Any]:
    context = request_context("POST", "/v1/images/generations", [("User-Agent", "OpenAI/Python 1.0")],
                              source_ip="127.0.0.1", host="127.0.0.1:3000", stage="prod")
    context["requestId"] = request_id
    return context


def _render(response: GatewayResponse, kind: str, status: int | None = None,
            message: str | None = None) -> tuple[int, dict[str, str], dict]:
    own_status, own_message = RESPONSE_TYPES.get(kind, (AWS_TYPES.get(kind) or 500, "Forbidden"))
    code, headers, body = render_gateway_response(response, status or own_status, _context(), kind,
                                                  message or own_message)
    text = body.decode("utf-8")
    assert "$context" not in text and "${" not in text, text
    return code, dict(headers), json.loads(text)


def _openai_error(body: dict) -> dict:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["param"] is None and error["message"] and error["type"] and error["code"]
    return error


def test_every_declared_type_is_an_api_gateway_type_and_the_ones_a_client_meets_are_declared(declared) -> None:
    assert set(declared) <= set(AWS_TYPES)
    assert {"MISSING_AUTHENTICATION_TOKEN", "THROTTLED", "REQUEST_TOO_LARGE", "INTEGRATION_TIMEOUT", "DEFAULT_4XX",
            "DEFAULT_5XX"} <= set(declared)
    for response in declared.values():  # one body, JSON, for the SDKs
        assert list(response.templates) == ["application/json"]
        assert response.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("kind", sorted(AWS_TYPES))
def test_every_type_api_gateway_can_answer_renders_to_an_openai_error(declared, kind: str) -> None:
    """Declared or inherited (from DEFAULT_4XX / DEFAULT_5XX), each type's answer is an OpenAI-shaped error."""
    status = AWS_TYPES[kind] or (400 if kind == "DEFAULT_4XX" else 500)
    response = declared.get(kind) or declared["DEFAULT_4XX" if status < 500 else "DEFAULT_5XX"]
    code, headers, body = _render(response, kind, status=status)
    error = _openai_error(body)
    assert code == (response.status or status)
    if kind == "QUOTA_EXCEEDED":  # OpenAI's own quota error, which no retry helps
        assert (error["type"], headers["x-should-retry"]) == ("insufficient_quota", "false")
        return
    assert error["type"] == ("server_error" if code >= 500 else "rate_limit_error" if code == 429
                             else "not_found_error" if code == 404 else "invalid_request_error")
    if code >= 500 or code == 429:  # the SDKs retry these after the server's own delay
        assert headers["x-should-retry"] == "true"
        assert (headers["retry-after-ms"], headers["Retry-After"]) == ("1000", "1")
    else:
        assert headers.get("x-should-retry", "false") == "false"


def test_an_unknown_route_is_a_404_unknown_route(declared) -> None:
    code, headers, body = _render(declared["MISSING_AUTHENTICATION_TOKEN"], "MISSING_AUTHENTICATION_TOKEN")
    error = _openai_error(body)
    assert (code, error["type"], error["code"]) == (404, "not_found_error", "unknown_route")
    assert "Unknown route" in error["message"] and headers["x-should-retry"] == "false"
    assert headers["x-amzn-RequestId"] == "c0ffee-1"


def test_a_throttle_is_a_429_the_sdks_retry_after_a_second(declared) -> None:
    code, headers, body = _render(declared["THROTTLED"], "THROTTLED")
    assert (code, _openai_error(body)["code"]) == (429, "rate_limit_exceeded")
    assert (headers["Retry-After"], headers["retry-after-ms"], headers["x-should-retry"]) == ("1", "1000", "true")


def test_an_oversized_body_is_a_413_not_retried(declared) -> None:
    code, headers, body = _render(declared["REQUEST_TOO_LARGE"], "REQUEST_TOO_LARGE")
    error = _openai_error(body)
    assert (code, error["type"], error["code"]) == (413, "invalid_request_error", "payload_too_large")
    assert "10 MB" in error["message"] and headers["x-should-retry"] == "false"


def test_default_5xx_keeps_the_types_status_and_names_the_type_message_and_request(declared) -> None:
    assert declared["DEFAULT_5XX"].status is None  # a function error stays API Gateway's 502, a refusal its 500
    code, _, body = _render(declared["DEFAULT_5XX"], "DEFAULT_5XX", status=502)
    error = _openai_error(body)
    assert (code, error["code"]) == (502, "gateway_error")
    assert "DEFAULT_5XX: Internal server error" in error["message"] and "c0ffee-1" in error["message"]


def test_default_4xx_carries_the_message_as_a_json_string_and_the_type_as_the_code(declared) -> None:
    assert declared["DEFAULT_4XX"].status is None
    code, _, body = _render(declared["DEFAULT_4XX"], "ACCESS_DENIED", status=403,
                            message='User is not authorized: "quoted" \\ text')
    error = _openai_error(body)
    assert (code, error["code"]) == (403, "ACCESS_DENIED")
    assert error["message"] == 'User is not authorized: "quoted" \\ text'  # $context.error.messageString escapes


def test_message_string_is_json_escaped() -> None:
    variables = context_variables(_context(), "DEFAULT_4XX", 'a "b"\n')
    assert json.loads(variables["error.messageString"]) == 'a "b"\n'


# -- the fallbacks, as API Gateway applies them ---------------------------------------------------------------

class _NoEnvironments:
    max_size = 1


@pytest.fixture
def make_gateway() -> Iterator:
    made: list[ApiGateway] = []

    def make(responses: dict[str, GatewayResponse]) -> ApiGateway:
        route = ApiRoute(function="Fn", event="Ev", path="/v1/x", method="GET", stage="prod", api="Api")
        made.append(ApiGateway([route], _NoEnvironments(), port=0,  # type: ignore[arg-type]
                               gateway_responses={"Api": responses}))
        return made[-1]

    yield make
    for gateway in made:
        gateway.server.server_close()


def _answer(gateway: ApiGateway, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = gateway.handle(method, path, [], None, "127.0.0.1", "127.0.0.1")
    return status, dict(headers), body


def test_an_undeclared_type_takes_the_default_of_its_class_then_api_gateways_own(make_gateway) -> None:
    default_4xx = GatewayResponse(status=None, headers={"X-Default": "4xx"},
                                  templates={"application/json": '{"t": "$context.error.responseType", '
                                                                 '"m": $context.error.messageString}'})
    status, headers, body = _answer(make_gateway({"DEFAULT_4XX": default_4xx}), "GET", "/v1/nope")
    assert (status, headers["X-Default"]) == (403, "4xx")  # the type's own status: DEFAULT_4XX sets none
    assert json.loads(body) == {"t": "MISSING_AUTHENTICATION_TOKEN", "m": "Missing Authentication Token"}

    status, headers, body = _answer(make_gateway({}), "GET", "/v1/nope")  # nothing declared: as deployed
    assert (status, json.loads(body)) == (403, {"message": "Missing Authentication Token"})
    assert headers["Content-Type"] == "application/json" and headers["x-amzn-RequestId"]


def test_a_declared_default_status_applies_to_the_types_it_covers(make_gateway) -> None:
    default_4xx = GatewayResponse(status=400, templates={"application/json": "{}"})
    assert _answer(make_gateway({"DEFAULT_4XX": default_4xx}), "GET", "/v1/nope")[0] == 400


def test_a_method_the_path_lacks_and_the_stage_prefix_answer_as_api_gateway_does(make_gateway, declared) -> None:
    gateway = make_gateway(declared)
    for method, path in (("POST", "/v1/x"), ("GET", "/prod/v1/nope"), ("DELETE", "/v1/x/extra")):
        status, _, body = _answer(gateway, method, path)
        assert (status, json.loads(body)["error"]["code"]) == (404, "unknown_route"), (method, path)


# -- OpenApiVersion: no stray `Stage` stage ----------------------------------------------------------------------

def test_the_transformed_template_deploys_the_prod_stage_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM with OpenApiVersion 2 (its default) gives the API's Deployment `StageName: Stage`, a second stage."""
    pytest.importorskip("samtranslator")
    from samtranslator.translator.transform import transform  # type: ignore[import-untyped]
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    document = yaml_parse((ROOT / "template.yaml").read_text())
    assert document["Resources"]["GatewayApi"]["Properties"]["OpenApiVersion"] == "3.0.1"
    for resource in document["Resources"].values():  # `sam validate` stands in S3 URIs for local code paths
        for key in ("CodeUri", "ContentUri"):
            if isinstance((resource.get("Properties") or {}).get(key), str):
                resource["Properties"][key] = "s3://bucket/key"

    class NoPolicies:
        def load(self) -> dict:
            return {}

    resources = transform(document, {}, NoPolicies())["Resources"]
    stages = [r["Properties"]["StageName"] for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage"]
    deployments = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGateway::Deployment"]
    assert stages == ["prod"] and deployments and all("StageName" not in d for d in deployments)
    body = resources["GatewayApi"]["Properties"]["Body"]
    assert body["openapi"] == "3.0.1"
    assert set(body["x-amazon-apigateway-gateway-responses"]) == set(template.load(ROOT).gateway_responses[
        "GatewayApi"])
