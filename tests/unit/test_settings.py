"""Settings: one typed reading of the environment, defaults in one place, and no other module reading it."""

import ast
from pathlib import Path

import pytest

from imagegw import settings
from imagegw.settings import Settings

LAYER = Path(__file__).resolve().parents[2] / "layers/imagegw/imagegw"


def test_defaults_apply_when_nothing_is_set():
    s = Settings.from_env({})
    assert (s.worker_lease_s, s.task_deadline_s, s.sync_wait_s, s.api_docs) == (900, 3600, 25.0, True)
    assert s.webhook_retry_delays_s == (0, 60, 120, 300, 600, 900, 1800, 1800)
    assert s.event_tenant == "events" and s.api_keys is None and not s.s3_is_local


def test_values_are_typed_and_empty_counts_as_unset():
    s = Settings.from_env({"MAX_IMAGE_PIXELS": "100", "SYNC_WAIT_S": "2.5", "API_DOCS": "false",
                           "WEBHOOK_RETRY_DELAYS_S": "0,2,2", "EVENT_TENANT": "  ", "AWS_ENDPOINT_URL": "http://x"})
    assert s.max_image_pixels == 100 and s.sync_wait_s == 2.5 and s.api_docs is False
    assert s.webhook_retry_delays_s == (0, 2, 2)
    assert s.event_tenant == "events" and s.s3_is_local


def test_an_empty_api_keys_means_no_key_not_the_keys_table():
    assert Settings.from_env({"API_KEYS": ""}).api_keys == ""


@pytest.mark.parametrize("name, value", [("WORKER_LEASE_S", "ten"), ("API_DOCS", "maybe"),
                                         ("SYNC_WAIT_S", "1s"), ("WEBHOOK_RETRY_DELAYS_S", "0,a")])
def test_a_malformed_value_names_its_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_current_follows_a_changed_environment(monkeypatch):
    monkeypatch.setenv("BATCH_CHECK_S", "7")
    assert settings.current().batch_check_s == 7
    monkeypatch.setenv("BATCH_CHECK_S", "8")
    assert settings.current().batch_check_s == 8


def test_no_other_module_of_the_layer_reads_the_environment():
    readers = []
    for path in LAYER.rglob("*.py"):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{path.relative_to(LAYER)}:{node.lineno}")
    assert readers == []
