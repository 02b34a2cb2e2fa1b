"""`envelope` (seed 001): `POST {root}/api/v1/image/generation`, Bearer key, an OpenAI Images body, and an
answer wrapped in an envelope `{code, data: {urls, usage, expired, task_id, task_status}, message,
request_id}` that is a success ONLY when `code` is 0: an HTTP 200 may carry a failure.

Request body (the seed documents `model` as the fixed value `gpt-image-1.5`; its field texts are OpenAI's,
covering dall-e-2/dall-e-3 too, so the rules follow the upstream model's family as in the `openai` dialect):
- always: `model` (the route's upstream model), `prompt`, `n`, `size`, `"stream": false`. The seed marks
  n, size and stream required, so they are sent even at their defaults. `stream` is never true (we do not
  stream; the request model refuses `stream: true` with a 400).
- `n`: as asked (1..10). dall-e-3 accepts only n=1, so a dall-e-3 request for n>1 fans out into n parallel
  calls with n=1, whose images are joined in order.
- `size`: the client's `size` when the family lists it; else the nearest listed size by aspect ratio for a
  pixel size, a ratio in `size`, or `aspect_ratio` (size wins over aspect_ratio); else the family default:
  `auto` for gpt-image models, `1024x1024` for the others (`auto` asked of a dall-e model is that default
  too). For a model of another family, whose sizes the seed does not list, the client's `size` passes as is.
- gpt-image models: `quality`, `background`, `moderation`, `output_format` when the client set them.
  `output_compression` (marked required, yet documented as "only for webp or jpeg, defaults to 100") is sent
  only when `output_format` is jpeg or webp: the client's value, else the documented default 100. With png
  or no output format it has no meaning and is dropped, as the field's own text says.
- `quality` is sent under its real name: the seed lists no `quality` row, but its `partial_images` row carries
  quality's description and values ("standard", "hd", "low", ...), a mis-labelled copy of OpenAI's table.
  `partial_images` itself (a streaming option) is never sent. dall-e-3: `quality` (standard|hd) and
  `style`; dall-e-2: neither.
- `user`: sent when set (every family).
- never sent: `response_format` (refused for gpt-image models; for any model the envelope answers `urls`,
  and the gateway fills `b64_json` from its stored copy), `partial_images` (the gateway does not stream),
  `input_fidelity` (it only means something for edits), `resolution`, `seed` and
  `aspect_ratio` as such (none documented; aspect_ratio only chooses `size`), `webhook` (gateway-side).

Answer:
- `code == 0` with `data.urls`: done. Each entry is a URL the worker downloads at once (they expire, see
  `data.expired`); a `data:image/...;base64,` entry is decoded. Only the first n images are kept.
  `request_id` and `data.task_status` are kept on the task (`upstream`), `data.task_id` as the upstream id.
  Usage: `images` (usage.images, else the number of images) and input/output/total tokens when given.
- `code == 0` without urls: `UpstreamFailed(code="no_image")` naming task_status. No check endpoint is
  documented, so an unfinished task_status is not polled.
- `code != 0` in an HTTP 200 (a non-2xx answer is mapped by the transport, which reads the same `message`):
  content-policy wording in `message` -> 400 content_policy_violation; a rate-limit code (429) or wording
  -> 429 (retriable, next route); an auth code (401/403) or wording -> 502 provider_auth_failed; a 5xx code,
  busy/timeout wording or an exhausted balance or quota -> 502 (retriable: another route may serve); another
  4xx code or invalid-parameter wording -> 400 upstream_rejected; anything else -> 502 carrying the message,
  not retried on another route (the upstream may have done the work). The message names the request_id.
"""

from __future__ import annotations

import re
from typing import Any

from ..capabilities import DALLE2, DALLE3, GPT_IMAGE, nearest_size, parse_pixels, parse_ratio
from ..errors import GatewayError, RateLimited, UpstreamFailed, policy_violation, refusal
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from .base import Dialect, Done, HttpCall, HttpReply, ImageOut, bearer, decode_b64
from .openai import family

PATH = "/api/v1/image/generation"
DEFAULT_COMPRESSION = 100

_SIZES = {"gpt-image": GPT_IMAGE.sizes, "dall-e-2": DALLE2.sizes, "dall-e-3": DALLE3.sizes}
_DEFAULT_SIZE = {"gpt-image": "auto"}
_OPTIONAL_BY_FAMILY = {
    "gpt-image": ("quality", "background", "moderation", "output_format", "user"),
    "dall-e-3": ("quality", "style", "user"),
    "dall-e-2": ("user",),
    "other": ("quality", "style", "user"),
}
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.S)

_RATE_WORDS = ("rate limit", "too many", "频繁", "限流", "速率")
_BUSY_WORDS = ("busy", "overload", "timeout", "timed out", "try again", "unavailable", "繁忙", "超时", "稍后")
_AUTH_WORDS = ("api key", "api_key", "apikey", "unauthorized", "令牌")
_ACCOUNT_WORDS = ("insufficient", "quota", "balance", "余额", "额度")
_INVALID_WORDS = ("invalid", "not supported", "unsupported", "must be", "required", "参数", "不支持")


def _size(req: ImageRequest, fam: str) -> str:
    sizes = _SIZES.get(fam)
    default = _DEFAULT_SIZE.get(fam, "1024x1024")
    if sizes is None:  # a family the seed does not describe: the client's size as is
        return req.size or default
    if req.size in sizes:
        return req.size
    shape = parse_pixels(req.size or "") or parse_ratio(req.size or "") or parse_ratio(req.aspect_ratio or "")
    if shape:
        return nearest_size(*shape, {s for s in sizes if s != "auto"})
    return default


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    fam = family(upstream_model)
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.prompt,
                            "n": 1 if fam == "dall-e-3" else req.n, "size": _size(req, fam), "stream": False}
    asked = req.upstream_fields()
    body.update({key: asked[key] for key in _OPTIONAL_BY_FAMILY[fam] if key in asked})
    if fam == "gpt-image" and req.output_format in ("jpeg", "webp"):
        body["output_compression"] = asked.get("output_compression", DEFAULT_COMPRESSION)
    return body


def _code(payload: dict[str, Any]) -> int | str | None:
    code = payload.get("code")
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return code


def envelope_error(code: Any, message: str, request_id: str | None) -> GatewayError:
    """The gateway error for an envelope whose `code` is not 0 (mapping in the module docstring)."""
    code = code if isinstance(code, int) else fragment(code) if code is not None else None  # upstream text
    text = fragment(message) or f"code {code}"
    details = ([f"code {code}"] if code is not None else []) + ([f"request_id {request_id}"] if request_id else [])
    where = f" ({', '.join(details)})" if details else ""
    lowered = text.lower()
    policy = policy_violation(text)
    if policy:
        return type(policy)(policy.message + where)
    number = code if isinstance(code, int) else None
    if number == 429 or any(w in lowered for w in _RATE_WORDS):
        return RateLimited(f"The provider is rate limiting requests: {text}{where}.")
    if number in (401, 403) or any(w in lowered for w in _AUTH_WORDS):
        return UpstreamFailed("The provider rejected the gateway's credentials" + where + ".",
                              code="provider_auth_failed")
    if (number is not None and 500 <= number < 600) or any(w in lowered for w in _BUSY_WORDS + _ACCOUNT_WORDS):
        return UpstreamFailed(f"The provider failed: {text}{where}.")
    if (number is not None and 400 <= number < 500) or any(w in lowered for w in _INVALID_WORDS):
        rejected = refusal(text)
        return type(rejected)(rejected.message + where, code=rejected.code)
    return UpstreamFailed(f"The provider failed: {text}{where}.", retriable=False)


def _image(entry: Any) -> ImageOut | None:
    if isinstance(entry, dict):  # tolerated: [{"url": ...}]
        entry = entry.get("url")
    if not isinstance(entry, str) or not entry:
        return None
    match = _DATA_URL.match(entry)
    if match:
        return ImageOut(data=decode_b64(match[1]))
    return ImageOut(url=entry) if entry.startswith(("https://", "http://")) else None


class EnvelopeDialect(Dialect):
    name = "envelope"
    supported_params = frozenset({"size", "aspect_ratio", "quality", "style", "background", "moderation",
                                  "output_format", "output_compression", "user"})

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        call = HttpCall("POST", route.config.root_url + PATH, headers=bearer(route),
                        json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)
        return [call] * (req.n if family(route.upstream_model) == "dall-e-3" else 1)

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        images: list[ImageOut] = []
        usage: dict[str, int] = {}
        request_ids: list[str] = []
        task_ids: list[str] = []
        statuses: list[str] = []
        for reply in replies:
            payload = reply.json()
            if not isinstance(payload, dict):
                raise UpstreamFailed("The provider answered with an unexpected shape.",
                                     code="bad_upstream_response")
            request_id = _text(payload.get("request_id"))
            code = _code(payload)
            if code != 0:
                message = _message(payload)
                if code is None and not message:
                    raise UpstreamFailed("The provider answered without an envelope code.",
                                         code="bad_upstream_response")
                raise envelope_error(code, message, request_id)
            data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
            status, task_id = _text(data.get("task_status")), _text(data.get("task_id"))
            found = [image for image in map(_image, data.get("urls") or []) if image is not None]
            if not found:
                raise UpstreamFailed(f"The provider answered without any image (task_status "
                                     f"{status or 'not given'}{', request_id ' + request_id if request_id else ''}).",
                                     code="no_image")
            images.extend(found)
            for key, value in (data.get("usage") or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] = usage.get(key, 0) + value
            request_ids += [request_id] if request_id else []
            task_ids += [task_id] if task_id else []
            statuses += [status] if status else []
        kept = images[: req.n]
        normalised = {"images": usage["images"] if usage.get("images") else len(kept)}
        normalised.update({k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage})
        meta = {}
        if request_ids:
            meta["request_id"] = ",".join(request_ids)
        if statuses:
            meta["task_status"] = ",".join(dict.fromkeys(statuses))
        return Done(images=kept, usage=normalised, upstream_id=",".join(task_ids) or None, meta=meta)


def _message(payload: dict[str, Any]) -> str:
    """The envelope's message (scrubbed: upstream text), or ""."""
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return fragment(error["message"])
    for key in ("message", "msg", "error"):
        if isinstance(payload.get(key), str) and payload[key]:
            return fragment(payload[key])
    return ""


def _text(value: Any) -> str | None:
    """A string or number the envelope carries (request_id, task_status, task_id), scrubbed: upstream text."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return fragment(value) or None
    return None
