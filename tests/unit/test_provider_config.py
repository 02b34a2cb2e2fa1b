"""The provider configuration: every problem at once with its JSON path, wherever a document enters.

`make run` refuses to start, `make providers` refuses to upload, `make check-providers` checks a file alone,
and a deployed function whose SSM document became invalid answers 503 `provider_config_invalid`.
"""

import json
import os
import subprocess
import sys

import boto3
import pytest

import poll_handler
import submit_handler
from imagegw import provider_config
from imagegw.dialects import REGISTRY
from scripts import check_providers, put_providers
from tests.apiclient import call
from tests.conftest import API_KEY, ROOT

PASTED_KEY = "sk-live-0123456789abcdefghijklmnopqrstuv"
GOOD = {"providers": {"relay-a": {"dialect": "openai", "base_url": "https://relay-a.example/v1",
                                  "api_key_env": "RELAY_A_KEY"},
                      "dev": {"dialect": "local"}},
        "models": {"dall-e-3": [{"provider": "relay-a"}, {"provider": "dev"}], "*": [{"provider": "dev"}]}}


def with_provider(**fields):
    return {"providers": {"relay-a": fields}, "models": {"dall-e-3": [{"provider": "relay-a"}]}}


BAD = [  # (document, a problem it must report, word for word)
    (with_provider(dialect="opneai", base_url="https://x.example", api_key_env="K"),
     "providers.relay-a.dialect: unknown dialect 'opneai' (did you mean 'openai'?); known: "
     + ", ".join(sorted(REGISTRY))),  # every registered dialect, whoever adds one
    (with_provider(dialect="openai", api_key_env="K"), "providers.relay-a.base_url: required by dialect openai"),
    (with_provider(dialect="jimeng", base_url="https://x.example"),
     "providers.relay-a: a key source is required by dialect jimeng: api_key_secret (deployed), api_key_env, or "
     "api_key (local only)"),
    (with_provider(dialect="openai", base_url="https://x.example", api_key_env="K", api_key_secret="imagegw/k"),
     "providers.relay-a: give one key source, not 2 (api_key_env, api_key_secret)"),
    (with_provider(dialect="openai", base_url="https://x.example", api_key_env=PASTED_KEY.replace("-", " ")),
     "providers.relay-a.api_key_env: must name an environment variable (letters, digits, _)"),
    (with_provider(dialect="openai", base_url="https://x.example", api_key_secret="my secret!"),
     "providers.relay-a.api_key_secret: must be a Secrets Manager secret name or ARN"),
    (with_provider(dialect="openai", base_url="https://x.example", api_key_env="K", timeout_s=0),
     "providers.relay-a.timeout_s: input should be greater than 0"),
    (with_provider(dialect="openai", base_url="https://x.example", api_key_env="K", timeout_s=3600),
     "providers.relay-a.timeout_s: input should be less than or equal to 900"),
    (with_provider(dialect="openai", base_url="https://x.example", api_key_env="K", timeout_s="fast"),
     "providers.relay-a.timeout_s: input should be a valid number, unable to parse string as a number"),
    (with_provider(dialect="openai", base_url="ftp://x.example", api_key_env="K"),
     "providers.relay-a.base_url: must be an http(s) URL with a host and no credentials"),
    (with_provider(dialect="openai", base_url="https://user:pw@x.example", api_key_env="K"),
     "providers.relay-a.base_url: must be an http(s) URL with a host and no credentials"),
    (with_provider(dialect="openai", base_url="https://x.example", api_keyenv="K"),
     "providers.relay-a.api_keyenv: unknown field (did you mean 'api_key_env'?)"),
    ({**GOOD, "models": {"dall-e-3": [{"provider": "relay-b"}]}},
     "models.dall-e-3.0.provider: no provider 'relay-b' (did you mean 'relay-a'?)"),
    ({**GOOD, "models": {"dall-e-3": [{"provider": "dev"}], "DALL-E-3": [{"provider": "dev"}]}},
     "models.DALL-E-3: differs from models.dall-e-3 only in case (clients would not know which they get)"),
    ({**GOOD, "models": {"gpt-*": [{"provider": "dev"}]}},
     "models.gpt-*: '*' serves every other name only as a whole key; patterns are not supported"),
    ({**GOOD, "models": {"dall-e-3": []}}, "models.dall-e-3: needs at least one route"),
    ({**GOOD, "models": {"dall-e-3": [{"provder": "dev"}]}},
     "models.dall-e-3.0.provder: unknown field (did you mean 'provider'?)"),
    ({"providers": GOOD["providers"], "model": GOOD["models"]}, "model: unknown field (did you mean 'models'?)"),
    ({"providers": GOOD["providers"], "models": {}}, "models: dictionary should have at least 1 item after "
                                                      "validation, not 0"),
    ([GOOD], "(document): input should be a valid dictionary or instance of GatewayConfig"),
    (with_provider(base_url="https://x.example", api_key_env="K"), "providers.relay-a.dialect: required"),
]


@pytest.mark.parametrize("document, problem", BAD, ids=[p.split(":")[0] + "-" + str(i) for i, (_, p) in enumerate(BAD)])
def test_each_problem_is_named_with_its_path(document, problem):
    assert problem in provider_config.problems(document)


def test_every_problem_is_reported_at_once_and_no_key_is_quoted():
    document = {"providers": {
        "a": {"dialect": "opneai", "base_url": "https://a.example", "api_key_env": "A"},
        "b": {"dialect": "openai", "api_key_secret": "imagegw/b", "timeout_s": -1},
        "c": {"dialect": "grok", "base_url": "https://c.example", "api_key_env": PASTED_KEY},
    }, "models": {"x": [{"provider": "a"}, {"provider": "nope"}], "X": [{"provider": "b"}], "y-*": []}}
    found = provider_config.problems(document)
    assert [p.split(":")[0] for p in found] == [
        "providers.b.timeout_s", "providers.a.dialect", "providers.b.base_url", "providers.c.api_key_env",
        "models.x.1.provider", "models.X", "models.y-*", "models.y-*"]
    assert not any(PASTED_KEY in p or "0123456789abcdef" in p for p in found)


def test_a_valid_document_has_no_problems_and_the_shipped_ones_are_valid():
    assert provider_config.problems(GOOD) == []
    for path in (ROOT / "config").glob("*.json"):
        assert provider_config.check_file(path) == [], path


@pytest.mark.parametrize("text, problem", [("{not json: [", "(document): neither JSON nor YAML (line 1, column 13)"),
                                           ("just some words", "(document): input should be a valid dictionary"),
                                           ("", "(document): input should be a valid dictionary")])
def test_a_document_that_is_not_an_object_is_one_clear_problem(text, problem):
    assert provider_config.check_text(text)[0].startswith(problem)


# -- where the checks run --------------------------------------------------------------------------------------

def write(tmp_path, document, name="providers.json"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def bad_document():
    return {"providers": {"a": {"dialect": "nosuch", "base_url": "https://a.example", "api_key_env": "A"},
                          "b": {"dialect": "openai", "api_key_env": "B"}},
            "models": {"dall-e-3": [{"provider": "a"}, {"provider": "c"}]}}


def test_make_run_refuses_to_start_and_lists_every_problem(tmp_path):
    env = {**os.environ, "PROVIDERS_FILE": write(tmp_path, bad_document()), "PORT": "0", "AWS_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "local"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is invalid (3 problems)" in done.stderr
    for problem in ("providers.a.dialect: unknown dialect 'nosuch'", "providers.b.base_url: required by dialect "
                    "openai", "models.dall-e-3.1.provider: no provider 'c'"):
        assert problem in done.stderr
    assert "imagegw local stack ready" not in done.stdout


def test_check_providers_lists_the_problems_or_says_valid(tmp_path, capsys):
    assert check_providers.main([write(tmp_path, bad_document())]) == 1
    err = capsys.readouterr().err
    assert "3 problems" in err and "  - providers.a.dialect: unknown dialect 'nosuch'" in err
    assert check_providers.main([write(tmp_path, GOOD, "good.yaml")]) == 0
    assert "valid (2 providers, 2 models)" in capsys.readouterr().out


def test_make_providers_uploads_nothing_when_invalid(aws, tmp_path, capsys):
    ssm = boto3.client("ssm")
    assert put_providers.main([write(tmp_path, bad_document()), "/imagegw/providers-test"]) == 1
    assert "Nothing was uploaded." in capsys.readouterr().err
    assert ssm.describe_parameters()["Parameters"] == []
    assert put_providers.main([write(tmp_path, GOOD), "/imagegw/providers-test"]) == 0
    assert json.loads(ssm.get_parameter(Name="/imagegw/providers-test")["Parameter"]["Value"]) == GOOD


def with_pasted_key() -> str:
    document = bad_document()
    document["providers"]["a"]["api_key"] = PASTED_KEY  # a key in the document must never be echoed
    return json.dumps(document)


@pytest.mark.parametrize("text, named", [
    (with_pasted_key(), "providers.a.dialect: unknown dialect 'nosuch'"),
    ('{"providers": {"a": {"dialect": "openai", "api_key": "' + PASTED_KEY + '"}}, "models": {"m": [{"provider": "a"}]}}',
     "providers.a.base_url: required by dialect openai"),
    ("providers: [\n  - {dialect: openai, api_key: " + PASTED_KEY + "\n", "(document): neither JSON nor YAML"),
], ids=["unknown dialect", "openai without base_url", "neither JSON nor YAML"])
def test_a_deployed_function_whose_ssm_document_is_invalid_answers_503_and_says_so_once(
        aws, monkeypatch, caplog, capsys, text, named):
    name = "/imagegw/providers-broken"
    boto3.client("ssm").put_parameter(Name=name, Value=text, Type="String")
    monkeypatch.delenv("PROVIDERS_FILE")
    monkeypatch.setenv("PROVIDERS_PARAM", name)
    replies = [call(submit_handler.lambda_handler, "GET", "/v1/models", key=API_KEY),
               call(submit_handler.lambda_handler, "POST", "/v1/images/generations", key=API_KEY,
                    body={"model": "dall-e-3", "prompt": "a fox"}),
               call(poll_handler.lambda_handler, "GET", "/v1/models", key=API_KEY)]
    for reply in replies:
        assert reply.status == 503, reply.body
        error = reply.json()["error"]
        assert error["code"] == "provider_config_invalid" and error["type"] == "server_error"
        assert named in error["message"]
        assert PASTED_KEY not in reply.body
    logs = [json.dumps(vars(record), default=str) for record in caplog.records]  # message and extras
    assert sum("the provider configuration is invalid" in line for line in logs) == 1  # once, not per request
    assert not any(PASTED_KEY in line or "Traceback" in line for line in logs)
    assert capsys.readouterr().out.count('"ProviderConfigInvalid":[1.0]') == 1  # the metric, once
