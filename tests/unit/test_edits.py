"""Edits and variations (`POST /v1/images/edits`, `/variations`): multipart in, the same task and answers as
generations out; every refusal before any upload or upstream call."""

import base64
import io
import json

import boto3
import os
import pytest
import requests
from PIL import Image

import poll_handler
import submit_handler
from tests.apiclient import call
from tests.conftest import API_KEY, s3_objects
from tests.simulators.loopback import half_mask_png, png_bytes

EDITS, VARIATIONS = "/v1/images/edits", "/v1/images/variations"


def png(width=64, height=64, colour=(200, 40, 90, 255), mode="RGBA") -> bytes:
    return png_bytes(width, height, colour if mode == "RGBA" else colour[:3])


def half_mask(width=64, height=64) -> bytes:
    return half_mask_png(width, height)


def multipart(fields: dict, files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    """The body and Content-Type an SDK would send (requests builds the same multipart/form-data)."""
    parts = [(name, (None, value)) for name, value in fields.items()] + list(files)  # multipart even without files
    prepared = requests.Request("POST", "http://x", files=parts).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def send(path, fields, files, *, query=None, headers=None, key=API_KEY):
    body, content_type = multipart(fields, files)
    return call(submit_handler.lambda_handler, "POST", path, key=key, body=body, query=query,
                headers={"Content-Type": content_type, **(headers or {})})


def image_of(entry) -> Image.Image:
    return Image.open(io.BytesIO(requests.get(entry["url"], timeout=10).content if "b64_json" not in entry
                                 else base64.b64decode(entry["b64_json"])))


def stored(key) -> Image.Image:
    body = boto3.client("s3").get_object(Bucket=os.environ["IMAGE_BUCKET"], Key=key)["Body"].read()
    return Image.open(io.BytesIO(body))


def test_an_edit_with_a_mask_keeps_the_opaque_half_and_edits_the_rest(inline_bus):
    source = png(64, 64, (200, 40, 90, 255))
    reply = send(EDITS, {"model": "gpt-image-1", "prompt": "a lighthouse", "size": "1024x1024",
                         "response_format": "b64_json"},
                 [("image", ("in.png", source, "image/png")), ("mask", ("mask.png", half_mask(), "image/png"))])
    assert reply.status == 200, reply.body
    [entry] = reply.json()["data"]
    edited = Image.open(io.BytesIO(base64.b64decode(entry["b64_json"]))).convert("RGB")
    assert edited.size == (1024, 1024)
    assert edited.getpixel((100, 500)) == (200, 40, 90)  # kept: the input's colour, exactly
    assert edited.getpixel((900, 500)) != (200, 40, 90)  # edited
    inputs = [k for k in s3_objects("inputs/")]
    assert len(inputs) == 2 and inputs[0].endswith("/image-0.png") and inputs[1].endswith("/mask.png")


def test_several_images_go_as_one_edit(inline_bus):
    files = [("image[]", (f"in{i}.png", png(32, 32, (30 * i, 90, 200, 255)), "image/png")) for i in range(3)]
    reply = send(EDITS, {"model": "gpt-image-1", "prompt": "a collage", "n": "2"}, files)
    assert reply.status == 200, reply.body
    assert len(reply.json()["data"]) == 2
    assert len(s3_objects("inputs/")) == 3 and len(s3_objects("images/")) == 2


def test_a_variation_is_derived_from_its_image(inline_bus):
    red = png(256, 256, (220, 20, 20, 255))
    reply = send(VARIATIONS, {"n": "2", "size": "256x256"}, [("image", ("red.png", red, "image/png"))])
    assert reply.status == 200, reply.body
    images = [stored(k).convert("RGB") for k in s3_objects("images/")]
    assert len(images) == 2 and all(image.size == (256, 256) for image in images)
    for image in images:
        r, g, b = image.resize((1, 1)).getpixel((0, 0))
        assert r > g and r > b  # a variation of a red image is reddish


def test_an_async_edit_is_a_task_like_any_other(inline_bus):
    reply = send(EDITS, {"model": "gpt-image-1", "prompt": "a fox"}, [("image", ("in.png", png(), "image/png"))],
                 query={"async": "true"})
    assert reply.status == 202, reply.body
    inline_bus.drain()
    task = call(poll_handler.lambda_handler, "GET", f"/v1/images/tasks/{reply.json()['id']}", key=API_KEY).json()
    assert task["status"] == "succeeded" and len(task["data"]) == 1


def test_an_idempotent_edit_is_made_once(inline_bus):
    files = [("image", ("in.png", png(), "image/png"))]
    first = send(EDITS, {"model": "gpt-image-1", "prompt": "a fox"}, files, query={"async": "true"},
                 headers={"Idempotency-Key": "edit-1"})
    again = send(EDITS, {"model": "gpt-image-1", "prompt": "a fox"}, files, query={"async": "true"},
                 headers={"Idempotency-Key": "edit-1"})
    assert first.json()["id"] == again.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    other = send(EDITS, {"model": "gpt-image-1", "prompt": "a fox"}, [("image", ("in.png", png(colour=(1, 2, 3, 255)),
                                                                               "image/png"))],
                 query={"async": "true"}, headers={"Idempotency-Key": "edit-1"})
    assert other.status == 422  # the same key with other files


GPT = {"model": "gpt-image-1", "prompt": "x"}
DALLE2 = {"model": "dall-e-2", "prompt": "x"}
IMAGE = ("image", ("in.png", png(), "image/png"))
REFUSED = [  # (path, fields, files, param, code)
    (EDITS, GPT, [], "image", "missing_required_parameter"),
    (EDITS, GPT, [("image", ("in.png", b"not an image at all", "image/png"))], "image", "invalid_image"),
    (EDITS, GPT, [("image", ("in.gif", b"GIF89a" + bytes(40), "image/gif"))], "image", "invalid_image"),
    (EDITS, GPT, [("image[]", (f"{i}.png", png(), "image/png")) for i in range(17)], "image", "invalid_value"),
    (EDITS, {"model": "gpt-image-1"}, [IMAGE], "prompt", "missing_required_parameter"),
    (EDITS, GPT, [IMAGE, ("mask", ("m.png", png(64, 64, mode="RGB"), "image/png"))], "mask", "invalid_image"),
    (EDITS, GPT, [IMAGE, ("mask", ("m.jpg", Image.new("RGB", (8, 8)).tobytes(), "image/jpeg"))], "mask",
     "invalid_image"),
    (EDITS, DALLE2, [IMAGE, ("mask", ("m.png", half_mask(32, 32), "image/png"))], "mask", "invalid_image"),
    (EDITS, DALLE2, [("image", ("wide.png", png(64, 32), "image/png"))], "image", "invalid_image"),
    (EDITS, DALLE2, [IMAGE, IMAGE], "image", "invalid_value"),
    (EDITS, {"model": "dall-e-3", "prompt": "x"}, [IMAGE], "model", "unsupported_operation"),
    (EDITS, {**GPT, "style": "vivid"}, [IMAGE], "style", "unknown_parameter"),
    (EDITS, {**GPT, "n": "eleven"}, [IMAGE], "n", "invalid_value"),
    (EDITS, {**GPT, "stream": "true"}, [IMAGE], "stream", None),
    (VARIATIONS, {"model": "gpt-image-1"}, [IMAGE], "model", "unsupported_operation"),
    (VARIATIONS, {"prompt": "x"}, [IMAGE], "prompt", "unknown_parameter"),
    (VARIATIONS, {}, [IMAGE, ("mask", ("m.png", half_mask(), "image/png"))], "mask", "unknown_parameter"),
]


@pytest.mark.parametrize("path, fields, files, param, code", REFUSED,
                         ids=[f"{p.rsplit('/', 1)[1]}-{param}-{i}" for i, (p, _, _, param, _) in enumerate(REFUSED)])
def test_a_bad_edit_is_a_400_naming_the_field_and_nothing_is_stored(inline_bus, providers_file, path, fields, files,
                                                                      param, code):
    from tests.simulators.openai_sim import OpenAISimulator

    with OpenAISimulator() as oai:  # every model on an upstream that would record any call
        providers_file({"providers": {"o": {"dialect": "openai", "base_url": oai.base_url, "api_key": oai.api_key}},
                        "models": {"*": [{"provider": "o"}]}})
        reply = send(path, fields, files)
        assert reply.status == 400, reply.body
        error = reply.json()["error"]
        assert error["param"] == param and (code is None or error["code"] == code), error
        assert oai.requests == []  # no upstream call
        assert inline_bus.published == [] and s3_objects("inputs/") == [] and s3_objects("images/") == []


def test_a_json_body_on_an_edit_route_is_a_400(inline_bus):
    reply = call(submit_handler.lambda_handler, "POST", EDITS, key=API_KEY, body={"prompt": "x", "image": "x"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "Content-Type"


def test_an_edit_routed_only_to_a_dialect_without_edits_is_refused_before_any_call(inline_bus, providers_file):
    providers_file({"providers": {"j": {"dialect": "jimeng", "base_url": "https://jimeng.example",
                                        "api_key": "sk-j"}}, "models": {"jimeng-4.0": [{"provider": "j"}]}})
    reply = send(EDITS, {"model": "jimeng-4.0", "prompt": "x"}, [IMAGE])
    assert reply.status == 400 and reply.json()["error"]["param"] == "model"


def test_a_multipart_body_may_reach_10_mb_and_no_more(inline_bus):
    big = png() + b"\0" * (11 * 1024 * 1024)
    reply = send(EDITS, GPT, [("image", ("big.png", big, "image/png"))])
    assert reply.status == 413
    json.loads(reply.body)


def test_an_edit_skips_a_route_that_cannot_edit_and_sends_the_stored_bytes(inline_bus, providers_file,
                                                                           loopback_fetch):
    from tests.simulators.jimeng_sim import JimengSimulator
    from tests.simulators.openai_sim import OpenAISimulator

    with JimengSimulator() as jimeng, OpenAISimulator() as oai:
        providers_file({"providers": {
            "j": {"dialect": "jimeng", "base_url": jimeng.base_url, "api_key": jimeng.api_key},
            "o": {"dialect": "openai", "base_url": oai.base_url, "api_key": oai.api_key}},
            "models": {"gpt-image-1": [{"provider": "j"}, {"provider": "o"}]}})
        source = png(48, 48)
        reply = send(EDITS, {"model": "gpt-image-1", "prompt": "a heron", "input_fidelity": "high"},
                     [("image", ("in.png", source, "image/png"))])
        assert reply.status == 200, reply.body
        assert jimeng.requests == [] and len(oai.edits) == 1
        form = oai.edits[0].body
        assert form.value("input_fidelity") == "high" and [f.data for f in form.files] == [source]


def test_an_async_relay_edit_is_submitted_as_a_task_and_checked_until_done(inline_bus, providers_file,
                                                                          loopback_fetch, checks_at_once):
    from tests.simulators.async_relay_sim import AsyncRelaySimulator, Behaviour

    with AsyncRelaySimulator(behaviour=Behaviour(checks_to_finish=2)) as relay:
        providers_file({"providers": {"r": {"dialect": "async-relay", "base_url": relay.base_url,
                                            "api_key": relay.api_key}}, "models": {"gpt-image-1": [{"provider": "r"}]}})
        source = png(40, 40)
        reply = send(EDITS, {"model": "gpt-image-1", "prompt": "a heron"}, [("image", ("in.png", source, "image/png"))])
        assert reply.status == 200, reply.body
        [edit] = relay.edits
        assert edit.query == {"async": "true"} and [f.data for f in edit.body.files] == [source]
        assert len(relay.checks) == 2
