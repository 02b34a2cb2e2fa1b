"""What every upstream shaped like OpenAI's Images API shares: which fields each model family takes, the image
list, usage and error message of an answer, and the multipart edit and variation calls.

The relays behind the `openai`, `async-relay` and `envelope` dialects hand OpenAI's fields on to the model they
serve, so the family table below is the one statement of what each family takes; a relay dialect states only
how it differs (a field it always sends, one it never sends, one it translates). `grok` and `jimeng` are only
OpenAI-like: they use the answer readers and keep their own request rules.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import GatewayError, UpstreamFailed, policy_violation
from ..inputs import InputFile, Inputs
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from ..transport import MESSAGE_KEYS, HttpCall, error_message
from .base import EDIT, GENERATE, VARIATION, ImageOut, bearer, translatable_fields

__all__ = ["EDITS_PATH", "FAMILIES", "GENERATIONS_PATH", "MESSAGE_KEYS", "TOKEN_KEYS", "VARIATIONS_PATH", "Family",
           "decode_b64", "edit_call", "error_message", "family", "fields", "image_items", "no_image_error",
           "summed_usage", "usage", "variation_call"]

GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
VARIATIONS_PATH = "/v1/images/variations"
TOKEN_KEYS = ("input_tokens", "output_tokens", "total_tokens")


# -- which fields each model family takes ------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """The optional request fields OpenAI's API takes, as given, for one model family and each operation."""

    name: str
    generate: frozenset[str]
    edit: frozenset[str]
    variation: frozenset[str]
    #: dall-e-3 accepts only n=1: a request for n images is n calls whose images are joined in order
    one_image_per_call: bool = False


_COMMON = frozenset({"size", "user"})
_DALLE2 = _COMMON | {"n", "response_format"}
_OTHER_EDIT = _COMMON | {"n", "response_format"}

#: Never in any family: `partial_images` and `stream` (the gateway does not stream), `input_fidelity` in a
#: generation (it only means something for an edit), and the gateway's own `aspect_ratio`, `resolution`,
#: `seed` and `webhook`. Variations exist for dall-e-2 only; the same fields go for any name.
FAMILIES = {
    "dall-e-2": Family("dall-e-2", generate=_DALLE2, edit=_DALLE2, variation=_DALLE2),
    # n is 1 (see one_image_per_call); no edit endpoint (the capability table refuses it first: sent as any name's)
    "dall-e-3": Family("dall-e-3", generate=_COMMON | {"quality", "style", "response_format"}, edit=_OTHER_EDIT,
                       variation=_DALLE2, one_image_per_call=True),
    # these models always answer base64 and do not take `response_format`
    "gpt-image": Family("gpt-image", generate=_COMMON | {"n", "quality", "background", "output_format",
                                                         "output_compression", "moderation"},
                        edit=_COMMON | {"n", "quality", "background", "input_fidelity", "output_format",
                                        "output_compression"},
                        variation=_DALLE2),
    # any other name (an OpenAI-compatible relay serving, say, flux): OpenAI's common fields
    "other": Family("other", generate=_COMMON | {"n", "quality", "style", "response_format"}, edit=_OTHER_EDIT,
                    variation=_DALLE2),
}


def family(model: str) -> Family:
    if model.startswith("gpt-image"):
        return FAMILIES["gpt-image"]
    return FAMILIES.get(model) or FAMILIES["other"]


def fields(model: str, operation: str = GENERATE) -> frozenset[str]:
    """The optional fields OpenAI's API takes, as given, for `model`'s family and `operation`."""
    fam = family(model)
    return {GENERATE: fam.generate, EDIT: fam.edit, VARIATION: fam.variation}[operation]


# -- reading an answer -------------------------------------------------------------------------------------------

def image_items(items: Any) -> list[ImageOut]:
    """The images in an OpenAI-style `data` list, `[{url | b64_json, revised_prompt?}]`. Entries that are not
    such objects (a string, a URL that is not a string) are skipped: what is left is what can be stored."""
    images = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        revised = item.get("revised_prompt") if isinstance(item.get("revised_prompt"), str) else None
        if isinstance(item.get("b64_json"), str) and item["b64_json"].strip():
            images.append(ImageOut(data=decode_b64(item["b64_json"]), revised_prompt=revised))
        elif isinstance(item.get("url"), str) and item["url"].strip():
            images.append(ImageOut(url=item["url"].strip(), revised_prompt=revised))
    return images


def decode_b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise UpstreamFailed("The provider sent an image that is not valid base64.",
                             code="bad_upstream_response", retriable=False) from None


def usage(images: int, reported: Any = None) -> dict[str, int]:
    """The gateway's usage shape: `images`, and the token counts the provider reported (integers only)."""
    out = {"images": images}
    if isinstance(reported, dict):
        out.update({key: reported[key] for key in TOKEN_KEYS if _count(reported.get(key))})
    return out


def summed_usage(reported: Iterable[Any]) -> dict[str, int]:
    """The usage of several answers to one request (a fan-out), added up key by key; what is not a count is
    skipped."""
    total: dict[str, int] = {}
    for one in reported:
        for key, value in one.items() if isinstance(one, dict) else ():
            if _count(value):
                total[key] = total.get(key, 0) + value
    return total


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def no_image_error(payload: Any, keys: tuple[str, ...] = MESSAGE_KEYS) -> GatewayError:
    """A 2xx answer without images: the provider's refusal when its message says so (400, no fallback), else
    a retriable 502 `no_image` quoting the message."""
    message = fragment(error_message(payload, keys))  # upstream text
    detail = f": {message}" if message else "."
    return policy_violation(message) or UpstreamFailed(f"The provider answered without any image{detail}",
                                                       code="no_image")


# -- edits and variations ----------------------------------------------------------------------------------------

def edit_call(req: ImageRequest, route: Route, inputs: Inputs, **kwargs: Any) -> HttpCall:
    """`POST /v1/images/edits` as multipart/form-data: `model`, `prompt` and the family's edit fields."""
    form = {"model": route.upstream_model, "prompt": req.prompt,
            **translatable_fields(req, fields(route.upstream_model, EDIT))}
    return _multipart(route, EDITS_PATH, form, inputs, **kwargs)


def variation_call(req: ImageRequest, route: Route, inputs: Inputs) -> HttpCall:
    """`POST /v1/images/variations` as multipart/form-data: `model` and the variation fields (no prompt)."""
    form = {"model": route.upstream_model, **translatable_fields(req, fields(route.upstream_model, VARIATION))}
    return _multipart(route, VARIATIONS_PATH, form, inputs)


def _multipart(route: Route, path: str, form: dict[str, Any], inputs: Inputs, **kwargs: Any) -> HttpCall:
    return HttpCall("POST", route.config.root_url + path, headers=bearer(route, json_body=False),
                    form=_form_text(form), files=_form_files(inputs), timeout_s=route.config.timeout_s, **kwargs)


def _form_files(inputs: Inputs) -> tuple[tuple[str, tuple[str, bytes, str]], ...]:
    """The input files as OpenAI's API takes them: one image as `image`, several as `image[]` each (as the OpenAI
    SDKs send a list), then `mask`."""
    name = "image[]" if len(inputs.images) > 1 else "image"
    files = [(name, _file(image)) for image in inputs.images]
    if inputs.mask is not None:
        files.append(("mask", _file(inputs.mask)))
    return tuple(files)


def _file(file: InputFile) -> tuple[str, bytes, str]:
    return (file.filename, file.data, file.content_type)


def _form_text(values: dict[str, Any]) -> dict[str, str]:
    """Text fields of a multipart body: every value as the text an HTML form would send."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items() if v is not None}
