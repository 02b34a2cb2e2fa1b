"""`make providers` (scripts/put_providers.py) and configs over SSM's 4 KB Standard tier.

moto stores any size on any tier, so `strict_tiers` gives SSM's limits back: a Standard put (the default when no
Tier is sent) over 4,096 bytes, or any put over 8,192, fails with SSM's ValidationException.
"""

from __future__ import annotations

import json

import boto3
import botocore.exceptions
import pytest

from imagegw import provider_config
from scripts import put_providers

PARAM = "/imagegw/providers"


@pytest.fixture
def strict_tiers(aws):
    def check(params, **_):
        size, tier = len(params["Value"].encode()), params.get("Tier", "Standard")
        limit = 4096 if tier == "Standard" else 8192
        if size > limit:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "ValidationException",
                           "Message": f"{tier} tier parameters support a maximum parameter value of {limit} "
                                      f"characters."}}, "PutParameter")

    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    events = boto3.DEFAULT_SESSION.events
    events.register("before-parameter-build.ssm.PutParameter", check, unique_id="strict-tiers")
    yield
    events.unregister("before-parameter-build.ssm.PutParameter", unique_id="strict-tiers")


def big_config(providers: int) -> dict:
    """A valid config (no literal key) of `providers` relays, each model routed over two of them."""
    names = [f"relay-{i:02d}" for i in range(providers)]
    return {"providers": {name: {"dialect": "openai", "base_url": f"https://{name}.example.com/v1",
                                 "api_key_secret": f"imagegw/{name}", "timeout_s": 120} for name in names},
            "models": {f"model-{i:02d}": [{"provider": names[i]}, {"provider": names[(i + 1) % providers]}]
                       for i in range(providers)}}


def write(tmp_path, document: dict) -> tuple[str, str]:
    text = json.dumps(document, indent=2)
    path = tmp_path / "providers.json"
    path.write_text(text)
    return str(path), text


def test_the_strict_stand_in_refuses_what_ssm_refuses(strict_tiers):
    """The check below can fail: a plain (Standard) put of 5 KB is refused, as it was before the fix."""
    with pytest.raises(botocore.exceptions.ClientError, match="4096"):
        boto3.client("ssm").put_parameter(Name=PARAM, Value="x" * 5000, Type="String", Overwrite=True)


def test_the_script_meets_the_stand_in_too(strict_tiers, tmp_path, monkeypatch):
    monkeypatch.setattr(put_providers, "TIER", "Standard")  # the upload as it was: Standard, SSM's default
    path, _ = write(tmp_path, big_config(24))
    with pytest.raises(botocore.exceptions.ClientError, match="Standard tier"):
        put_providers.main([path, PARAM])


def test_a_5_kb_config_is_uploaded_and_the_functions_read_it_back(strict_tiers, tmp_path, monkeypatch, capsys):
    document = big_config(24)
    path, text = write(tmp_path, document)
    assert 5000 <= len(text.encode()) <= 8192, len(text)
    assert put_providers.main([path, PARAM]) == 0
    out = capsys.readouterr().out
    assert f"-> SSM {PARAM} (Intelligent-Tiering, {len(text.encode())} bytes: Advanced tier): 24 providers" in out
    ssm = boto3.client("ssm")
    [described] = ssm.describe_parameters()["Parameters"]
    assert described["Tier"] == "Intelligent-Tiering"  # SSM makes it Advanced; moto keeps what was asked
    assert ssm.get_parameter(Name=PARAM)["Parameter"]["Value"] == text
    # what a deployed function does: PROVIDERS_PARAM, no PROVIDERS_FILE
    monkeypatch.delenv("PROVIDERS_FILE")
    monkeypatch.setenv("PROVIDERS_PARAM", PARAM)
    provider_config.forget()
    config = provider_config.current_config()
    assert sorted(config.providers) == sorted(document["providers"])
    assert config.providers["relay-23"].api_key_secret == "imagegw/relay-23"
    assert len(config.models) == 24


def test_a_small_config_stays_standard_and_an_advanced_parameter_can_shrink(strict_tiers, tmp_path, capsys):
    path, _ = write(tmp_path, big_config(24))
    assert put_providers.main([path, PARAM]) == 0
    path, text = write(tmp_path, big_config(2))
    assert len(text.encode()) < 4096
    assert put_providers.main([path, PARAM]) == 0  # Intelligent-Tiering: never the failing "Standard" downgrade
    assert "Advanced" not in capsys.readouterr().out.splitlines()[-1]
    assert boto3.client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == text


def test_over_8_kb_nothing_is_uploaded(strict_tiers, tmp_path, capsys):
    path, text = write(tmp_path, big_config(40))
    assert len(text.encode()) > 8192
    assert put_providers.main([path, PARAM]) == 1
    err = capsys.readouterr().err
    assert f"{len(text.encode())} bytes, over the 8192 an SSM parameter holds" in err
    assert "Nothing was uploaded." in err
    assert boto3.client("ssm").describe_parameters()["Parameters"] == []
