"""`openai`: the OpenAI Images API as relays speak it (seed 002), with the gpt-image parameters of seed 001.

Translation rules, per upstream model family:
- dall-e-2: prompt, n, size, response_format, user. Everything else is dropped.
- dall-e-3: prompt, size, quality (standard|hd), style, response_format, user. It accepts only n=1, so a
  request for n>1 fans out into n parallel calls whose images are joined in order.
- gpt-image-*: prompt, n, size, quality, background, output_format, output_compression, moderation, user.
  `response_format` is never sent (these models always answer base64).
- any other model name (an OpenAI-compatible relay serving e.g. flux): prompt, n, size, quality, style,
  response_format, user.
Never sent, whatever the family: `partial_images` and `stream` (streaming options: the gateway does not stream),
`input_fidelity` (it only means something for edits), and the gateway's own `aspect_ratio`, `resolution`, `seed`
and `webhook`.
`revised_prompt` and `usage` pass through.

Edits (`POST /v1/images/edits`) and variations (`POST /v1/images/variations`) go as multipart/form-data,
exactly as OpenAI's API takes them: one image as `image`, several as `image[]`, then `mask`; the text fields
`model`, `prompt` (edits) and, per family:
- edits, dall-e-2: n, size, response_format, user. gpt-image-*: n, size, quality, background, input_fidelity,
  output_format, output_compression, user (never response_format). Other names: n, size, response_format, user.
  dall-e-3 has no edit endpoint (the capability table refuses it first).
- variations (dall-e-2's only): n, size, response_format, user.
"""

from __future__ import annotations

from typing import Any

from ..errors import UpstreamFailed
from ..request import ImageRequest
from ..routing import Route
from ..inputs import Inputs
from .base import EDIT, GENERATE, VARIATION, Dialect, Done, HttpCall, HttpReply, ImageOut, bearer, form_fields, \
    form_files, image_items, multipart_headers, translatable_fields

PATH = "/v1/images/generations"
EDIT_PATH = "/v1/images/edits"
VARIATION_PATH = "/v1/images/variations"

_COMMON = frozenset({"size", "user"})
_PARAMS_BY_FAMILY = {
    "dall-e-2": _COMMON | {"n", "response_format"},
    "dall-e-3": _COMMON | {"quality", "style", "response_format"},
    "gpt-image": _COMMON | {"n", "quality", "background", "output_format", "output_compression", "moderation"},
    "other": _COMMON | {"n", "quality", "style", "response_format"},
}


_EDIT_PARAMS_BY_FAMILY = {
    "dall-e-2": _COMMON | {"n", "response_format"},
    "gpt-image": _COMMON | {"n", "quality", "background", "input_fidelity", "output_format", "output_compression"},
    "other": _COMMON | {"n", "response_format"},
}
_VARIATION_PARAMS = _COMMON | {"n", "response_format"}


def family(model: str) -> str:
    if model.startswith("gpt-image"):
        return "gpt-image"
    return model if model in ("dall-e-2", "dall-e-3") else "other"


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.prompt}
    body.update(translatable_fields(req, _PARAMS_BY_FAMILY[family(upstream_model)]))
    if family(upstream_model) == "dall-e-3":
        body["n"] = 1
    return body


def normalise_usage(usage: dict[str, Any] | None, images: int) -> dict[str, int]:
    """Our usage shape: images, and input/output/total tokens where the upstream gives them."""
    out = {"images": images}
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        if isinstance((usage or {}).get(key), int):
            out[key] = usage[key]
    return out


def edit_form(req: ImageRequest, upstream_model: str) -> dict[str, str]:
    """The text fields of an edit (the files go beside them)."""
    params = _EDIT_PARAMS_BY_FAMILY.get(family(upstream_model), _EDIT_PARAMS_BY_FAMILY["other"])
    return form_fields({"model": upstream_model, "prompt": req.prompt, **translatable_fields(req, params)})


def variation_form(req: ImageRequest, upstream_model: str) -> dict[str, str]:
    return form_fields({"model": upstream_model, **translatable_fields(req, _VARIATION_PARAMS)})


def multipart_call(route: Route, path: str, form: dict[str, str], inputs: Inputs, **kwargs: Any) -> HttpCall:
    return HttpCall("POST", route.config.root_url + path, headers=multipart_headers(route), form=form,
                    files=form_files(inputs), timeout_s=route.config.timeout_s, **kwargs)


class OpenAIDialect(Dialect):
    name = "openai"
    operations = frozenset({GENERATE, EDIT, VARIATION})

    def build_edit(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        return [multipart_call(route, EDIT_PATH, edit_form(req, route.upstream_model), inputs)]

    def build_variation(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        return [multipart_call(route, VARIATION_PATH, variation_form(req, route.upstream_model), inputs)]

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        body = request_body(req, route.upstream_model)
        calls = req.n if family(route.upstream_model) == "dall-e-3" else 1
        call = HttpCall("POST", route.config.root_url + PATH, headers=bearer(route), json=body,
                        timeout_s=route.config.timeout_s)
        return [call] * calls

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        images: list[ImageOut] = []
        usage: dict[str, int] = {}
        for reply in replies:
            payload = reply.json()
            if not isinstance(payload, dict):
                raise UpstreamFailed("The provider's answer is not a JSON object.", code="bad_upstream_response")
            images.extend(image_items(payload.get("data")))
            for key, value in (payload.get("usage") or {}).items():
                if isinstance(value, int):
                    usage[key] = usage.get(key, 0) + value
        if not images:
            raise UpstreamFailed("The provider answered without any image.", code="no_image")
        return Done(images=images[: req.n], usage=normalise_usage(usage, min(len(images), req.n)))
