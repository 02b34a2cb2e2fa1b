"""The OpenAPI document is generated from the code, served without a key, and can be switched off."""

import submit_handler
from tests.apiclient import call


def test_openapi_document_describes_the_routes(aws):
    reply = call(submit_handler.lambda_handler, "GET", "/openapi.json")
    assert reply.status == 200
    doc = reply.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "imagegw"
    assert {"/v1/images/generations", "/v1/images/tasks/{task_id}", "/v1/models"} <= set(doc["paths"])
    body = doc["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"prompt", "size", "n", "aspect_ratio"} <= set(schema["properties"]) and schema["required"] == ["prompt"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_swagger_page_and_the_switch(aws, monkeypatch):
    page = call(submit_handler.lambda_handler, "GET", "/docs")
    assert page.status == 200 and "swagger" in page.body.lower()
    monkeypatch.setenv("API_DOCS", "false")
    assert call(submit_handler.lambda_handler, "GET", "/openapi.json").status == 404
    assert call(submit_handler.lambda_handler, "GET", "/docs").status == 404
