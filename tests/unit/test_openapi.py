"""The OpenAPI document is generated from the code, served without a key, and can be switched off."""

import json

import pytest
from pydantic import ValidationError

import poll_handler
import submit_handler
from imagegw import bus, keys, safe_fetch, schemas, tasks, webhooks
from imagegw.errors import GenerationInProgress, UpstreamTimeout
from tests.apiclient import call
from tests.conftest import API_KEY
from tests.fakes import RecordingBus


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


# -- what each route declares -----------------------------------------------------------------------------

DECLARED = {
    ("post", "/v1/images/generations"): ({200, 202, 400, 401, 409, 413, 422, 429, 500, 502, 503, 504}, "images"),
    ("post", "/v1/images/edits"): ({200, 202, 400, 401, 409, 413, 422, 429, 500, 502, 503, 504}, "images"),
    ("post", "/v1/images/variations"): ({200, 202, 400, 401, 409, 413, 422, 429, 500, 502, 503, 504}, "images"),
    ("get", "/v1/images/tasks"): ({200, 400, 401, 500}, "tasks"),
    ("get", "/v1/images/tasks/{task_id}"): ({200, 400, 401, 404, 500}, "tasks"),
    ("post", "/v1/images/tasks/{task_id}/cancel"): ({200, 400, 401, 404, 409, 413, 500}, "tasks"),
    ("get", "/v1/images/tasks/{task_id}/images/{index}"): ({302, 400, 401, 404, 409, 500}, "tasks"),
    ("get", "/v1/models"): ({200, 401, 500, 503}, "models"),
}


def _document():
    reply = call(submit_handler.lambda_handler, "GET", "/openapi.json")
    assert reply.status == 200
    return reply.json()


def _operations(doc):
    return {(method, path): op for path, item in doc["paths"].items() for method, op in item.items()}


def _ref(content):
    return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]


def test_each_route_declares_what_it_answers_and_no_validation_422(aws):
    doc = _document()
    operations = _operations(doc)
    assert set(operations) == set(DECLARED)
    for key, op in operations.items():
        statuses, tag = DECLARED[key]
        assert {int(s) for s in op["responses"]} == statuses, key
        assert op["tags"] == [tag]
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert _ref(response["content"]) == "ErrorResponse", (key, status)
    # The one 422 is idempotency_key_reused; Powertools' "Validation Error" 422 and its schemas are gone.
    reused = operations[("post", "/v1/images/generations")]["responses"]["422"]
    assert set(reused["content"]["application/json"]["examples"]) == {"idempotency_key_reused"}
    assert not {"HTTPValidationError", "ValidationError"} & set(doc["components"]["schemas"])
    assert "Validation Error" not in json.dumps(doc)
    assert {t["name"] for t in doc["tags"]} == {"images", "tasks", "models"}
    swagger = call(submit_handler.lambda_handler, "GET", "/docs", query={"format": "json"})  # the Swagger page's copy
    # one 422 (idempotency_key_reused) for each route that takes an Idempotency-Key: generations, edits, variations
    assert swagger.status == 200 and swagger.body.count('"422"') == 3 and "Validation Error" not in swagger.body


def test_bodies_and_headers_the_document_promises(aws):
    responses = _operations(_document())[("post", "/v1/images/generations")]["responses"]
    assert _ref(responses["200"]["content"]) == "ImagesResponse" and _ref(responses["202"]["content"]) == "Task"
    assert "Location" in responses["202"]["headers"]
    assert {"x-should-retry", "retry-after-ms", "Retry-After"} <= set(responses["504"]["headers"])
    redirect = _operations(_document())[("get", "/v1/images/tasks/{task_id}/images/{index}")]["responses"]["302"]
    assert "content" not in redirect and "Location" in redirect["headers"]


def test_every_example_validates_against_its_schema(aws):
    doc = _document()
    seen = 0
    for key, op in _operations(doc).items():
        for status, response in op["responses"].items():
            for content in response.get("content", {}).values():
                model = getattr(schemas, _ref({"application/json": content}))
                assert content["examples"], (key, status)
                for name, example in content["examples"].items():
                    model.model_validate(example["value"])  # raises if the example drifted
                    seen += 1
    assert seen >= 20
    with pytest.raises(ValidationError):  # the models refuse what the API never sends
        schemas.Task.model_validate({**schemas.TASK_QUEUED, "status": "done"})


# -- real answers match the models (so the document cannot drift from views.py and errors.py) -------------

def _generate(body, **kwargs):
    return call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY, body=body, **kwargs)


def _valid(model, reply, status):
    assert reply.status == status, reply.body
    return model.model_validate(reply.json())


def test_real_answers_validate_against_the_documented_models(inline_bus, monkeypatch):
    # The webhook's host resolves to a public address; nothing connects to it (its task is cancelled).
    monkeypatch.setattr(safe_fetch, "default_resolver", lambda host, port: ["93.184.216.34"])
    webhooks.forget_checked_targets()
    body = {"model": "gpt-image-1", "prompt": "a lighthouse", "size": "1024x1024"}
    _valid(schemas.ImagesResponse, _generate(body), 200)
    assert _valid(schemas.ImagesResponse, _generate({**body, "response_format": "b64_json"}), 200).data[0].b64_json
    with bus.use(RecordingBus()):  # nobody picks this task up: it is still live when cancelled below
        accepted = _generate({**body, "webhook": "https://hooks.example/cb"}, query={"async": "true"},
                             headers={"Idempotency-Key": "k1"})
    assert accepted.status == 202
    queued = schemas.Task.model_validate(accepted.json())
    assert queued.webhook is not None and queued.webhook.status == "waiting"
    reused = _generate({**body, "prompt": "another"}, query={"async": "true"}, headers={"Idempotency-Key": "k1"})
    assert _valid(schemas.ErrorResponse, reused, 422).error.code == "idempotency_key_reused"
    cancelled = call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{queued.id}/cancel", key=API_KEY)
    assert _valid(schemas.Task, cancelled, 200).status == "cancelled"
    done = _generate(body, query={"async": "true"})
    inline_bus.drain()
    task = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{done.json()['id']}", key=API_KEY)
    assert _valid(schemas.Task, task, 200).data
    failed = tasks.create(keys.owner_of_hash(keys.key_hash(API_KEY)), "gpt-image-1", {"prompt": "x"})
    tasks.fail_unclaimed(failed.id, UpstreamTimeout("The provider did not answer in time.").task_error())
    failed_reply = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{failed.id}", key=API_KEY)
    assert _valid(schemas.Task, failed_reply, 200).error.code == "upstream_timeout"
    listed = call(poll_handler.lambda_handler, "GET", "/v1/images/tasks", key=API_KEY, query={"limit": "2"})
    assert _valid(schemas.TaskList, listed, 200).has_more
    models = call(submit_handler.lambda_handler, "GET", "/v1/models", key=API_KEY)
    assert _valid(schemas.ModelList, models, 200).data
    for reply, status in ((_generate({**body, "n": 0}), 400),
                          (call(submit_handler.lambda_handler, "GET", "/v1/models", key="sk-no"), 401),
                          (call(poll_handler.lambda_handler, "GET", "/v1/images/tasks/imgtask_none", key=API_KEY), 404),
                          (call(poll_handler.lambda_handler, "POST", f"/v1/images/tasks/{queued.id}/cancel",
                                key=API_KEY), 409),
                          (_generate({**body, "prompt": "x" * 70_000}), 413)):
        _valid(schemas.ErrorResponse, reply, status)
    in_progress = GenerationInProgress("imgtask_x")
    schemas.ErrorResponse.model_validate(in_progress.body())


def test_the_file_routes_describe_their_multipart_bodies():
    paths = _document()["paths"]
    for path, required in (("/v1/images/edits", ["image", "prompt"]), ("/v1/images/variations", ["image"])):
        schema = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert schema["required"] == required and schema["properties"]["image"]["format"] == "binary"
