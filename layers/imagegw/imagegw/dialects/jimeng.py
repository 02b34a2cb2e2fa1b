"""`jimeng` (seed 000): `POST {root}/v1/images/generations`, Bearer key, body `{model, prompt, size}`.

The path and the bearer key are OpenAI's, but the body and the answer are not quite:
- `size` is an ASPECT RATIO (the seed's example sends `"2:3"`; its schema text about 256x256 is copied from
  OpenAI and wrong). Sent always (the seed marks it required):
  - `aspect_ratio` wins when given (validated against the model's ratios before we get here);
  - else a ratio in `size` passes as is;
  - else a pixel `size` (WxH) becomes the nearest supported ratio (`capabilities.nearest_ratio` over
    `JIMENG.ratios`, on a log scale: 1792x1024 -> 16:9, 1024x1536 -> 2:3);
  - else (no size, or `auto`) `"1:1"`.
  A ratio outside the supported list (possible only when the first route's model is not a jimeng model) is
  mapped to the nearest supported one rather than sent to be refused.
- `model` is the route's upstream model; `prompt` as given.
- Every call answers FOUR images, whatever is asked, so `n` is never sent: n <= 4 is one call whose first n
  images are kept; n > 4 is ceil(n / 4) identical calls run in parallel, and the first n images of all the
  answers are kept. The surplus images are never downloaded or stored. Should the answers hold fewer than n
  images, those are returned and counted.
- Dropped, because the seed documents no such parameter: `n` (see above), `quality`, `style`,
  `output_format`, `output_compression`, `background`, `moderation`, `user`, `resolution`, `seed` (not
  listed: sending it would promise a reproducibility the service does not document), `response_format`
  (the answer is always URLs; the gateway fills `b64_json` from its stored copy), `partial_images` and
  `stream` (the gateway does not stream), `input_fidelity` (edits only), `webhook` (gateway-side).

The answer is `{created, data: [{url}]}` (the seed's example; its response *schema* is a chat completion and
wrong). The URLs are signed and expire (`x-expires`), which is why the worker copies them to S3 at once.
Usage is `{"images": <images kept>}`. An answer without any image is `UpstreamFailed(code="no_image")`, or a
400 content_policy_violation when it carries a message worded as a content-policy refusal.
"""

from __future__ import annotations

import math
from typing import Any

from ..capabilities import JIMENG, nearest_ratio, parse_pixels, parse_ratio
from ..errors import UpstreamFailed, policy_violation
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from .base import Dialect, Done, HttpCall, HttpReply, ImageOut, bearer

PATH = "/v1/images/generations"
IMAGES_PER_CALL = 4
DEFAULT_RATIO = "1:1"
RATIOS = JIMENG.ratios or frozenset({DEFAULT_RATIO})


def jimeng_ratio(req: ImageRequest) -> str:
    """The `size` jimeng expects: an aspect ratio from its list (rules in the module docstring)."""
    for value in (req.aspect_ratio, req.size):
        if not value:
            continue
        if value in RATIOS:
            return value
        ratio = parse_ratio(value) or parse_pixels(value)
        if ratio:
            return nearest_ratio(*ratio, RATIOS)
    return DEFAULT_RATIO


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    return {"model": upstream_model, "prompt": req.prompt, "size": jimeng_ratio(req)}


def calls_needed(n: int) -> int:
    return max(1, math.ceil(n / IMAGES_PER_CALL))


def _no_image(payload: Any) -> Exception:
    message = ""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or "")
        for key in ("message", "msg", "error"):
            if not message and isinstance(payload.get(key), str):
                message = payload[key]
    if message:
        message = fragment(message)  # upstream text
        refused = policy_violation(message)
        if refused:
            return refused
        return UpstreamFailed(f"The provider answered without any image: {message}", code="no_image")
    return UpstreamFailed("The provider answered without any image.", code="no_image")


class JimengDialect(Dialect):
    name = "jimeng"
    supported_params = frozenset({"size", "aspect_ratio"})

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        call = HttpCall("POST", route.config.root_url + PATH, headers=bearer(route),
                        json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)
        return [call] * calls_needed(req.n)

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        images: list[ImageOut] = []
        last: Any = None
        for reply in replies:
            last = payload = reply.json()
            data = payload.get("data") if isinstance(payload, dict) else None
            for item in data if isinstance(data, list) else []:
                if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"]:
                    images.append(ImageOut(url=item["url"]))
        if not images:
            raise _no_image(last)
        kept = images[: req.n]
        return Done(images=kept, usage={"images": len(kept)})
