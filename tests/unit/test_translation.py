"""Pure pieces: request parsing, capabilities, routing, and the openai/local dialects' translation."""

import io

import pytest
from PIL import Image

from imagegw.capabilities import validate_for_model
from imagegw.dialects import HttpReply, get_dialect
from imagegw.dialects.local import pixel_size, render
from imagegw.dialects.openai import OpenAIDialect
from imagegw.errors import BadRequest, NoProvider
from imagegw.request import parse_request
from imagegw.provider_config import load_config_text
from imagegw.routing import routes_for
from tests.conftest import NEWER_FIELDS

CONFIG = load_config_text("""
providers:
  a: {dialect: openai, base_url: "https://relay-a.example/v1/", api_key_env: RELAY_A_KEY}
  dev: {dialect: local}
models:
  dall-e-3: [{provider: a}, {provider: dev, model: local-dalle}]
""")


def test_enum_values_are_normalised_and_defaults_left_out():
    req = parse_request({"prompt": "p", "response_format": " B64_JSON ", "quality": "HD"})
    assert req.response_format == "b64_json" and req.quality == "hd"
    assert req.upstream_fields() == {"prompt": "p", "response_format": "b64_json", "quality": "hd"}


@pytest.mark.parametrize("raw, param", [(b"[1]", None), (b"", None), ({"prompt": ""}, "prompt"),
                                        ({"prompt": "p", "n": True}, "n"), ({"prompt": "p", "stream": True}, "stream"),
                                        ({"prompt": "p", "aspect_ratio": "wide"}, "aspect_ratio"),
                                        ({"prompt": "p", "webhook": "ftp://x"}, "webhook")])
def test_bad_requests_name_their_param(raw, param):
    with pytest.raises(BadRequest) as err:
        parse_request(raw)
    assert err.value.param == param and err.value.status == 400


def test_every_field_of_the_current_openai_reference_is_accepted():
    req = parse_request({"model": "gpt-image-1", "prompt": "p", "n": 2, "size": "1536x1024", "quality": "high",
                         "response_format": "b64_json", "style": "vivid", "user": "u", "background": "transparent",
                         "moderation": "low", "output_compression": 80, "output_format": "webp",
                         "partial_images": 0, "input_fidelity": " LOW ", "stream": False})
    assert (req.partial_images, req.input_fidelity, req.stream) == (0, "low", False)
    assert parse_request({"prompt": "p", **NEWER_FIELDS}).upstream_fields() == {"prompt": "p", **NEWER_FIELDS}


@pytest.mark.parametrize("field, value", [("partial_images", 4), ("partial_images", -1), ("partial_images", "2"),
                                          ("partial_images", True), ("partial_images", 1.0),
                                          ("input_fidelity", "medium"), ("input_fidelity", 1)])
def test_newer_fields_are_checked_like_the_others(field, value):
    with pytest.raises(BadRequest) as err:
        parse_request({"prompt": "p", field: value})
    assert (err.value.param, err.value.code) == (field, "invalid_value")


def test_stream_true_is_refused_pointing_at_the_task_api():
    with pytest.raises(BadRequest) as err:
        parse_request({"prompt": "p", "stream": True, "partial_images": 2})
    assert err.value.param == "stream" and err.value.status == 400
    for words in ("not supported", "?async=true", "Prefer: respond-async", "GET /v1/images/tasks/{id}", "progress"):
        assert words in err.value.message


def test_capabilities_per_model():
    validate_for_model(parse_request({"prompt": "p", "size": "1792x1024"}), "dall-e-3")
    validate_for_model(parse_request({"prompt": "p", "size": "16:9"}), "anything")
    for model, body in [("dall-e-3", {"size": "512x512"}), ("gpt-image-1", {"quality": "hd"}),
                        ("anything", {"size": "10x10"}), ("dall-e-3", {"prompt": "x" * 4001})]:
        with pytest.raises(BadRequest):
            validate_for_model(parse_request({"prompt": "p", **body}), model)


def test_routes_are_ordered_and_base_url_loses_v1(monkeypatch):
    monkeypatch.setenv("RELAY_A_KEY", "sk-a")
    first, second = routes_for("dall-e-3", CONFIG)
    assert (first.provider, first.upstream_model, first.api_key) == ("a", "dall-e-3", "sk-a")
    assert first.config.root_url == "https://relay-a.example"
    assert (second.dialect, second.upstream_model) == ("local", "local-dalle")
    with pytest.raises(BadRequest):
        routes_for("gpt-image-1", CONFIG)


def test_no_configuration_is_503(monkeypatch):
    monkeypatch.delenv("PROVIDERS_FILE", raising=False)
    monkeypatch.delenv("PROVIDERS_PARAM", raising=False)
    with pytest.raises(NoProvider) as err:
        routes_for("x")
    assert err.value.status == 503


def test_openai_translation_per_family(monkeypatch):
    monkeypatch.setenv("RELAY_A_KEY", "sk-a")
    route = routes_for("dall-e-3", CONFIG)[0]
    dialect = OpenAIDialect()
    calls = dialect.build_submit(parse_request({"model": "dall-e-3", "prompt": "p", "n": 3, "style": "natural",
                                                "background": "transparent"}), route)
    assert len(calls) == 3 and calls[0].url == "https://relay-a.example/v1/images/generations"
    assert calls[0].json == {"model": "dall-e-3", "prompt": "p", "style": "natural", "n": 1}  # background dropped
    assert calls[0].headers["Authorization"] == "Bearer sk-a" and "sk-a" not in repr(calls[0])

    gpt = type(route)(provider="a", dialect="openai", upstream_model="gpt-image-1", config=route.config)
    body = dialect.build_submit(parse_request({"prompt": "p", "response_format": "url", "style": "vivid",
                                               "output_format": "webp", "output_compression": 50}), gpt)[0].json
    assert body == {"model": "gpt-image-1", "prompt": "p", "output_format": "webp", "output_compression": 50}

    reply = HttpReply(200, {}, b'{"created": 1, "data": [{"url": "https://x/1.png", "revised_prompt": "r"}],'
                               b' "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}}')
    done = dialect.parse_submit(parse_request({"prompt": "p"}), [reply])
    assert done.images[0].url == "https://x/1.png" and done.images[0].revised_prompt == "r"
    assert done.usage == {"images": 1, "input_tokens": 3, "output_tokens": 5, "total_tokens": 8}


@pytest.mark.parametrize("model, expected", [
    ("dall-e-2", {"model": "dall-e-2", "prompt": "p", "n": 2}),
    ("dall-e-3", {"model": "dall-e-3", "prompt": "p", "n": 1}),
    ("gpt-image-1", {"model": "gpt-image-1", "prompt": "p", "n": 2, "moderation": "low"}),
    ("flux-dev", {"model": "flux-dev", "prompt": "p", "n": 2}),
])
def test_openai_sends_no_streaming_or_edit_field(monkeypatch, model, expected):
    monkeypatch.setenv("RELAY_A_KEY", "sk-a")
    route = routes_for("dall-e-3", CONFIG)[0]
    route = type(route)(provider="a", dialect="openai", upstream_model=model, config=route.config)
    calls = OpenAIDialect().build_submit(parse_request({"prompt": "p", "n": 2, "moderation": "low", **NEWER_FIELDS}),
                                         route)
    assert [call.json for call in calls] == [expected] * (2 if model == "dall-e-3" else 1)  # dall-e-3 fans out


def test_local_images_are_real_deterministic_and_sized():
    req = parse_request({"prompt": "p", "aspect_ratio": "16:9", "resolution": "1k"})
    assert pixel_size(req) == (1024, 576)
    a, b = render("p", 7, 0, (300, 200)), render("p", 7, 0, (300, 200))
    assert a == b and a != render("p", 8, 0, (300, 200))
    assert Image.open(io.BytesIO(a)).size == (300, 200)
    jpeg = render("p", 1, 0, (64, 64), "jpeg")
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert get_dialect("local").name == "local"


def test_nearest_ratio_and_size():
    from imagegw.capabilities import GROK, JIMENG, nearest_ratio, nearest_size

    assert nearest_ratio(1024, 1024, JIMENG.ratios) == "1:1"
    assert nearest_ratio(1792, 1024, JIMENG.ratios) == "16:9"
    assert nearest_ratio(1024, 1536, JIMENG.ratios) == "2:3"
    assert nearest_size(1024, 1024, GROK.sizes) == "960x960"
    assert nearest_size(1920, 1080, GROK.sizes) == "1280x720"
    assert nearest_size(1024, 1536, GROK.sizes) == "784x1168"


def test_jimeng_and_grok_capabilities():
    validate_for_model(parse_request({"prompt": "p", "size": "2:3"}), "jimeng-4.0")
    validate_for_model(parse_request({"prompt": "p", "size": "1024x1024"}), "jimeng-4.0")  # mapped later
    validate_for_model(parse_request({"prompt": "p", "size": "1024x1024", "resolution": "2k"}), "grok-3-image")
    for model, body, param in [("jimeng-4.0", {"size": "5:1"}, "size"), ("grok-3-image", {"resolution": "4k"},
                               "resolution"), ("grok-3-image", {"aspect_ratio": "5:4"}, "aspect_ratio"),
                               ("grok-3-image", {"quality": "hd"}, "quality")]:
        with pytest.raises(BadRequest) as err:
            validate_for_model(parse_request({"prompt": "p", **body}), model)
        assert err.value.param == param
