"""The webhook signing secret the stack generates (template.yaml's WebhookSecret) and the reader of it.

Secrets Manager cannot prefix a generated string, so the generated secret is JSON, {"prefix": "whsec_",
"secret": <letters and digits>}; the reader (webhooks.signing_secret) turns it into whsec_<base64>. The value is
made here as CloudFormation makes it: the template's SecretStringTemplate with the template's GenerateStringKey
set to what Secrets Manager's generator (moto's get_random_password) returns for the template's settings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import boto3
import pytest

from imagegw import webhooks
from imagegw.errors import GatewayError
from local import template as local_template
from tests.conftest import ROOT


def raw_template() -> dict:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.loads((ROOT / "template.yaml").read_text(encoding="utf-8"))


def generated_value(secrets, spec: dict) -> str:
    """What Secrets Manager stores for a GenerateSecretString `spec` (its options, passed to the generator)."""
    options = {k: v for k, v in spec.items() if k not in ("SecretStringTemplate", "GenerateStringKey")}
    password = secrets.get_random_password(**options)["RandomPassword"]
    document = json.loads(spec["SecretStringTemplate"])
    document[spec["GenerateStringKey"]] = password
    return json.dumps(document)


def verify(signing_secret: str, msg_id: str, timestamp: int, body: str, signature: str) -> bool:
    """A receiver's check, per Standard Webhooks, from the whsec_ string alone."""
    key = base64.b64decode(signing_secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest())
    return hmac.compare_digest(signature, "v1," + expected.decode())


@pytest.fixture
def deployed(aws, monkeypatch):
    """The fetch function's settings when deployed: no WEBHOOK_SECRET, WEBHOOK_SECRET_ID as the template sets it."""
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    webhooks._secret_from_manager.cache_clear()
    yield boto3.client("secretsmanager")
    webhooks._secret_from_manager.cache_clear()


def test_the_stack_generates_the_secret_unless_one_is_named():
    raw = raw_template()
    assert raw["Parameters"]["WebhookSecretId"]["Default"] == ""
    assert raw["Conditions"]["CreateWebhookSecret"] == {"Fn::Equals": [{"Ref": "WebhookSecretId"}, ""]}
    secret = raw["Resources"]["WebhookSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret" and secret["Condition"] == "CreateWebhookSecret"
    assert raw["Outputs"]["WebhookSecretArn"] == {"Condition": "CreateWebhookSecret", "Value": {"Ref": "WebhookSecret"},
                                                  "Description": raw["Outputs"]["WebhookSecretArn"]["Description"]}
    # the fetch function (the one that signs) reads the generated secret, or the named one
    by_default = local_template.load(ROOT, stack_name="gw")
    assert by_default.functions["FetchFunction"].environment["WEBHOOK_SECRET_ID"] == "gw-WebhookSecret"
    named = local_template.load(ROOT, stack_name="gw",
                                parameter_overrides={"WebhookSecretId": "imagegw/webhook-secret"})
    assert named.functions["FetchFunction"].environment["WEBHOOK_SECRET_ID"] == "imagegw/webhook-secret"
    assert "WebhookSecret" not in named.environment.values()
    # named under imagegw/, where the functions' AWSSecretsManagerGetSecretValuePolicy lets them read
    name = local_template.Resolver(raw["Resources"], {}, {}, stack_name="gw", region="us-east-1",
                                   conditions={})(secret["Properties"]["Name"])
    assert name == "imagegw/gw/webhook-secret"
    policy = raw["Resources"]["FetchFunction"]["Properties"]["Policies"]
    arns = [p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]["Fn::Sub"] for p in policy
            if isinstance(p, dict) and "AWSSecretsManagerGetSecretValuePolicy" in p]
    assert arns == ["arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:imagegw/*"]


def test_the_generated_secret_is_whsec_base64_and_signs_verifiably(deployed, monkeypatch):
    spec = raw_template()["Resources"]["WebhookSecret"]["Properties"]["GenerateSecretString"]
    value = generated_value(deployed, spec)
    arn = deployed.create_secret(Name="imagegw/gw/webhook-secret", SecretString=value)["ARN"]
    monkeypatch.setenv("WEBHOOK_SECRET_ID", arn)  # !Ref of the secret: its ARN
    document = json.loads(value)
    signing = webhooks.signing_secret(value)
    assert signing == "whsec_" + document["secret"] and document["prefix"] == "whsec_"
    key = webhooks.secret_bytes()
    assert key == base64.b64decode(document["secret"], validate=True)  # strict base64: no character dropped
    assert len(key) == 36  # 48 base64 characters
    signature = webhooks.sign(key, "msg_1", 1614265330, '{"type":"image.task.succeeded"}')
    assert verify(signing, "msg_1", 1614265330, '{"type":"image.task.succeeded"}', signature)
    assert not verify(signing, "msg_1", 1614265331, '{"type":"image.task.succeeded"}', signature)


def test_two_stacks_get_different_secrets(deployed):
    spec = raw_template()["Resources"]["WebhookSecret"]["Properties"]["GenerateSecretString"]
    assert webhooks.signing_secret(generated_value(deployed, spec)) != \
        webhooks.signing_secret(generated_value(deployed, spec))


def test_an_existing_whsec_secret_still_works(deployed, monkeypatch):
    existing = "whsec_" + base64.b64encode(b"an operator's own secret").decode()
    deployed.create_secret(Name="imagegw/webhook-secret", SecretString=existing)
    monkeypatch.setenv("WEBHOOK_SECRET_ID", "imagegw/webhook-secret")
    assert webhooks.secret_bytes() == b"an operator's own secret"


@pytest.mark.parametrize("value", ['{"prefix": "whsec_"}', '{"secret": 42}', '{"secret": "ab',
                                   '{"prefix": 1, "secret": "QUJD"}'])
def test_a_malformed_json_secret_is_a_clear_error_that_shows_no_secret(value):
    with pytest.raises(GatewayError) as raised:
        webhooks.signing_secret(value)
    assert str(raised.value) == 'The webhook secret is JSON but not {"prefix": "whsec_", "secret": "<base64>"}.'


def test_a_json_secret_without_prefix_is_taken_as_whsec():
    assert webhooks.signing_secret(' {"secret": "QUJD"}\n') == "whsec_QUJD"
