"""Edits and variations through the official OpenAI Python SDK and the local stack.

The shipped configuration routes every model to the `local` dialect, which really edits: what the mask keeps
is the input's, what it opens is redrawn. The second part routes gpt-image-1 and dall-e-2 to the openai
simulator, which checks the multipart bodies as OpenAI's API does, and compares the files it received byte for
byte with what the SDK sent.
"""

import base64
import io
import json
import time

import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import start_stack
from tests.simulators.loopback import half_mask_png, png_bytes
from tests.simulators.openai_sim import OpenAISimulator


def client(stack):
    return OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=60)


def png(width=64, height=64, colour=(200, 40, 90, 255), mode="RGBA") -> bytes:
    return png_bytes(width, height, colour if mode == "RGBA" else colour[:3])


def half_mask(width=64, height=64) -> bytes:
    return half_mask_png(width, height)


def decoded(entry) -> Image.Image:
    raw = base64.b64decode(entry.b64_json) if entry.b64_json else requests.get(entry.url, timeout=10).content
    return Image.open(io.BytesIO(raw)).convert("RGB")


def test_sdk_edit_with_a_mask(stack):
    result = client(stack).images.edit(model="gpt-image-1", prompt="a lighthouse", size="1024x1024",
                                       image=("in.png", png(), "image/png"), mask=("mask.png", half_mask(), "image/png"))
    edited = decoded(result.data[0])
    assert edited.size == (1024, 1024)
    assert edited.getpixel((100, 500)) == (200, 40, 90) and edited.getpixel((900, 500)) != (200, 40, 90)


def test_sdk_edit_of_several_images(stack):
    images = [(f"in{i}.png", png(32, 32, (60 * i, 90, 200, 255)), "image/png") for i in range(3)]
    result = client(stack).images.edit(model="gpt-image-1", prompt="a collage", image=images, n=2)
    assert len(result.data) == 2 and all(decoded(entry).size == (32, 32) for entry in result.data)  # no size: the
    # first image's own


def test_sdk_create_variation(stack):
    result = client(stack).images.create_variation(image=("red.png", png(256, 256, (220, 20, 20, 255)),
                                                          "image/png"), n=2, size="256x256")
    assert len(result.data) == 2
    for entry in result.data:
        r, g, b = decoded(entry).resize((1, 1)).getpixel((0, 0))
        assert decoded(entry).size == (256, 256) and r > g and r > b


def test_async_edit_through_the_task_api(stack):
    auth = {"Authorization": "Bearer sk-local"}
    reply = requests.post(stack.base_url + "/images/edits?async=true", headers=auth, timeout=30,
                          files=[("model", (None, "gpt-image-1")), ("prompt", (None, "a fox")),
                                 ("image", ("in.png", png(), "image/png"))])
    assert reply.status_code == 202, reply.text
    for _ in range(100):
        task = requests.get(stack.url + reply.headers["Location"], headers=auth, timeout=10).json()
        if task["status"] != "in_progress" and task["status"] != "queued":
            break
        time.sleep(0.1)
    assert task["status"] == "succeeded" and len(task["data"]) == 1


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """gpt-image-1 and dall-e-2 routed to the openai simulator, which checks multipart bodies as OpenAI does."""
    with OpenAISimulator() as sim:
        providers = tmp_path_factory.mktemp("edits") / "providers.json"
        providers.write_text(json.dumps({
            "providers": {"oai": {"dialect": "openai", "base_url": sim.base_url, "api_key": sim.api_key}},
            "models": {"gpt-image-1": [{"provider": "oai"}], "dall-e-2": [{"provider": "oai"}]}}))
        running = start_stack(PROVIDERS_FILE=str(providers))
        try:
            yield running, sim
        finally:
            running.stop()


def wait_for_task(stack, location: str) -> dict:
    for _ in range(100):
        task = requests.get(stack.url + location, headers={"Authorization": "Bearer sk-local"}, timeout=10).json()
        if task["status"] not in ("queued", "in_progress"):
            return task
        time.sleep(0.1)
    return task


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("count", [1, 2])
def test_sdk_edits_reach_openai_as_the_same_bytes(simulated, mode, count):
    stack, sim = simulated
    images = [png(32, 32, (10 * i, 90, 200, 255)) for i in range(count)]
    mask = png(32, 32, (0, 0, 0, 0))
    before = len(sim.edits)
    extra = {"extra_query": {"async": "true"}} if mode == "async" else {}
    raw = client(stack).images.with_raw_response.edit(
        model="gpt-image-1", prompt="two herons", quality="high", input_fidelity="high",
        image=[(f"in{i}.png", data, "image/png") for i, data in enumerate(images)] if count > 1 else
        ("in0.png", images[0], "image/png"),
        mask=("mask.png", mask, "image/png"), **extra)
    if mode == "async":
        assert raw.status_code == 202 and wait_for_task(stack, raw.headers["Location"])["status"] == "succeeded"
    else:
        assert raw.status_code == 200 and len(raw.parse().data) == 1
    assert len(sim.edits) == before + 1, [(r.method, r.path) for r in sim.requests]
    form = sim.edits[-1].body
    assert form.fields["model"] == ["gpt-image-1"] and form.fields["prompt"] == ["two herons"]
    assert form.fields["quality"] == ["high"] and form.fields["input_fidelity"] == ["high"]
    field = "image[]" if count > 1 else "image"  # as the SDK sends a list, or one file
    assert [f.data for f in form.files if f.field == field] == images  # byte for byte, in order
    assert [f.data for f in form.files if f.field == "mask"] == [mask]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sdk_variation_reaches_openai_as_the_same_bytes(simulated, mode):
    stack, sim = simulated
    image = png(256, 256, (220, 20, 20, 255))
    before = len(sim.variations)
    extra = {"extra_query": {"async": "true"}} if mode == "async" else {}
    raw = client(stack).images.with_raw_response.create_variation(image=("red.png", image, "image/png"), n=2,
                                                                  size="256x256", **extra)
    if mode == "async":
        assert raw.status_code == 202 and len(wait_for_task(stack, raw.headers["Location"])["data"]) == 2
    else:
        assert raw.status_code == 200 and len(raw.parse().data) == 2
    [received] = sim.variations[before:]
    assert received.body.fields["model"] == ["dall-e-2"] and received.body.fields["n"] == ["2"]
    assert [f.data for f in received.body.files] == [image]
