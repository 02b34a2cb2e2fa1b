"""`replicate`: Replicate's predictions API (and relays that serve the same paths, e.g. "Flux in Replicate
format"): `POST /v1/models/{owner}/{name}/predictions` with `{"input": {...}}`, or `POST /v1/predictions` with
`{"version", "input"}` when the route's model is `owner/name:version` or a bare version id; Bearer key.

Why it is its own dialect: a prediction is a queued job, not an image request. The submit asks Replicate to hold
the answer (`Prefer: wait=N`, N from the call's budget: `timeout_s` less a margin, 1..60), so a fast model
answers in one call; a slow one becomes a Pending task checked with `GET /v1/predictions/{id}` (the id is all a
check needs). Rules:

- input: `prompt`; `aspect_ratio` from `aspect_ratio` (wins) or `size` (a ratio, or `WxH`), mapped to the
  nearest ratio the model lists; `num_outputs` = n where the model has it (flux-schnell, flux-dev: 1..4),
  otherwise n predictions in parallel, the i-th with `seed + i` (the same seed n times would draw one image n
  times); `output_format` png (OpenAI's default) unless set (jpeg -> jpg; a format the model lacks is dropped);
  `seed`. Everything else is dropped.
- statuses: starting, processing (Pending), succeeded (Done), failed / canceled / aborted (Failed: the
  prediction's `error`, scrubbed; NSFW or policy wording -> content_policy_violation). Progress: the last
  "NN%" in `logs` when there is one, else 0 while starting and 50 while processing.
- output: a URL, a list of URLs, or data: URIs (decoded here). Replicate deletes outputs after an hour: the
  worker stores them as soon as the prediction succeeds, on the check path too.
- errors: `application/problem+json` `{title, detail, status}`; a 422 is a 400 naming the field its detail
  (or `invalid_fields`) names; a 429's "resets in ~Ns" is the wait before the next try (as a Retry-After).
- cancel: `POST /v1/predictions/{id}/cancel` for each prediction of the task.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from ..capabilities import REPLICATE_RATIOS, requested_ratio
from ..errors import BadRequest, ContentPolicyViolation, GatewayError, RateLimited, UpstreamFailed, policy_violation
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from ..transport import HttpCall, HttpReply, Send
from .base import GENERATE, Dialect, Done, Failed, ImageOut, Outcome, Pending, bearer, read_answer

MAX_WAIT_S = 60  # Replicate holds a `Prefer: wait` request at most this long
WAIT_MARGIN_S = 5  # the call's budget keeps this much for the answer after the wait
CHECK_TIMEOUT_S = 30.0
FLUX_RATIOS = REPLICATE_RATIOS
FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # ours -> Replicate's
_UNFINISHED = {"starting": 0, "processing": 50}
_FAILED = {"failed", "canceled", "aborted"}
_PERCENT = re.compile(r"(\d{1,3})\s*%")
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_RESETS = re.compile(r"resets in\s*~?\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\b", re.I)
_FIELD = re.compile(r"input\.([A-Za-z_][A-Za-z0-9_]*)")
_NSFW = ("nsfw", "sensitive", "inappropriate", "explicit")
#: our request field -> the Replicate input it becomes (`error_param`)
_PARAM_OF_INPUT = {"aspect_ratio": "aspect_ratio", "num_outputs": "n", "output_format": "output_format",
                   "seed": "seed", "prompt": "prompt", "width": "size", "height": "size"}


@dataclass(frozen=True)
class ReplicateModel:
    """What a Replicate model takes: `num_outputs` up to this many (None: one image per prediction), its aspect
    ratios and its output formats (Replicate's names)."""

    num_outputs: int | None = None
    ratios: frozenset[str] = FLUX_RATIOS
    formats: frozenset[str] = frozenset({"webp", "jpg", "png"})


#: owner/name -> its inputs; any other model is treated as `DEFAULT_MODEL` (the common flux-style inputs)
MODELS: dict[str, ReplicateModel] = {
    "black-forest-labs/flux-schnell": ReplicateModel(num_outputs=4),
    "black-forest-labs/flux-dev": ReplicateModel(num_outputs=4),
    "black-forest-labs/flux-pro": ReplicateModel(),
    "black-forest-labs/flux-1.1-pro": ReplicateModel(),
    "black-forest-labs/flux-1.1-pro-ultra": ReplicateModel(formats=frozenset({"jpg", "png"})),
}
DEFAULT_MODEL = ReplicateModel()


def model_name(upstream_model: str) -> str:
    """`owner/name` of a route's model (`owner/name:version` without its version); "" for a bare version id."""
    return upstream_model.split(":", 1)[0] if "/" in upstream_model else ""


def model_of(upstream_model: str) -> ReplicateModel:
    return MODELS.get(model_name(upstream_model), DEFAULT_MODEL)


def carried(upstream_model: str) -> frozenset[str]:
    """The request fields a submit carries for `upstream_model` (n: as num_outputs, or as n predictions)."""
    return frozenset({"n", "size", "aspect_ratio", "output_format", "seed"})


def inputs(req: ImageRequest, upstream_model: str) -> list[dict[str, Any]]:
    """The `input` of each prediction a request makes (one, or n without `num_outputs`)."""
    model = model_of(upstream_model)
    base: dict[str, Any] = {"prompt": req.prompt}
    if ratio := requested_ratio(req, model.ratios):
        base["aspect_ratio"] = ratio
    if model.num_outputs is not None:
        base["num_outputs"] = req.n
    output_format = FORMATS.get(req.output_format or "png")
    if output_format in model.formats:
        base["output_format"] = output_format
    if req.seed is not None:
        base["seed"] = req.seed
    if model.num_outputs is not None:
        return [base]
    return [{**base, "seed": req.seed + i} if req.seed is not None else dict(base) for i in range(req.n)]


def wait_s(route: Route) -> int:
    """`Prefer: wait=N`: the call's budget less a margin, 1..60 s."""
    return int(max(1, min(MAX_WAIT_S, route.config.timeout_s - WAIT_MARGIN_S)))


def submit_url_and_body(route: Route, input_: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    model = route.upstream_model
    root = route.config.root_url
    if "/" in model and ":" not in model:
        owner, _, name = model.partition("/")
        return f"{root}/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions", {"input": input_}
    version = model.split(":", 1)[1] if ":" in model else model
    return f"{root}/v1/predictions", {"version": version, "input": input_}


# -- errors ---------------------------------------------------------------------------------------------------

def _problem(reply: HttpReply) -> dict[str, Any]:
    try:
        payload = reply.json()
    except GatewayError:
        return {}
    return payload if isinstance(payload, dict) else {}


def retry_hint_s(text: str) -> float | None:
    """The wait in Replicate's "Your rate limit resets in ~30s." (also ms and minutes); None without one."""
    match = _RESETS.search(text or "")
    if not match:
        return None
    value = float(match[1])
    return value / 1000 if match[2].lower() == "ms" else value * 60 if match[2].lower() == "m" else value


def error_param(problem: dict[str, Any]) -> str | None:
    """Our request field a 422 is about: `invalid_fields[].field` or an `input.<name>` in its detail."""
    names: list[str] = []
    fields = problem.get("invalid_fields")
    for item in fields if isinstance(fields, list) else []:
        if isinstance(item, dict) and isinstance(item.get("field"), str):
            names.append(item["field"].removeprefix("input."))
    names += _FIELD.findall(str(problem.get("detail") or ""))
    return next((_PARAM_OF_INPUT[n] for n in names if n in _PARAM_OF_INPUT), None)


def refine_error(reply: HttpReply, error: GatewayError) -> GatewayError:
    """A problem+json answer read as Replicate means it (see the module docstring)."""
    problem = _problem(reply)
    detail = fragment(problem.get("detail") or problem.get("title") or "")
    if isinstance(error, RateLimited) and error.retry_after_s is None:
        error.retry_after_s = retry_hint_s(str(problem.get("detail") or ""))
        return error
    if reply.status == 422:
        param = error_param(problem)
        return policy_violation(detail) or BadRequest(
            f"The provider refused the request{f' (field {param!r})' if param else ''}: {detail or 'HTTP 422'}",
            param=param, code="upstream_rejected")
    return error


# -- answers --------------------------------------------------------------------------------------------------

def output_images(output: Any) -> list[ImageOut]:
    """A prediction's `output`: a URL, a list of URLs, data: URIs among them; anything else is skipped."""
    items = output if isinstance(output, list) else [output]
    images = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            continue
        item = item.strip()
        if item.startswith("data:"):
            images.append(ImageOut(data=decode_data_uri(item)))
        else:
            images.append(ImageOut(url=item))
    return images


def decode_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise UpstreamFailed("The provider sent a data: URI without data.", code="bad_upstream_response",
                             retriable=False)
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise UpstreamFailed("The provider sent an image that is not valid base64.", code="bad_upstream_response",
                             retriable=False) from None


def progress_of(prediction: dict[str, Any]) -> int:
    """The last "NN%" in the logs (0..100), else 0 while starting and 50 while processing."""
    logs = prediction.get("logs")
    found = _PERCENT.findall(logs) if isinstance(logs, str) else []
    if found:
        return min(100, int(found[-1]))
    return _UNFINISHED.get(str(prediction.get("status")), 0)


def failure(prediction: dict[str, Any]) -> GatewayError:
    """A prediction that ended without images: its `error` (scrubbed); refusal wording -> content policy."""
    status = str(prediction.get("status"))
    reason = fragment(prediction.get("error") or "")
    if status != "canceled" and reason and any(word in reason.lower() for word in _NSFW):
        return ContentPolicyViolation(f"The provider refused the prompt under its content policy: {reason}")
    if status == "canceled":
        return UpstreamFailed("The provider's prediction was canceled.", code="upstream_task_canceled",
                              retriable=False)
    return policy_violation(reason) or UpstreamFailed(
        f"The provider's prediction {status}: {reason or 'no reason given'}", code="upstream_task_failed",
        retriable=False)


def prediction_of(reply: HttpReply) -> dict[str, Any]:
    payload = reply.json()
    if not isinstance(payload, dict) or not isinstance(payload.get("status"), str):
        raise UpstreamFailed("The provider answered without a prediction.", code="bad_upstream_response")
    return payload


def combine(predictions: list[dict[str, Any]], n: int | None) -> Outcome:
    """One outcome of a task's predictions: Done when all succeeded, Failed when one ended otherwise (the first
    such), else Pending on all their ids with the slowest one's progress. `n`: the images kept (None: all)."""
    for prediction in predictions:
        if prediction["status"] in _FAILED:
            return Failed(failure(prediction))
    ids = [str(p.get("id") or "") for p in predictions]
    if any(p["status"] != "succeeded" for p in predictions):
        if not all(ids):
            raise UpstreamFailed("The provider answered a prediction without an id.", code="bad_upstream_response")
        return Pending(upstream_id=",".join(ids), progress=min(progress_of(p) for p in predictions))
    images = [image for p in predictions for image in output_images(p.get("output"))][:n]
    if not images:
        return Failed(UpstreamFailed("The provider's prediction succeeded without any image.", code="no_image",
                                     retriable=False))
    return Done(images=images, usage={"images": len(images)}, upstream_id=",".join(i for i in ids if i) or None)


class ReplicateDialect(Dialect):
    name = "replicate"

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return carried(model)

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        headers = {**bearer(route), "Prefer": f"wait={wait_s(route)}"}
        calls = []
        for input_ in inputs(req, route.upstream_model):
            url, body = submit_url_and_body(route, input_)
            calls.append(HttpCall("POST", url, headers=headers, json=body, timeout_s=route.config.timeout_s,
                                  refine_error=refine_error))
        return calls

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Outcome:
        return combine([prediction_of(reply) for reply in replies], req.n)

    def build_check(self, upstream_id: str, route: Route) -> HttpCall:
        """The GET of one prediction (a task's upstream id lists its predictions, comma-separated)."""
        return HttpCall("GET", f"{route.config.root_url}/v1/predictions/{quote(upstream_id, safe='')}",
                        headers=bearer(route, json_body=False), timeout_s=min(CHECK_TIMEOUT_S, route.config.timeout_s),
                        refine_error=refine_error)

    def run_check(self, upstream_id: str, route: Route, send: Send) -> Outcome:
        ids = [i for i in upstream_id.split(",") if i]
        try:
            with ThreadPoolExecutor(max_workers=min(max(len(ids), 1), 8)) as pool:
                replies = list(pool.map(send, [self.build_check(i, route) for i in ids]))
        except GatewayError as exc:
            return Failed(exc)
        outcome = read_answer(lambda: combine([prediction_of(r) for r in replies], None))
        if isinstance(outcome, Pending):  # the id we submitted with stays authoritative
            return Pending(upstream_id="", progress=outcome.progress)
        if isinstance(outcome, Done):
            return Done(images=outcome.images, usage=outcome.usage)
        return outcome

    def build_cancel(self, upstream_id: str, route: Route, upstream: Mapping[str, Any]) -> list[HttpCall]:
        """`POST /v1/predictions/{id}/cancel` for each of the task's predictions."""
        return [HttpCall("POST", f"{route.config.root_url}/v1/predictions/{quote(i, safe='')}/cancel",
                         headers=bearer(route, json_body=False), timeout_s=min(CHECK_TIMEOUT_S, route.config.timeout_s))
                for i in upstream_id.split(",") if i]
