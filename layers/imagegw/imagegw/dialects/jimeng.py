"""`jimeng`: the jimeng relay (ByteDance's Jimeng/Dreamina image models) behind OpenAI's path and Bearer key.

Why it is its own dialect: the body looks like OpenAI's but is not. `size` is an ASPECT RATIO (its reference's
example sends "2:3"; the schema text about 256x256 is copied from OpenAI and wrong), so pixel sizes become the
nearest supported ratio. Every call answers four images whatever is asked, so `n` is never sent: n images are
ceil(n / 4) calls, and only the first n images are kept (the surplus is never downloaded). Nothing else is
documented, so every other field is dropped, `seed` included: sending it would promise a reproducibility the
service does not document. Its answer is `{created, data: [{url}]}` (the documented response *schema* is a
chat completion, also wrong), and the URLs are signed and expire, which is why the worker copies them to S3 at
once. The README's "Dialects" table lists the rules.
"""

from __future__ import annotations

import math
from typing import Any

from ..capabilities import JIMENG, requested_ratio
from ..request import ImageRequest
from ..routing import Route
from .base import GENERATE, Dialect, Done, HttpCall, HttpReply, ImageOut, bearer
from .openai_shaped import GENERATIONS_PATH, no_image_error, usage

IMAGES_PER_CALL = 4
DEFAULT_RATIO = "1:1"
RATIOS = JIMENG.ratios or frozenset({DEFAULT_RATIO})


def jimeng_ratio(req: ImageRequest) -> str:
    """The `size` jimeng expects, always sent (it is required): an aspect ratio from its list. `aspect_ratio`
    wins when given, else a ratio in `size`; a pixel `size` becomes the nearest listed ratio on a log scale
    (1792x1024 -> 16:9); with neither (or `auto`), 1:1. A ratio outside the list (possible only when the first
    route's model is not a jimeng model) becomes the nearest listed one rather than be sent to be refused."""
    return requested_ratio(req, RATIOS) or DEFAULT_RATIO


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    return {"model": upstream_model, "prompt": req.prompt, "size": jimeng_ratio(req)}


def calls_needed(n: int) -> int:
    return max(1, math.ceil(n / IMAGES_PER_CALL))


class JimengDialect(Dialect):
    name = "jimeng"

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return frozenset({"size", "aspect_ratio"})  # both into `size`, as a ratio

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        call = HttpCall("POST", route.config.root_url + GENERATIONS_PATH, headers=bearer(route),
                        json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)
        return [call] * calls_needed(req.n)

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        images: list[ImageOut] = []
        last: Any = None
        for reply in replies:
            last = payload = reply.json()
            data = payload.get("data") if isinstance(payload, dict) else None
            for item in data if isinstance(data, list) else []:  # its answers are URLs only
                if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"]:
                    images.append(ImageOut(url=item["url"]))
        if not images:
            raise no_image_error(last)
        kept = images[: req.n]
        return Done(images=kept, usage=usage(len(kept)))
