"""The one dialect interface: every upstream is a module of pure functions behind it.

A dialect never performs I/O: it builds `HttpCall`s and parses `HttpReply`s (the transport's values), so its
translation is tested without a network, and retries, deadlines and error mapping live in one place
(`transport`). In the spirit of LiteLLM's image transformations (map the parameters with an explicit drop rule,
build the request, parse the answer) and new-api's task adaptors (submit returns an upstream id; check returns
a normalised status, progress and images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import GatewayError, UpstreamFailed
from ..inputs import Inputs
from ..request import ImageRequest
from ..scrub import PROMPT_CHARS, scrub
from ..transport import HttpCall, HttpReply, Send

if TYPE_CHECKING:  # at run time a cycle: routing -> provider_config -> the dialect registry -> here
    from ..routing import Route


@dataclass(frozen=True)
class ImageOut:
    """One generated image as the upstream gave it: a URL to fetch, or the bytes themselves."""

    url: str | None = None
    data: bytes | None = field(default=None, repr=False)
    revised_prompt: str | None = None
    #: (index, columns, rows): this image is cell `index` (row-major from 0) of the image at `url` cut into
    #: columns x rows equal cells (e.g. a quadrant of a 2x2 grid); None: the whole image. URL images only.
    #: The worker's fetch stage cuts it (Pillow, never in an API request's invocation) and fetches a URL that
    #: several tiles name once.
    tile: tuple[int, int, int] | None = None


GENERATE, EDIT, VARIATION = "generate", "edit", "variation"


@dataclass(frozen=True)
class Job:
    """What a task asks of its upstream: a generation, or an edit or a variation of its input files."""

    operation: str = GENERATE
    inputs: Inputs | None = None


@dataclass(frozen=True)
class Done:
    images: list[ImageOut]
    usage: dict[str, int] | None = None
    upstream_id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)  # e.g. upstream request_id, kept for support


@dataclass(frozen=True)
class Pending:
    upstream_id: str
    progress: int = 0
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    error: GatewayError


Outcome = Done | Pending | Failed


class Dialect:
    """Base of every dialect. HTTP dialects implement the four pure functions; `submit`/`check` run them."""

    name: ClassVar[str]
    #: what a provider of this dialect must configure (checked when the configuration is loaded, see
    #: provider_config): "base_url", "key" (one of api_key, api_key_env, api_key_secret), and "region" (an AWS
    #: region, for a dialect signed with the function's role)
    needs: ClassVar[frozenset[str]] = frozenset({"base_url", "key"})

    #: what this dialect can ask its upstream for: "generate", and "edit" / "variation" where it has those
    #: endpoints (routes whose dialect cannot are skipped for that operation, see capabilities)
    operations: ClassVar[frozenset[str]] = frozenset({GENERATE})

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        """The optional request fields this dialect puts into its upstream request for `model` and `operation`,
        as given or translated by its rules; every other field a client sets is dropped, never mangled. What a
        dialect declares here is what it sends: tests/unit/test_dialect_fields.py checks that these fields, and
        only these, change what goes upstream. A dialect without an upstream carries nothing."""
        return frozenset()

    def model_problem(self, model: str) -> str | None:
        """Why this dialect cannot serve the upstream model `model` at all (checked when the provider configuration
        is loaded), or None. Most dialects pass any name on."""
        return None

    # -- pure translation -------------------------------------------------------------------------------
    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        raise NotImplementedError

    def build_edit(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        raise NotImplementedError(f"{self.name} has no edit endpoint")

    def build_variation(self, req: ImageRequest, route: Route, inputs: Inputs) -> list[HttpCall]:
        raise NotImplementedError(f"{self.name} has no variation endpoint")

    def build_calls(self, req: ImageRequest, route: Route, job: Job) -> list[HttpCall]:
        """The calls of `job`: every operation's answer has the generation's shape, so `parse_submit` reads it."""
        if job.operation == EDIT:
            return self.build_edit(req, route, job.inputs or Inputs(images=[]))
        if job.operation == VARIATION:
            return self.build_variation(req, route, job.inputs or Inputs(images=[]))
        return self.build_submit(req, route)

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Outcome:
        raise NotImplementedError

    def build_check(self, upstream_id: str, route: Route) -> HttpCall:
        raise NotImplementedError(f"{self.name} is a synchronous dialect")

    def parse_check(self, reply: HttpReply) -> Outcome:
        raise NotImplementedError(f"{self.name} is a synchronous dialect")

    def build_cancel(self, upstream_id: str, route: Route, upstream: Mapping[str, Any]) -> list[HttpCall]:
        """The calls that cancel the upstream's job `upstream_id` (`upstream`: the task's stored upstream meta,
        what the submit's and checks' `meta` left there); none when the upstream cannot cancel (the default).
        Sent best-effort once our task is cancelled (`worker.cancel_upstream`): their answers are not read, and
        a failure never fails the client's cancel."""
        return []

    # -- running ----------------------------------------------------------------------------------------
    def submit(self, req: ImageRequest, route: Route, send: Send, job: Job | None = None) -> Outcome:
        """Submit the request upstream (a generation, or the edit or variation `job` says). Not overridden: what
        leaves here is scrubbed with the route's key."""
        return scrubbed(self.run_submit(req, route, send, job or Job()), route)

    def check(self, upstream_id: str, route: Route, send: Send, *,
              upstream: Mapping[str, Any] | None = None) -> Outcome:
        """Check an async upstream's task. `upstream` is the task's stored upstream meta (the `meta` of the
        submit's Pending, e.g. URLs the upstream said to check at). Not overridden: what leaves here is scrubbed
        with the route's key."""
        return scrubbed(self.run_check_with(upstream_id, route, send, upstream or {}), route)

    def run_check_with(self, upstream_id: str, route: Route, send: Send, upstream: Mapping[str, Any]) -> Outcome:
        """A check that needs more than the upstream id overrides this; by default the meta is not needed and
        the check is `run_check` (one `build_check` call read by `parse_check`)."""
        return self.run_check(upstream_id, route, send)

    def run_submit(self, req: ImageRequest, route: Route, send: Send, job: Job) -> Outcome:
        calls = self.build_calls(req, route, job)
        try:
            if len(calls) == 1:
                replies = [send(calls[0])]
            else:  # fan-out (e.g. one call per image): in parallel, all must succeed
                with ThreadPoolExecutor(max_workers=min(len(calls), 8)) as pool:
                    replies = list(pool.map(send, calls))
        except GatewayError as exc:
            return Failed(exc)
        return read_answer(self.parse_submit, req, replies)

    def run_check(self, upstream_id: str, route: Route, send: Send) -> Outcome:
        try:
            reply = send(self.build_check(upstream_id, route))
        except GatewayError as exc:
            return Failed(exc)
        return read_answer(self.parse_check, reply)


def read_answer(parse: Callable[..., Outcome], *args: Any) -> Outcome:
    """Run a parse function over an upstream's answer. The answer is untrusted: a shape the parser did not
    expect (a list where an object was, a number for a URL) is the upstream's failure, never a crash."""
    try:
        return parse(*args)
    except GatewayError as exc:
        return Failed(exc)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        return Failed(UpstreamFailed(f"The provider's answer had an unexpected shape ({type(exc).__name__}).",
                                     code="bad_upstream_response"))


def scrubbed(outcome: Outcome, route: Route) -> Outcome:
    """The outcome with every upstream text in it (error message, meta, revised prompts) scrubbed of the route's
    key and of credential-shaped tokens, and capped: upstreams echo what they were sent (see `scrub`)."""
    secrets = (route.api_key,)
    if isinstance(outcome, Failed):
        return Failed(outcome.error.scrubbed(secrets))
    meta = {key: scrub(value, secrets) for key, value in outcome.meta.items()}
    if isinstance(outcome, Pending):
        return replace(outcome, meta=meta)
    images = [replace(image, revised_prompt=scrub(image.revised_prompt, secrets, limit=PROMPT_CHARS))
              if image.revised_prompt else image for image in outcome.images]
    return replace(outcome, images=images, meta=meta)


def bearer(route: Route, *, json_body: bool = True) -> dict[str, str]:
    """The route's key as a Bearer token, and JSON's headers; without a JSON body (a multipart body, whose
    Content-Type and boundary the transport sets, or a GET), no Content-Type."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"} if json_body else \
        {"Accept": "application/json"}
    key = route.api_key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def translatable_fields(req: ImageRequest, fields: frozenset[str]) -> dict[str, Any]:
    """The optional fields the client set that are among `fields`, as given; the rest are dropped by rule."""
    return {k: v for k, v in req.upstream_fields().items() if k in fields}
