"""`openai`: OpenAI's Images API, as OpenAI and the many relays that copy it speak it.

The reference shape every other dialect is measured against: each field goes as given when the model's family
takes it (the table in `openai_shaped`), and is dropped otherwise, since OpenAI refuses a field a family does
not know rather than ignore it. dall-e-3 takes only n=1, so n images are n parallel calls. Edits and variations
go as multipart/form-data, exactly as OpenAI's SDKs send them. The README's "Dialects" table lists the fields.
"""

from __future__ import annotations

from typing import Any

from ..errors import UpstreamFailed
from ..inputs import Inputs
from ..request import ImageRequest
from ..routing import Route
from .base import EDIT, GENERATE, VARIATION, Dialect, Done, HttpCall, HttpReply, ImageOut, bearer, \
    translatable_fields
from .openai_shaped import GENERATIONS_PATH, edit_call, family, fields, image_items, summed_usage, usage, \
    variation_call


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.prompt}
    body.update(translatable_fields(req, fields(upstream_model)))
    if family(upstream_model).one_image_per_call:
        body["n"] = 1
    return body


class OpenAIDialect(Dialect):
    name = "openai"
    operations = frozenset({GENERATE, EDIT, VARIATION})

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return fields(model, operation)

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        call = HttpCall("POST", route.config.root_url + GENERATIONS_PATH, headers=bearer(route),
                        json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)
        return [call] * (req.n if family(route.upstream_model).one_image_per_call else 1)

    def build_edit(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        return [edit_call(req, route, inputs)]

    def build_variation(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        return [variation_call(req, route, inputs)]

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        images: list[ImageOut] = []
        reported = []
        for reply in replies:
            payload = reply.json()
            if not isinstance(payload, dict):
                raise UpstreamFailed("The provider's answer is not a JSON object.", code="bad_upstream_response")
            images.extend(image_items(payload.get("data")))
            reported.append(payload.get("usage"))
        if not images:
            raise UpstreamFailed("The provider answered without any image.", code="no_image")
        return Done(images=images[: req.n], usage=usage(min(len(images), req.n), summed_usage(reported)))
