"""`midjourney`: Midjourney through a midjourney-proxy relay (novicezk/midjourney-proxy, and the relays that expose
its API): `POST {base}/mj/submit/imagine`, then `GET {base}/mj/task/{id}/fetch` until the task ends.

Why it is its own dialect: Midjourney is a Discord bot, not an image API. One job ("imagine") makes one 2x2
grid image, its parameters ride in the prompt (`--ar 7:4`), and the proxy answers every submit with HTTP 200
and a `code` of its own. The rules:

- **Base URL.** midjourney-proxy serves under the context path `/mj`; relays expose the same paths under
  `/mj`. So `base_url` may be the host (`https://relay.example`, `/mj` appended) or already end in `/mj`
  (`http://proxy:8080/mj`, kept); a trailing `/v1` is dropped as for every dialect.
- **Auth.** The provider's `auth`: `bearer` (default, relays: `Authorization: Bearer <key>`) or
  `mj-api-secret` (midjourney-proxy itself: the `mj-api-secret` header).
- **Submit.** `{"prompt"}` only. `aspect_ratio`, else `size` (`WxH` or `W:H`), becomes ` --ar W:H` appended to
  the prompt in lowest terms (1792x1024 -> 7:4, 19.5:9 -> 13:6), unless the prompt already has `--ar` or
  `--aspect`; `auto` adds nothing. Every other field is dropped. The answer's `code` (ReturnCode): 1
  (submitted) and 22 (queued) are Pending on `result`, the task id; 21 (already exists: the proxy or relay
  already holds this task, running or finished, new-api reads it so) is Pending on the id it names, the check
  then reports it; 24 (banned prompt) is 400 `content_policy_violation`; 23 (queue full) a 429 (wait or the
  next route); 4 (validation) a 400 `upstream_rejected`; 3 (no account instance) and 9 (system error) a
  retriable 502 (the next route); any other code a retriable 502 `upstream_rejected_task` with its
  `description` (content-policy or banned wording -> `content_policy_violation`). Upstream text is scrubbed.
- **Check.** The task's `status`: NOT_START, SUBMITTED, IN_PROGRESS (and any unknown status) are Pending with
  `progress` "NN%" as 0-100; SUCCESS is Done with `imageUrl`; FAILURE fails with `failReason` (banned or
  content-policy wording -> `content_policy_violation`, else 502 `upstream_task_failed`); CANCEL fails 502
  `upstream_task_cancelled`; MODAL (the job waits for a confirmation in a Discord modal, which this gateway
  never submits: it would only wait out its deadline) fails 502 `upstream_task_needs_action`. None of these is
  retried on another route: the job ran upstream. An empty answer (midjourney-proxy's `null` for an id it
  does not know) fails `upstream_task_lost`.
- **Images.** n = 1 stores the grid itself; n = 2, 3 or 4 stores that many quadrants (U1..U4 order:
  top-left, top-right, bottom-left, bottom-right), cut from the one grid download by the worker's fetch stage
  (`ImageOut.tile`). Usage `{"images": n}`. The check has only the upstream id to go on, so the id we keep is
  `<task id>;n=<n>` and the check reads n back from it.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any
from urllib.parse import quote

from ..capabilities import parse_pixels, parse_ratio
from ..errors import BadRequest, ContentPolicyViolation, GatewayError, RateLimited, UpstreamFailed, \
    policy_violation, refusal
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from ..transport import Send
from .async_relay import parse_progress
from .base import GENERATE, Dialect, Done, Failed, HttpCall, HttpReply, ImageOut, Outcome, Pending

SUBMIT_PATH = "/submit/imagine"
CHECK_PATH = "/task/{id}/fetch"
CHECK_TIMEOUT_S = 30.0
MAX_N = 4
CARRIED = frozenset({"size", "aspect_ratio"})
SECRET_HEADER = "mj-api-secret"
_HAS_RATIO = re.compile(r"(?:^|\s)--(?:ar|aspect)(?:\s|$)", re.IGNORECASE)
_N_SUFFIX = re.compile(r";n=([1-4])$")
_PENDING_CODES = {1, 21, 22}
_BANNED_WORDS = ("banned", "blocked", "sensitive", "敏感")


# -- submit ---------------------------------------------------------------------------------------------------

def mj_root(route: Route) -> str:
    """The proxy's root: `base_url` (without `/v1`) with `/mj` appended unless it already ends with it."""
    root = route.config.root_url
    return root if root.endswith("/mj") else root + "/mj"


def headers(route: Route, *, json_body: bool = True) -> dict[str, str]:
    """JSON's headers and the key as the provider's `auth` says: a Bearer token, or the `mj-api-secret` header."""
    out = {"Content-Type": "application/json", "Accept": "application/json"} if json_body else \
        {"Accept": "application/json"}
    key = route.api_key
    if key:
        if route.config.auth == SECRET_HEADER:
            out[SECRET_HEADER] = key
        else:
            out["Authorization"] = f"Bearer {key}"
    return out


def aspect(req: ImageRequest) -> str | None:
    """`W:H` in lowest integer terms from `aspect_ratio`, else `size` (pixels or a ratio); None for auto/none."""
    for value in (req.aspect_ratio, req.size):
        if not value or value == "auto":
            continue
        shape = parse_pixels(value) or parse_ratio(value)
        if shape:
            ratio = Fraction(str(shape[0])) / Fraction(str(shape[1]))
            return f"{ratio.numerator}:{ratio.denominator}"
    return None


def prompt_for(req: ImageRequest) -> str:
    """The prompt with ` --ar W:H` appended, unless it already sets `--ar`/`--aspect` or no ratio was asked."""
    prompt = req.prompt.strip()
    ratio = aspect(req)
    if ratio is None or _HAS_RATIO.search(prompt):
        return prompt
    return f"{prompt} --ar {ratio}"


def _code(payload: dict[str, Any]) -> int | None:
    code = payload.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code.strip())
    return None


def _banned(message: str) -> ContentPolicyViolation | None:
    if any(word in message.lower() for word in _BANNED_WORDS):
        return ContentPolicyViolation(f"The provider refused the prompt under its content policy: {message}")
    return policy_violation(message)


def submit_error(code: int | None, payload: dict[str, Any]) -> GatewayError:
    """The error for a submit the proxy did not take (see the module docstring for each code)."""
    description = fragment(payload.get("description") or payload.get("message") or "")
    said = description or f"code {fragment(payload.get('code'))}"
    if code == 24:
        props = payload.get("properties")
        word = props.get("bannedWord") if isinstance(props, dict) else None
        detail = f" (banned word: {fragment(word)})" if isinstance(word, str) and word else ""
        return ContentPolicyViolation(f"The provider refused the prompt under its content policy: {said}{detail}")
    if banned := _banned(description):
        return banned
    if code == 23:
        return RateLimited(f"The provider's queue is full: {said}")
    if code == 4:
        return refusal(said)
    if code in (3, 9):
        return UpstreamFailed(f"The provider could not take the task now: {said}", code="upstream_unavailable")
    return UpstreamFailed(f"The provider did not take the task: {said}", code="upstream_rejected_task")


def split_id(upstream_id: str) -> tuple[str, int]:
    """(the proxy's task id, n) from the id we keep, `<task id>;n=<n>` (n 1 when no suffix)."""
    match = _N_SUFFIX.search(upstream_id)
    if match is None:
        return upstream_id, 1
    return upstream_id[: match.start()], int(match[1])


# -- check ----------------------------------------------------------------------------------------------------

def images(url: str, n: int) -> list[ImageOut]:
    """The grid for n = 1; otherwise its first n quadrants (U1..U4: row-major in the 2x2 grid)."""
    if n <= 1:
        return [ImageOut(url=url)]
    return [ImageOut(url=url, tile=(index, 2, 2)) for index in range(min(n, MAX_N))]


def task_failure(reason: str) -> GatewayError:
    return _banned(reason) or UpstreamFailed(f"The provider's task failed: {reason or 'no reason given'}",
                                             code="upstream_task_failed", retriable=False)


class MidjourneyDialect(Dialect):
    name = "midjourney"
    #: how a provider of this dialect may send its key (`auth` in the provider configuration)
    auth_schemes = frozenset({"bearer", SECRET_HEADER})

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return CARRIED

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        if req.n > MAX_N:  # validation refuses this for a midjourney model; a fallback route may still get it
            raise BadRequest(f"Invalid 'n': Midjourney makes one grid of {MAX_N} images per request.", param="n",
                             code="invalid_value")
        return [HttpCall("POST", mj_root(route) + SUBMIT_PATH, headers=headers(route), json={"prompt": prompt_for(req)},
                         timeout_s=route.config.timeout_s)]

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Outcome:
        payload = replies[0].json()
        if not isinstance(payload, dict):
            raise UpstreamFailed("The provider's submit answer is not an object.", code="bad_upstream_response")
        code = _code(payload)
        task_id = payload.get("result")
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            task_id = str(task_id)
        if code not in _PENDING_CODES:
            raise submit_error(code, payload)
        if not isinstance(task_id, str) or not task_id.strip():
            raise UpstreamFailed(f"The provider took the task (code {code}) without naming it.",
                                 code="bad_upstream_response")
        task_id = task_id.strip()
        return Pending(upstream_id=f"{task_id};n={req.n}", meta={"task_id": task_id, "submit_code": str(code)})

    def build_check(self, upstream_id: str, route: Route) -> HttpCall:
        task_id, _ = split_id(upstream_id)
        return HttpCall("GET", mj_root(route) + CHECK_PATH.format(id=quote(task_id, safe="")),
                        headers=headers(route, json_body=False),
                        timeout_s=min(CHECK_TIMEOUT_S, route.config.timeout_s))

    def run_check(self, upstream_id: str, route: Route, send: Send) -> Outcome:
        outcome = super().run_check(upstream_id, route, send)
        if isinstance(outcome, Done):  # parse_check cannot know n: the grid, as n quadrants
            _, n = split_id(upstream_id)
            url = outcome.images[0].url or ""
            return Done(images=images(url, n), usage={"images": n}, meta=outcome.meta)
        return outcome

    def parse_check(self, reply: HttpReply) -> Outcome:
        if reply.body.strip() in (b"", b"null"):
            return Failed(UpstreamFailed("The provider does not know the task (it may have expired).",
                                         code="upstream_task_lost", retriable=False))
        task = reply.json()
        if not isinstance(task, dict):
            raise UpstreamFailed("The provider's task answer is not an object.", code="bad_upstream_response")
        status = str(task.get("status") or "").strip().upper()
        reason = fragment(task.get("failReason") or "")
        if status == "SUCCESS":
            url = task.get("imageUrl")
            if not isinstance(url, str) or not url.strip():
                return Failed(UpstreamFailed("The provider's task succeeded without an image.", code="no_image",
                                             retriable=False))
            return Done(images=[ImageOut(url=url.strip())], usage={"images": 1})
        if status == "FAILURE":
            return Failed(task_failure(reason))
        if status == "CANCEL":
            return Failed(UpstreamFailed("The provider's task was cancelled upstream" +
                                         (f": {reason}" if reason else "."), code="upstream_task_cancelled",
                                         retriable=False))
        if status == "MODAL":
            return Failed(UpstreamFailed("The provider's task waits for a confirmation (a Discord modal) this "
                                         "gateway does not give.", code="upstream_task_needs_action",
                                         retriable=False))
        return Pending(upstream_id="", progress=parse_progress(task.get("progress")))
