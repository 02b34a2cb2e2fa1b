"""The openai and async-relay simulators take image edits and variations as multipart/form-data, as OpenAI does.

Driven with `requests` directly: each rule accepted or refused as the real service would, and the recorded Form
holds exactly the bytes sent.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import pytest
import requests
from PIL import Image

from tests.simulators.async_relay_sim import AsyncRelaySimulator
from tests.simulators.async_relay_sim import Behaviour as RelayBehaviour
from tests.simulators.loopback import Form, FormFile, parse_form, png_bytes, png_header
from tests.simulators.openai_sim import Behaviour, OpenAISimulator

RGBA = (200, 40, 90, 255)
SQUARE = png_bytes(64, 64, RGBA)  # a dall-e-2 edit without a mask needs an alpha channel
MASK = png_bytes(64, 64, (0, 0, 0, 0))
MB = 1024 * 1024


def encoded(fmt: str, size: tuple[int, int] = (48, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 60)).save(out, fmt)
    return out.getvalue()


def padded_png(total: int, size: int = 64) -> bytes:
    """A valid square RGBA PNG of `total` bytes (a private ancillary chunk pads it)."""
    base = png_bytes(size, size, RGBA)
    pad = total - len(base) - 12
    chunk = struct.pack(">I", pad) + b"prVt" + bytes(pad) + struct.pack(">I", zlib.crc32(b"prVt" + bytes(pad)))
    return base[:33] + chunk + base[33:]


@pytest.fixture
def sim():
    with OpenAISimulator() as s:
        yield s


def post(sim, path: str, files, data=None, key: str | None = None, **kw) -> requests.Response:
    return requests.post(f"{sim.base_url}{path}", files=files, data=data or {}, timeout=10,
                         headers={"Authorization": f"Bearer {key or sim.api_key}"}, **kw)


def edit(sim, files, **data) -> requests.Response:
    return post(sim, "/v1/images/edits", files, data)


def vary(sim, files, **data) -> requests.Response:
    return post(sim, "/v1/images/variations", files, data)


def err(reply: requests.Response) -> tuple[int, str, str | None]:
    error = reply.json()["error"]
    return reply.status_code, error["code"], error["param"]


# -- the recorded form ------------------------------------------------------------------------------------------

def test_the_recorded_form_holds_the_exact_bytes_and_fields(sim):
    first = png_bytes(64, 64) + b"\r\n--not-a-boundary\r\n\n\r" + os.urandom(4096)  # trailing bytes survive too
    second = encoded("JPEG")
    reply = edit(sim, [("image[]", ("a.png", first, "image/png")), ("image[]", ("b.jpg", second, "image/jpeg")),
                       ("mask", ("m.png", MASK, "image/png"))],
                 model="gpt-image-1", prompt="a heron\r\nat dawn, naïve", n="2", quality="high")
    assert reply.status_code == 200, reply.text
    (request,) = sim.edits
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.body == Form(
        fields={"model": ["gpt-image-1"], "prompt": ["a heron\r\nat dawn, naïve"], "n": ["2"], "quality": ["high"]},
        files=[FormFile("image[]", "a.png", "image/png", first), FormFile("image[]", "b.jpg", "image/jpeg", second),
               FormFile("mask", "m.png", "image/png", MASK)])
    assert request.body.value("n") == "2" and request.body.files_named("mask")[0].data == MASK
    assert request.body.as_json()["files"][0] == {"field": "image[]", "filename": "a.png",
                                                  "content_type": "image/png", "size": len(first)}
    assert sim.generations == [] and sim.variations == []


def test_json_bodies_are_kept_as_they_are(sim):
    reply = requests.post(f"{sim.base_url}/v1/images/generations", json={"model": "dall-e-2", "prompt": "a fox"},
                          headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=10)
    assert reply.status_code == 200
    assert sim.generations[0].body == {"model": "dall-e-2", "prompt": "a fox"}


def test_a_malformed_multipart_body_is_recorded_as_text_and_refused(sim):
    raw = b"--xyz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na fox\r\n"  # no closing boundary
    reply = requests.post(f"{sim.base_url}/v1/images/edits", data=raw, timeout=10,
                          headers={"Authorization": f"Bearer {sim.api_key}",
                                   "Content-Type": "multipart/form-data; boundary=xyz"})
    assert reply.status_code == 400 and "parse multipart" in reply.json()["error"]["message"]
    assert sim.edits[0].body == raw.decode()


@pytest.mark.parametrize("content_type, raw", [
    ("multipart/form-data", b"--a\r\n\r\nx\r\n--a--\r\n"),  # no boundary parameter
    ("multipart/form-data; boundary=a", b"--a\r\nContent-Type: text/plain\r\n\r\nx\r\n--a--\r\n"),  # no name
    ("multipart/form-data; boundary=a", b"just text"),
])
def test_parse_form_refuses_malformed_bodies(content_type, raw):
    assert parse_form(content_type, raw) is None


def test_a_json_edit_is_refused(sim):
    reply = requests.post(f"{sim.base_url}/v1/images/edits", json={"prompt": "a fox", "image": "x"}, timeout=10,
                          headers={"Authorization": f"Bearer {sim.api_key}"})
    assert reply.status_code == 400 and "multipart/form-data" in reply.json()["error"]["message"]


# -- auth, scripted failures, unknown fields ---------------------------------------------------------------------

def test_edits_check_the_key_and_go_through_scripted_failures():
    with OpenAISimulator(behaviour=Behaviour(failures=[429], retry_after="2")) as sim:
        files = {"image": ("a.png", SQUARE, "image/png")}
        assert post(sim, "/v1/images/edits", files, {"prompt": "x"}, key="sk-wrong").status_code == 401
        busy = edit(sim, files, prompt="x")
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "2"
        assert edit(sim, files, prompt="x").status_code == 200
        assert len(sim.edits) == 3


@pytest.mark.parametrize("path, data", [
    ("/v1/images/edits", {"prompt": "x", "style": "vivid"}),
    ("/v1/images/edits", {"prompt": "x", "moderation": "low"}),
    ("/v1/images/variations", {"prompt": "x"}),
    ("/v1/images/variations", {"quality": "standard"}),
])
def test_unknown_fields_are_refused(sim, path, data):
    reply = post(sim, path, {"image": ("a.png", SQUARE, "image/png")}, data)
    assert err(reply)[:2] == (400, "unknown_parameter")


def test_an_unknown_file_field_and_an_image_sent_as_text_are_refused(sim):
    assert err(edit(sim, {"image": ("a.png", SQUARE, "image/png"), "picture": ("b.png", SQUARE, "image/png")},
                    prompt="x")) == (400, "unknown_parameter", "picture")
    assert err(edit(sim, {"mask": ("m.png", MASK, "image/png")}, prompt="x", image="a.png")) == (
        400, "invalid_type", "image")
    assert err(vary(sim, {"image[]": ("a.png", SQUARE, "image/png")}))[:2] == (400, "unknown_parameter")


# -- dall-e-2 edits ---------------------------------------------------------------------------------------------

def test_dalle2_edit_is_the_default_model_and_answers_urls_at_the_size(sim):
    reply = edit(sim, {"image": ("a.png", SQUARE, "image/png")}, prompt="add a hat", n="2", size="512x512")
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert len(data) == 2 and all(set(item) == {"url"} for item in data)
    image = requests.get(data[0]["url"], timeout=10)
    assert image.headers["Content-Type"] == "image/png" and png_header(image.content)[:2] == (512, 512)


def test_dalle2_edit_answers_b64_when_asked_and_with_a_mask(sim):
    rgb = png_bytes(64, 64)  # no alpha: fine when a mask is given
    reply = edit(sim, {"image": ("a.png", rgb, "image/png"), "mask": ("m.png", MASK, "image/png")},
                 prompt="x", model="dall-e-2", response_format="b64_json", size="256x256")
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["data"]
    assert png_header(base64.b64decode(item["b64_json"]))[:2] == (256, 256)


@pytest.mark.parametrize("files, data, expected", [
    ({"image": ("a.png", SQUARE, "image/png")}, {}, (400, "missing_required_parameter", "prompt")),
    ({"mask": ("m.png", MASK, "image/png")}, {"prompt": "x"}, (400, "missing_required_parameter", "image")),
    ([("image[]", ("a.png", SQUARE, "image/png")), ("image[]", ("b.png", SQUARE, "image/png"))], {"prompt": "x"},
     (400, "invalid_value", "image[]")),
    ({"image": ("a.jpg", encoded("JPEG", (64, 64)), "image/jpeg")}, {"prompt": "x"},
     (400, "invalid_image_format", "image")),
    ({"image": ("a.png", png_bytes(64, 32, RGBA), "image/png")}, {"prompt": "x"},
     (400, "invalid_image_format", "image")),
    ({"image": ("a.png", png_bytes(64, 64), "image/png")}, {"prompt": "x"}, (400, "invalid_image_format", "image")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x" * 1001}, (400, "string_above_max_length", "prompt")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "size": "1536x1024"}, (400, "invalid_size", "size")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "size": "auto"}, (400, "invalid_size", "size")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "n": "11"}, (400, "invalid_value", "n")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "n": "two"}, (400, "invalid_type", "n")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "response_format": "png"},
     (400, "invalid_value", "response_format")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "background": "transparent"},
     (400, "invalid_value", "background")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "quality": "high"}, (400, "invalid_value", "quality")),
    ({"image": ("a.png", SQUARE, "image/png"), "mask": ("m.png", png_bytes(32, 32, (0, 0, 0, 0)), "image/png")},
     {"prompt": "x"}, (400, "invalid_value", "mask")),
    ({"image": ("a.png", SQUARE, "image/png"), "mask": ("m.jpg", encoded("JPEG", (64, 64)), "image/jpeg")},
     {"prompt": "x"}, (400, "invalid_mask_image_format", "mask")),
    ({"image": ("a.png", SQUARE, "image/png"), "mask": ("m.png", png_bytes(64, 64), "image/png")},
     {"prompt": "x"}, (400, "invalid_mask_image_format", "mask")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"prompt": "x", "model": "dall-e-3"}, (400, "invalid_value", "model")),
])
def test_dalle2_edit_rules(sim, files, data, expected):
    assert err(edit(sim, files, **data)) == expected


def test_dalle2_edit_takes_a_png_just_under_4_mb_and_refuses_4_mb(sim):
    assert edit(sim, {"image": ("a.png", padded_png(4 * MB - 1), "image/png")}, prompt="x").status_code == 200
    assert err(edit(sim, {"image": ("a.png", padded_png(4 * MB), "image/png")}, prompt="x")) == (
        400, "invalid_image_format", "image")


def test_a_policy_prompt_is_refused_after_the_form_checks(sim):
    assert err(edit(sim, {"image": ("a.png", SQUARE, "image/png")}, prompt="policy breaker"))[:2] == (
        400, "content_policy_violation")


# -- gpt-image edits --------------------------------------------------------------------------------------------

def test_gpt_image_edit_takes_png_jpeg_webp_and_answers_b64_at_the_first_images_size(sim):
    files = [("image[]", ("a.webp", encoded("WEBP"), "image/webp")),
             ("image[]", ("b.jpg", encoded("JPEG", (20, 20)), "image/jpeg")),
             ("image[]", ("c.png", png_bytes(10, 30), "image/png"))]
    reply = edit(sim, files, model="gpt-image-1", prompt="merge them", n="3", background="transparent",
                 input_fidelity="high", output_format="webp", output_compression="80", quality="auto", user="u1")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["data"]) == 3 and all(set(item) == {"b64_json"} for item in body["data"])
    assert png_header(base64.b64decode(body["data"][0]["b64_json"]))[:2] == (48, 32)  # auto: the first image's size
    assert body["usage"]["input_tokens_details"]["image_tokens"] > 0


def test_gpt_image_edit_takes_one_image_under_image_and_a_size(sim):
    reply = edit(sim, {"image": ("a.png", png_bytes(64, 64), "image/png")}, model="gpt-image-1.5", prompt="x",
                 size="1536x1024")
    assert reply.status_code == 200, reply.text
    assert png_header(base64.b64decode(reply.json()["data"][0]["b64_json"]))[:2] == (1536, 1024)


def test_gpt_image_edit_takes_16_images_and_refuses_17(sim):
    def images(count):
        return [("image[]", (f"{i}.png", png_bytes(8, 8), "image/png")) for i in range(count)]
    assert edit(sim, images(16), model="gpt-image-1", prompt="x").status_code == 200
    assert err(edit(sim, images(17), model="gpt-image-1", prompt="x"))[:2] == (400, "invalid_value")
    assert len(sim.edits[0].body.files) == 16


@pytest.mark.parametrize("files, data, expected", [
    ({"image": ("a.gif", encoded("GIF"), "image/gif")}, {}, (400, "invalid_value", "image")),
    ({"image": ("a.png", png_bytes(8, 8), "application/octet-stream")}, {}, (400, "invalid_value", "image")),
    ({"image": ("a.png", png_bytes(8, 8), None)}, {}, (400, "invalid_value", "image")),
    ({"image": ("a.png", b"not an image at all", "image/png")}, {}, (400, "invalid_image_file", "image")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"response_format": "url"},
     (400, "unknown_parameter", "response_format")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"size": "512x512"}, (400, "invalid_size", "size")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"quality": "standard"}, (400, "invalid_value", "quality")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"input_fidelity": "max"},
     (400, "invalid_value", "input_fidelity")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"output_compression": "101"},
     (400, "invalid_value", "output_compression")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"background": "transparent", "output_format": "jpeg"},
     (400, "invalid_value", "background")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"prompt": "x" * 32001},
     (400, "string_above_max_length", "prompt")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png"), "mask": ("m.png", png_bytes(8, 8), "image/png")}, {},
     (400, "invalid_mask_image_format", "mask")),
    ({"image": ("a.png", png_bytes(8, 8), "image/png"), "mask": ("m.png", png_bytes(9, 9, (0, 0, 0, 0)), "image/png")},
     {}, (400, "invalid_value", "mask")),
])
def test_gpt_image_edit_rules(sim, files, data, expected):
    assert err(edit(sim, files, **{"model": "gpt-image-1", "prompt": "x", **data})) == expected


def test_gpt_image_edit_takes_a_mask_of_the_first_images_size(sim):
    reply = edit(sim, {"image": ("a.jpg", encoded("JPEG", (40, 40)), "image/jpeg"),
                       "mask": ("m.png", png_bytes(40, 40, (0, 0, 0, 0)), "image/png")},
                 model="gpt-image-1", prompt="x")
    assert reply.status_code == 200, reply.text


def test_gpt_image_edit_size_limit_is_50_mb(sim):
    under = padded_png(50 * MB - 1)
    assert edit(sim, {"image": ("a.png", under, "image/png")}, model="gpt-image-1", prompt="x").status_code == 200
    assert sim.edits[0].body.files[0].data == under
    assert err(edit(sim, {"image": ("a.png", padded_png(50 * MB), "image/png")}, model="gpt-image-1",
                    prompt="x")) == (400, "image_too_large", "image")


# -- variations -------------------------------------------------------------------------------------------------

def test_a_variation_is_dalle2_with_one_square_png(sim):
    rgb = png_bytes(64, 64)  # variations need no alpha channel
    reply = vary(sim, {"image": ("a.png", rgb, "image/png")}, n="3", size="256x256", response_format="url",
                 user="u1")
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"]) == 3 and "/files/256x256/variation-0.png" in reply.json()["data"][0]["url"]
    (request,) = sim.variations
    assert request.body == Form({"n": ["3"], "size": ["256x256"], "response_format": ["url"], "user": ["u1"]},
                                [FormFile("image", "a.png", "image/png", rgb)])
    b64 = vary(sim, {"image": ("a.png", rgb, "image/png")}, model="dall-e-2", response_format="b64_json")
    assert png_header(base64.b64decode(b64.json()["data"][0]["b64_json"]))[:2] == (1024, 1024)


@pytest.mark.parametrize("files, data, expected", [
    ({"image": ("a.png", SQUARE, "image/png")}, {"model": "gpt-image-1"}, (400, "invalid_value", "model")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"model": "dall-e-3"}, (400, "invalid_value", "model")),
    ({}, {}, (400, "missing_required_parameter", "image")),
    ({"image": ("a.png", png_bytes(64, 48), "image/png")}, {}, (400, "invalid_image_format", "image")),
    ({"image": ("a.jpg", encoded("JPEG", (64, 64)), "image/jpeg")}, {}, (400, "invalid_image_format", "image")),
    ({"image": ("a.png", SQUARE, "image/png"), "mask": ("m.png", MASK, "image/png")}, {},
     (400, "unknown_parameter", "mask")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"size": "1792x1024"}, (400, "invalid_size", "size")),
    ({"image": ("a.png", SQUARE, "image/png")}, {"n": "0"}, (400, "invalid_value", "n")),
])
def test_variation_rules(sim, files, data, expected):
    if not files:  # requests sends form-urlencoded without files: force a multipart body with only fields
        files = {"user": (None, "u1")}
    assert err(vary(sim, files, **data)) == expected


def test_variation_refuses_4_mb(sim):
    assert err(vary(sim, {"image": ("a.png", padded_png(4 * MB), "image/png")})) == (
        400, "invalid_image_format", "image")


# -- the async relay --------------------------------------------------------------------------------------------

@pytest.fixture
def relay():
    with AsyncRelaySimulator(behaviour=RelayBehaviour(checks_to_finish=3)) as s:
        yield s


def relay_edit(relay, files, query="?async=true", **data):
    return requests.post(f"{relay.base_url}/v1/images/edits{query}", files=files, data=data, timeout=10,
                         headers={"Authorization": f"Bearer {relay.api_key}"})


def check(relay, task_id):
    return requests.get(f"{relay.base_url}/v1/images/tasks/{task_id}", timeout=10,
                        headers={"Authorization": f"Bearer {relay.api_key}"})


def test_relay_async_edit_answers_a_task_that_finishes_with_images(relay):
    image = encoded("PNG", (96, 64))
    reply = relay_edit(relay, [("image[]", ("a.png", image, "image/png")),
                               ("image[]", ("b.webp", encoded("WEBP"), "image/webp")),
                               ("mask", ("m.png", png_bytes(96, 64, (0, 0, 0, 0)), "image/png"))],
                       model="gpt-image-1", prompt="一只戴帽子的猫", n="2")
    assert reply.status_code == 200, reply.text
    task_id = reply.json()["task_id"]
    statuses = [check(relay, task_id).json()["data"] for _ in range(3)]
    assert [s["status"] for s in statuses] == ["QUEUED", "IN_PROGRESS", "SUCCESS"]
    assert statuses[-1]["action"] == "edit"
    data = statuses[-1]["data"]["data"]
    assert len(data) == 2 and "/files/96x64/" in data[0]["url"]  # size auto: the first image's
    (request,) = relay.edits
    assert request.query == {"async": "true"} and request.body.files[0] == FormFile("image[]", "a.png", "image/png",
                                                                                   image)
    assert request.body.fields == {"model": ["gpt-image-1"], "prompt": ["一只戴帽子的猫"], "n": ["2"]}
    assert relay.submits == [] and len(relay.checks) == 3


def test_relay_edit_without_async_answers_synchronously(relay):
    reply = relay_edit(relay, {"image": ("a.png", png_bytes(32, 32), "image/png")}, query="",
                       model="gpt-image-1", prompt="x", size="1024x1536")
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["data"]
    assert "/files/1024x1536/" in item["url"] and relay.tasks == {}


def test_relay_edit_id_shapes_and_b64_results():
    with AsyncRelaySimulator(behaviour=RelayBehaviour(id_shape="code_data", checks_to_finish=1,
                                                      result_format="b64_json", envelope=False)) as relay:
        reply = relay_edit(relay, {"image": ("a.png", png_bytes(32, 32), "image/png")}, model="m", prompt="x")
        task = check(relay, reply.json()["data"]).json()
        assert task["status"] == "SUCCESS" and task["action"] == "edit"
        assert png_header(base64.b64decode(task["data"]["data"][0]["b64_json"]))[:2] == (32, 32)


@pytest.mark.parametrize("files, data", [
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"prompt": "x"}),  # no model
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"model": "m"}),  # no prompt
    ({"mask": ("m.png", png_bytes(8, 8), "image/png")}, {"model": "m", "prompt": "x"}),  # no image
    ({"image": ("a.gif", encoded("GIF"), "image/gif")}, {"model": "m", "prompt": "x"}),
    ({"image": ("a.png", png_bytes(8, 8), "image/png"), "mask": ("m.jpg", encoded("JPEG"), "image/jpeg")},
     {"model": "m", "prompt": "x"}),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"model": "m", "prompt": "x", "n": "11"}),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"model": "m", "prompt": "x", "size": "big"}),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"model": "m", "prompt": "x", "style": "vivid"}),
    ({"image": ("a.png", png_bytes(8, 8), "image/png")}, {"model": "m", "prompt": "x", "image[]": "a"}),
])
def test_relay_edit_refusals(relay, files, data):
    reply = relay_edit(relay, files, **data)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request"
    assert relay.tasks == {}


def test_relay_edit_checks_the_key_and_refuses_json_and_malformed_bodies(relay):
    url = f"{relay.base_url}/v1/images/edits?async=true"
    assert requests.post(url, files={"image": ("a.png", png_bytes(8, 8), "image/png")}, timeout=10,
                         data={"model": "m", "prompt": "x"}).status_code == 401
    auth = {"Authorization": f"Bearer {relay.api_key}"}
    assert requests.post(url, json={"model": "m", "prompt": "x"}, headers=auth, timeout=10).status_code == 400
    bad = requests.post(url, data=b"--q\r\nnope", timeout=10,
                        headers={**auth, "Content-Type": "multipart/form-data; boundary=q"})
    assert bad.status_code == 400 and relay.edits[-1].body == "--q\r\nnope"
