"""Cold start: a handler's import loads none of the heavy packages, each event's code path loads only what it
uses, and SnapStart / provisioned concurrency get every path at init (imagegw.entry). Each check imports in a
fresh interpreter and reads `sys.modules`, so nothing here depends on timing (bench/test_cold_import.py times it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_PATH = os.pathsep.join(str(ROOT / p) for p in ("layers/imagegw", "functions/submit", "functions/poll",
                                                        "functions/fetch"))
HANDLERS = ("submit_handler", "poll_handler", "fetch_handler")
#: loaded by no handler's import: X-Ray (tracing off), the API resolver and the OpenAPI models, pydantic,
#: the HTTP client, YAML, Pillow, boto3, every code path's modules
NOT_AT_IMPORT = ("aws_xray_sdk", "aws_lambda_powertools.event_handler", "aws_lambda_powertools.utilities.data_classes",
                 "pydantic", "requests", "urllib3", "yaml", "PIL", "boto3", "imagegw.api", "imagegw.worker",
                 "imagegw.sweeper", "imagegw.webhooks", "imagegw.batches")
OPENAPI_MODELS = "aws_lambda_powertools.event_handler.openapi.models"


def loaded(code: str, **env: str) -> set[str]:
    """The top modules and packages of NOT_AT_IMPORT (and a few more) loaded after running `code`."""
    watched = (*NOT_AT_IMPORT, OPENAPI_MODELS)
    base = {k: v for k, v in os.environ.items()
            if k not in ("AWS_LAMBDA_INITIALIZATION_TYPE", "LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED")}
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, json, imagegw\n{code}\n"
                               f"assert imagegw.__file__.startswith({str(ROOT)!r}), imagegw.__file__\n"
                               f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))"],
        env={**base, "PYTHONPATH": IMPORT_PATH, "AWS_DEFAULT_REGION": "us-east-1", **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", HANDLERS)
def test_a_handler_import_loads_no_code_path_and_no_heavy_package(module):
    assert loaded(f"import {module}") == set()
    assert loaded(f"import {module}", POWERTOOLS_TRACE_DISABLED="true") == set()


@pytest.mark.parametrize("module", HANDLERS)
def test_with_tracing_on_as_in_lambda_the_handler_is_traced(module):
    found = loaded(f"import {module}", LAMBDA_TASK_ROOT=str(ROOT))
    assert "aws_xray_sdk" in found  # the Tracer's X-Ray recorder, loaded and patching at init


@pytest.mark.parametrize("module", HANDLERS)
@pytest.mark.parametrize("initialization", ["snap-start", "provisioned-concurrency"])
def test_an_init_ahead_of_requests_preloads_every_code_path(module, initialization):
    found = loaded(f"import {module}\nassert all(p in sys.modules for p in {module}.CODE_PATHS)",
                   AWS_LAMBDA_INITIALIZATION_TYPE=initialization)
    assert {"imagegw.api", "pydantic"} <= found
    assert "PIL" not in found and OPENAPI_MODELS not in found


def test_an_on_demand_init_preloads_nothing():
    assert loaded("import submit_handler", AWS_LAMBDA_INITIALIZATION_TYPE="on-demand") == set()


def test_the_api_path_loads_neither_the_openapi_models_nor_yaml_nor_x_ray():
    found = loaded("import submit_handler, imagegw.api")
    assert {"imagegw.api", "pydantic", "aws_lambda_powertools.event_handler"} <= found
    assert not found & {OPENAPI_MODELS, "yaml", "aws_xray_sdk", "PIL"}


@pytest.mark.parametrize("path", ["imagegw.worker", "imagegw.sweeper", "imagegw.webhooks", "imagegw.batches.jobs"])
def test_an_event_path_loads_no_api_resolver(path):
    found = loaded(f"import {path}")
    assert not found & {"aws_lambda_powertools.event_handler", OPENAPI_MODELS, "yaml", "aws_xray_sdk", "PIL",
                        "imagegw.api"}


def test_the_openapi_models_load_with_the_first_documentation_request():
    from tests.apiclient import call

    import submit_handler
    from imagegw import api

    reply = call(submit_handler.lambda_handler, "GET", "/docs")
    assert reply.status == 200 and OPENAPI_MODELS in sys.modules
    assert api.openapi_info() is api.openapi_info()  # registered once
    assert sum(route.rule.pattern == "^/docs/*$" for route in api.app._static_routes) == 1


def test_a_yaml_configuration_still_loads_yaml():
    found = loaded("from imagegw import provider_config\n"
                   "print(provider_config.check_text('providers: {p: {dialect: opneai}}\\n"
                   "models: {m: [{provider: p}]}'))")
    assert "yaml" in found
    assert "yaml" not in loaded("from imagegw import provider_config\nprovider_config.check_text('{}')")
