"""`envelope`: an API platform that serves OpenAI's image models behind its own path and wraps every answer in
an envelope, `{code, data: {urls, usage, expired, task_id, task_status}, message, request_id}`.

Why it is its own dialect: the envelope is a success only when `code` is 0, so an HTTP 200 may carry a
failure, and that failure must become the gateway error a client would have met talking to OpenAI directly
(`envelope_error`). The body is OpenAI's for the model's family, with `n`, `size` and `"stream": false` always
sent (the platform requires them), and without `response_format` (the answer is always URLs, which expire: the
worker copies them at once). Its reference lists no `quality` row but labels quality's values as
`partial_images`, a mis-labelled copy of OpenAI's table, so `quality` goes under its real name. No task check
is documented, so an unfinished `task_status` is named in the failure, never polled. The README's "Dialects"
table lists the fields.
"""

from __future__ import annotations

import re
from typing import Any

from ..capabilities import DALLE2, DALLE3, GPT_IMAGE, nearest_size, parse_pixels, parse_ratio
from ..errors import GatewayError, RateLimited, UpstreamFailed, policy_violation, refusal
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from .base import GENERATE, Dialect, Done, HttpCall, HttpReply, ImageOut, bearer, translatable_fields
from .openai_shaped import decode_b64, error_message, family, fields, summed_usage, usage

PATH = "/api/v1/image/generation"
#: `output_compression` is marked required, yet documented as "only for webp or jpeg, defaults to 100"
DEFAULT_COMPRESSION = 100

_SIZES = {"gpt-image": GPT_IMAGE.sizes, "dall-e-2": DALLE2.sizes, "dall-e-3": DALLE3.sizes}
_DEFAULT_SIZE = {"gpt-image": "auto"}
#: sent by this dialect's own rules: `n` and `size` always, `output_compression` only with jpeg or webp, and
#: never `response_format`
_OWN_RULES = frozenset({"n", "size", "output_compression", "response_format"})
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.S)

_RATE_WORDS = ("rate limit", "too many", "频繁", "限流", "速率")
_BUSY_WORDS = ("busy", "overload", "timeout", "timed out", "try again", "unavailable", "繁忙", "超时", "稍后")
_AUTH_WORDS = ("api key", "api_key", "apikey", "unauthorized", "令牌")
_ACCOUNT_WORDS = ("insufficient", "quota", "balance", "余额", "额度")
_INVALID_WORDS = ("invalid", "not supported", "unsupported", "must be", "required", "参数", "不支持")


def carried(upstream_model: str) -> frozenset[str]:
    """The family's OpenAI fields as given, `size` always (a ratio in it or in `aspect_ratio` chooses among a
    family's listed sizes), `n` unless the family makes one image per call, and `output_compression` where the
    family takes it (see `request_body`)."""
    fam, openai_fields = family(upstream_model), fields(upstream_model)
    own = {"size"} | (set() if fam.one_image_per_call else {"n"}) | ({"aspect_ratio"} if fam.name in _SIZES else set())
    return (openai_fields - _OWN_RULES) | own | (openai_fields & {"output_compression"})


def _size(req: ImageRequest, fam: str) -> str:
    """The client's `size` when the family lists it; else the listed size nearest a pixel size or a ratio (in
    `size`, else `aspect_ratio`); else the family default (`auto` for gpt-image, 1024x1024 for the others).
    A family whose sizes are not listed gets the client's `size` as is."""
    sizes = _SIZES.get(fam)
    default = _DEFAULT_SIZE.get(fam, "1024x1024")
    if sizes is None:
        return req.size or default
    if req.size in sizes:
        return req.size
    shape: tuple[float, float] | None = \
        parse_pixels(req.size or "") or parse_ratio(req.size or "") or parse_ratio(req.aspect_ratio or "")
    if shape:
        return nearest_size(*shape, {s for s in sizes if s != "auto"})
    return default


def request_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    """`stream` is always false (the gateway does not stream; the request model refuses `stream: true`).
    `output_compression` goes only with a jpeg or webp `output_format`: the client's value, else the documented
    default; with png or no format it means nothing and is dropped, as the field's own text says."""
    fam = family(upstream_model)
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.prompt,
                            "n": 1 if fam.one_image_per_call else req.n, "size": _size(req, fam.name),
                            "stream": False}
    body.update(translatable_fields(req, fields(upstream_model) - _OWN_RULES))
    if "output_compression" in fields(upstream_model) and req.output_format in ("jpeg", "webp"):
        body["output_compression"] = req.upstream_fields().get("output_compression", DEFAULT_COMPRESSION)
    return body


def _code(payload: dict[str, Any]) -> int | str | None:
    code = payload.get("code")
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return code


def envelope_error(code: Any, message: str, request_id: str | None) -> GatewayError:
    """The gateway error for an envelope whose `code` is not 0, as a client of OpenAI would have met it:
    content-policy wording -> 400 content_policy_violation; a rate-limit code (429) or wording -> 429 (next
    route); an auth code (401/403) or wording -> 502 provider_auth_failed; a 5xx code, busy or timeout wording,
    or an exhausted balance or quota -> 502 (retriable: another route may serve); another 4xx code or
    invalid-parameter wording -> 400 upstream_rejected; anything else -> 502 carrying the message, not retried
    on another route (the upstream may have done the work). The message names the code and request_id."""
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
    """An entry of `data.urls`: a URL, or a `data:image/...;base64,` URL decoded at once."""
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

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return carried(model)

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        call = HttpCall("POST", route.config.root_url + PATH, headers=bearer(route),
                        json=request_body(req, route.upstream_model), timeout_s=route.config.timeout_s)
        return [call] * (req.n if family(route.upstream_model).one_image_per_call else 1)

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        """The images of every answer (each URL downloaded at once: they expire), cut to n; `request_id` and
        `task_status` kept on the task, `task_id` as the upstream id. A code 0 without images names its
        task_status."""
        images: list[ImageOut] = []
        reported = []
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
            raw = payload.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            status, task_id = _text(data.get("task_status")), _text(data.get("task_id"))
            found = [image for image in map(_image, data.get("urls") or []) if image is not None]
            if not found:
                raise UpstreamFailed(f"The provider answered without any image (task_status "
                                     f"{status or 'not given'}{', request_id ' + request_id if request_id else ''}).",
                                     code="no_image")
            images.extend(found)
            reported.append(data.get("usage"))
            request_ids += [request_id] if request_id else []
            task_ids += [task_id] if task_id else []
            statuses += [status] if status else []
        kept = images[: req.n]
        total = summed_usage(reported)
        meta = {}
        if request_ids:
            meta["request_id"] = ",".join(request_ids)
        if statuses:
            meta["task_status"] = ",".join(dict.fromkeys(statuses))
        return Done(images=kept, usage=usage(total.get("images") or len(kept), total),
                    upstream_id=",".join(task_ids) or None, meta=meta)


def _message(payload: dict[str, Any]) -> str:
    """The envelope's message (scrubbed: upstream text), or ""."""
    return fragment(error_message(payload))


def _text(value: Any) -> str | None:
    """A string or number the envelope carries (request_id, task_status, task_id), scrubbed: upstream text."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return fragment(value) or None
    return None
