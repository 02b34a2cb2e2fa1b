"""`fal`: fal.ai's queue API: `POST {base}/{model_id}` (base e.g. https://queue.fal.run, model id e.g.
`fal-ai/flux/dev`) with `Authorization: Key <key>`; the job is then followed at the URLs the submit answers.

Why it is its own dialect: fal queues every request. The submit answers `{request_id, status_url, response_url,
cancel_url, queue_position}`; those URLs are used as given (they drop the model's subpath:
`{base}/fal-ai/flux/requests/{id}/status`) but only when they are on the route's `base_url` (same scheme, host and
port): a URL to anywhere else fails the task (`unsafe_upstream_url`), it is never followed. Without them, they
are built as fal's client builds them. They are kept in the task's upstream meta, which every check and the
cancel read. Rules:

- body: `prompt`; `image_size` a preset when the size is one (square_hd 1024x1024, square 512x512, portrait_4_3
  768x1024, portrait_16_9 576x1024, landscape_4_3 1024x768, landscape_16_9 1024x576), a ratio (in
  `aspect_ratio`, which wins, or `size`) the preset nearest it, any other `WxH` `{width, height}`; unset or
  `auto`: left to the model. `num_images` = n (1..4); `seed`; `output_format` png unless set (jpeg, png; webp is
  dropped). Everything else is dropped.
- check: `GET status_url?logs=0`: IN_QUEUE is Pending (progress 20, 15, 10 at queue positions 0, 1, 2, then 5;
  the position is kept as `queue_position` in the task's upstream meta), IN_PROGRESS Pending at 50, COMPLETED
  with an `error` Failed (its text scrubbed; policy wording -> content_policy_violation), else `GET
  response_url` for the result.
- result: `{images: [{url, width, height, content_type}], seed, has_nsfw_concepts?, timings?}`; URLs may be
  data: URIs. Images flagged in `has_nsfw_concepts` (fal's safety checker blacks them out) are dropped; when
  every image is flagged the task fails 400 content_policy_violation.
- errors: a 422 `{"detail": [{loc, msg, type}]}` is a 400 naming the field (`loc`), wherever it comes (the queue
  validates when the result is read); `X-Fal-Retryable: true` makes an error retriable (the next route is
  tried), `false` makes it final.
- cancel: `PUT cancel_url`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..capabilities import nearest_ratio, parse_pixels, parse_ratio
from ..errors import BadRequest, ContentPolicyViolation, GatewayError, RateLimited, UpstreamFailed, policy_violation
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from ..transport import HttpCall, HttpReply, Send
from .base import GENERATE, Dialect, Done, Failed, ImageOut, Job, Outcome, Pending, read_answer
from .replicate import decode_data_uri

CHECK_TIMEOUT_S = 30.0
_READ_RESULT = Done(images=[])  # a status check's "completed: read the result"
PRESETS = {"1024x1024": "square_hd", "512x512": "square", "768x1024": "portrait_4_3", "576x1024": "portrait_16_9",
           "1024x768": "landscape_4_3", "1024x576": "landscape_16_9"}
_PRESET_RATIOS = {"1:1": "square_hd", "3:4": "portrait_4_3", "9:16": "portrait_16_9", "4:3": "landscape_4_3",
                  "16:9": "landscape_16_9"}
FORMATS = frozenset({"jpeg", "png"})
CARRIED = frozenset({"n", "size", "aspect_ratio", "output_format", "seed"})
URL_KEYS = ("status_url", "response_url", "cancel_url")
#: fal's body field -> our request field, for a 422 that names it
_PARAM_OF_FIELD = {"image_size": "size", "num_images": "n", "output_format": "output_format", "seed": "seed",
                   "prompt": "prompt", "width": "size", "height": "size"}


def image_size(req: ImageRequest) -> str | dict[str, int] | None:
    """`image_size` as fal takes it (see the module docstring); None: not sent."""
    if req.aspect_ratio and (ratio := parse_ratio(req.aspect_ratio)):
        return _PRESET_RATIOS[nearest_ratio(ratio[0], ratio[1], set(_PRESET_RATIOS))]
    if not req.size or req.size == "auto":
        return None
    if req.size in PRESETS:
        return PRESETS[req.size]
    if pixels := parse_pixels(req.size):
        return {"width": pixels[0], "height": pixels[1]}
    if ratio := parse_ratio(req.size):
        return _PRESET_RATIOS[nearest_ratio(ratio[0], ratio[1], set(_PRESET_RATIOS))]
    return None


def request_body(req: ImageRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": req.prompt}
    if (size := image_size(req)) is not None:
        body["image_size"] = size
    body["num_images"] = req.n
    if req.seed is not None:
        body["seed"] = req.seed
    if (output_format := req.output_format or "png") in FORMATS:
        body["output_format"] = output_format
    return body


def headers(route: Route, *, json_body: bool = True) -> dict[str, str]:
    out = {"Content-Type": "application/json", "Accept": "application/json"} if json_body else \
        {"Accept": "application/json"}
    if route.api_key:
        out["Authorization"] = f"Key {route.api_key}"
    return out


# -- URLs -------------------------------------------------------------------------------------------------------

def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


def on_base(url: Any, route: Route) -> bool:
    """Whether an upstream-given URL is on the route's base URL (scheme, host and port), so it may be followed."""
    return isinstance(url, str) and url.strip() == url and _origin(url) is not None \
        and _origin(url) == _origin(route.config.root_url)


def default_urls(request_id: str, route: Route) -> dict[str, str]:
    """The queue URLs as fal's client builds them: `{base}/{owner}/{alias}/requests/{id}` (+ /status, /cancel)."""
    app = "/".join(route.upstream_model.strip("/").split("/")[:2])
    base = f"{route.config.root_url}/{app}/requests/{request_id}"
    return {"status_url": base + "/status", "response_url": base, "cancel_url": base + "/cancel"}


def queue_urls(payload: Mapping[str, Any], request_id: str, route: Route) -> dict[str, str]:
    """The answer's queue URLs (each checked to be on the base URL), the missing ones built."""
    urls = default_urls(request_id, route)
    for key in URL_KEYS:
        given = payload.get(key)
        if given is None:
            continue
        if not on_base(given, route):
            raise UpstreamFailed(f"The provider gave a {key} that is not on its base URL; it was not followed.",
                                 code="unsafe_upstream_url", retriable=False)
        urls[key] = given
    return urls


def _stored_url(upstream: Mapping[str, Any], key: str, upstream_id: str, route: Route) -> str:
    url = upstream.get(key) or default_urls(upstream_id, route)[key]
    if not on_base(url, route):  # stored by us from a checked answer; checked again, never followed elsewhere
        raise UpstreamFailed(f"The task's {key} is not on the provider's base URL.", code="unsafe_upstream_url",
                             retriable=False)
    return str(url)


# -- answers ----------------------------------------------------------------------------------------------------

def queue_progress(position: Any) -> int:
    if isinstance(position, int) and not isinstance(position, bool) and position >= 0:
        return max(5, 20 - 5 * position)
    return 5


def status_outcome(payload: Any, request_id: str) -> Outcome | None:
    """A status answer as an outcome; None when COMPLETED without an error (the result is to be read)."""
    if not isinstance(payload, dict):
        raise UpstreamFailed("The provider answered a status check without a status.", code="bad_upstream_response")
    status = payload.get("status")
    if status == "IN_QUEUE":
        position = payload.get("queue_position")
        meta = {"queue_position": str(position)} if isinstance(position, int) else {}
        return Pending(upstream_id=request_id, progress=queue_progress(position), meta=meta)
    if status == "IN_PROGRESS":
        return Pending(upstream_id=request_id, progress=50)
    if status == "COMPLETED":
        if payload.get("error"):
            reason = fragment(payload["error"])
            kind = fragment(payload.get("error_type") or "")
            return Failed(policy_violation(f"{reason} {kind}") or UpstreamFailed(
                f"The provider's request failed: {reason}" + (f" ({kind})" if kind else ""),
                code="upstream_task_failed", retriable=False))
        return None
    raise UpstreamFailed(f"The provider answered an unknown status: {fragment(status)}", code="bad_upstream_response")


def result_outcome(payload: Any) -> Outcome:
    """The result's images, less those fal flagged NSFW (all flagged: a content-policy refusal)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise UpstreamFailed("The provider's result has no images.", code="no_image", retriable=False)
    flags = payload.get("has_nsfw_concepts")
    flags = flags if isinstance(flags, list) else []
    images, flagged = [], 0
    for index, item in enumerate(payload["images"]):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url.strip():
            continue
        if index < len(flags) and flags[index] is True:
            flagged += 1
            continue
        url = url.strip()
        images.append(ImageOut(data=decode_data_uri(url)) if url.startswith("data:") else ImageOut(url=url))
    if not images:
        if flagged:
            return Failed(ContentPolicyViolation("The provider's safety checker flagged every image it generated "
                                                 "(NSFW), so none is returned."))
        return Failed(UpstreamFailed("The provider's result has no images.", code="no_image", retriable=False))
    return Done(images=images, usage={"images": len(images)})


def error_param(payload: Any) -> tuple[str | None, str]:
    """(our field, fal's message) of a 422 `{"detail": [{loc, msg, type}]}`; the detail text when it is a string."""
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, str):
        return None, detail
    for item in detail if isinstance(detail, list) else []:
        if not isinstance(item, dict):
            continue
        loc = [str(part) for part in item.get("loc") or [] if part != "body"] if isinstance(item.get("loc"), list) \
            else []
        field = next((_PARAM_OF_FIELD[part] for part in loc if part in _PARAM_OF_FIELD), None)
        return field, f"{'.'.join(loc) or 'body'}: {item.get('msg') or item.get('type') or 'invalid'}"
    return None, ""


def refine_error(reply: HttpReply, error: GatewayError) -> GatewayError:
    """A 422 names the field; `X-Fal-Retryable` decides whether another route may be tried."""
    try:
        payload = reply.json()
    except GatewayError:
        payload = None
    if reply.status == 422:
        param, message = error_param(payload)
        message = fragment(message)
        error = policy_violation(message) or BadRequest(
            f"The provider refused the request{f' (field {param!r})' if param else ''}: {message or 'HTTP 422'}",
            param=param, code="upstream_rejected")
    retryable = next((v.strip().lower() for k, v in reply.headers.items() if k.lower() == "x-fal-retryable"), None)
    if retryable == "true" and not error.retriable:
        return UpstreamFailed(f"{error.message} (the provider says it may be retried)", code=error.code)
    if retryable == "false" and error.retriable and not isinstance(error, RateLimited):
        return UpstreamFailed(error.message, code=error.code, retriable=False)
    return error


class FalDialect(Dialect):
    name = "fal"

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return CARRIED

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        return [HttpCall("POST", f"{route.config.root_url}/{route.upstream_model.strip('/')}", headers=headers(route),
                         json=request_body(req), timeout_s=route.config.timeout_s, refine_error=refine_error)]

    def run_submit(self, req: ImageRequest, route: Route, send: Send, job: Job) -> Outcome:
        """The submit, whose answer's URLs are checked against this route's base URL."""
        try:
            reply = send(self.build_calls(req, route, job)[0])
        except GatewayError as exc:
            return Failed(exc)
        return read_answer(self.parse_queued, reply, route)

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Outcome:  # pragma: no cover - see run_submit
        raise NotImplementedError("fal's submit answer is read with its route (parse_queued)")

    def parse_queued(self, reply: HttpReply, route: Route) -> Outcome:
        payload = reply.json()
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        if not isinstance(request_id, str) or not request_id.strip():
            raise UpstreamFailed("The provider answered without a request id.", code="bad_upstream_response")
        urls = queue_urls(payload, request_id, route)
        position = payload.get("queue_position")
        meta = {**urls, **({"queue_position": str(position)} if isinstance(position, int) else {})}
        return Pending(upstream_id=request_id, progress=queue_progress(position), meta=meta)

    def run_check_with(self, upstream_id: str, route: Route, send: Send, upstream: Mapping[str, Any]) -> Outcome:
        """The status; once COMPLETED (without an error), the result. The id submitted with stays the task's."""
        timeout_s = min(CHECK_TIMEOUT_S, route.config.timeout_s)
        try:
            status_url = _stored_url(upstream, "status_url", upstream_id, route)
            reply = send(HttpCall("GET", status_url, headers=headers(route, json_body=False), params={"logs": "0"},
                                  timeout_s=timeout_s, refine_error=refine_error))
        except GatewayError as exc:
            return Failed(exc)
        outcome = read_answer(lambda: status_outcome(reply.json(), upstream_id) or _READ_RESULT)
        if isinstance(outcome, Pending):
            return Pending(upstream_id="", progress=outcome.progress, meta=outcome.meta)
        if outcome is not _READ_RESULT:
            return outcome
        try:
            response_url = _stored_url(upstream, "response_url", upstream_id, route)
            result = send(HttpCall("GET", response_url, headers=headers(route, json_body=False), timeout_s=timeout_s,
                                   refine_error=refine_error))
        except GatewayError as exc:
            return Failed(exc)
        return read_answer(lambda: result_outcome(result.json()))

    def build_cancel(self, upstream_id: str, route: Route, upstream: Mapping[str, Any]) -> list[HttpCall]:
        """`PUT cancel_url` (as the submit gave it, checked to be on the base URL)."""
        return [HttpCall("PUT", _stored_url(upstream, "cancel_url", upstream_id, route),
                         headers=headers(route, json_body=False),
                         timeout_s=min(CHECK_TIMEOUT_S, route.config.timeout_s))]
