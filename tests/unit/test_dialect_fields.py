"""`Dialect.carries` is the one statement of which request fields a dialect sends upstream: for every dialect,
model family and operation, a field it declares changes what goes upstream, and a field it does not declare
changes nothing (it is dropped, never mangled)."""

import json

import pytest

from imagegw.dialects import EDIT, REGISTRY, Job, get_dialect
from imagegw.inputs import InputFile, Inputs
from imagegw.provider_config import ProviderConfig
from imagegw.request import ImageRequest
from imagegw.routing import Route
from tests.simulators.loopback import png_bytes

#: a value for every optional request field, unlike its default and valid for the request model
VALUES = {
    "n": 3, "size": "3:2", "quality": "hd", "style": "vivid", "response_format": "b64_json", "output_format": "jpeg",
    "output_compression": 50, "background": "transparent", "moderation": "low", "user": "u-1", "partial_images": 2,
    "input_fidelity": "high", "stream": False, "aspect_ratio": "16:9", "resolution": "2k", "seed": 7,
    "webhook": "https://hook.example/done",
}
#: one model of each family the dialects tell apart
MODELS = ["dall-e-2", "dall-e-3", "gpt-image-1", "flux-dev", "grok-2-image", "jimeng-4.0"]
INPUTS = Inputs(images=[InputFile("image", "in.png", "image/png", png_bytes(64, 64))])
CASES = [(name, model, operation) for name in REGISTRY for model in MODELS
         for operation in sorted(get_dialect(name).operations)]


def test_every_optional_request_field_has_a_value_here():
    assert set(VALUES) == set(ImageRequest.model_fields) - {"model", "prompt"}


def sent(name, model, operation, fields):
    """What goes upstream for a request with `fields` set: each distinct call (a fan-out repeats one)."""
    route = Route("p", name, model, ProviderConfig(dialect=name, base_url="https://up.example", api_key="sk-test"))
    req = ImageRequest.model_validate({"model": model, "prompt": "a fox", **fields})
    calls = get_dialect(name).build_calls(req, route, Job(operation, INPUTS))
    return {json.dumps([c.method, c.url, c.params, c.json, c.form], sort_keys=True) for c in calls}


@pytest.mark.parametrize("name, model, operation", CASES, ids=["-".join(case) for case in CASES])
def test_a_dialect_sends_exactly_the_fields_it_declares(name, model, operation):
    dialect = get_dialect(name)
    carried = dialect.carries(model, operation)
    if not dialect.needs:  # no upstream (local): nothing is carried anywhere
        assert carried == frozenset()
        return
    assert carried <= set(VALUES), carried - set(VALUES)
    alone, every = {}, dict(VALUES)
    for field in sorted(VALUES):
        without = {k: v for k, v in every.items() if k != field}
        moves = (sent(name, model, operation, {field: VALUES[field]}) != sent(name, model, operation, alone)
                 or sent(name, model, operation, every) != sent(name, model, operation, without))
        assert moves == (field in carried), (f"{name} {operation} for {model}: {field} "
                                             f"{'is declared but never' if field in carried else 'is not declared but'}"
                                             f" changes what goes upstream")


def test_edits_carry_the_edit_fields_of_the_family():
    assert "input_fidelity" in get_dialect("openai").carries("gpt-image-1", EDIT)
    assert "input_fidelity" not in get_dialect("openai").carries("gpt-image-1")
