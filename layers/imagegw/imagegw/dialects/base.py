"""The one dialect interface: every upstream is a module of pure functions behind it.

In the spirit of LiteLLM's image_generation transformations (map params with an explicit drop rule, build
the request, parse the response) and new-api's task adaptors (submit returns an upstream id; check returns a
normalised status, progress and images). A dialect never performs I/O itself: it builds `HttpCall`s and
parses `HttpReply`s; the transport runs the calls.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import GatewayError, UpstreamFailed
from ..inputs import InputFile, Inputs
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
    #: the optional request fields this dialect can carry upstream; any other set field is dropped by
    #: `translatable_fields` (documented per dialect in the README), never mangled.
    supported_params: ClassVar[frozenset[str]] = frozenset()
    #: what a provider of this dialect must configure (checked when the configuration is loaded, see routing):
    #: "base_url", and "key" (one of api_key, api_key_env, api_key_secret)
    needs: ClassVar[frozenset[str]] = frozenset({"base_url", "key"})

    #: what this dialect can ask its upstream for: "generate", and "edit" / "variation" where it has those
    #: endpoints (routes whose dialect cannot are skipped for that operation, see capabilities)
    operations: ClassVar[frozenset[str]] = frozenset({GENERATE})

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

    # -- running ----------------------------------------------------------------------------------------
    def submit(self, req: ImageRequest, route: Route, send: Send, job: Job | None = None) -> Outcome:
        """Submit the request upstream (a generation, or the edit or variation `job` says). Not overridden: what
        leaves here is scrubbed with the route's key."""
        return scrubbed(self.run_submit(req, route, send, job or Job()), route)

    def check(self, upstream_id: str, route: Route, send: Send) -> Outcome:
        """Check an async upstream's task. Not overridden: what leaves here is scrubbed with the route's key."""
        return scrubbed(self.run_check(upstream_id, route, send), route)

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


def image_items(items: Any) -> list[ImageOut]:
    """The images in an OpenAI-style `data` list, `[{url | b64_json, revised_prompt?}]`. Entries that are not
    such objects (a string, a URL that is not a string) are skipped: what is left is what can be stored."""
    images = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        revised = item.get("revised_prompt") if isinstance(item.get("revised_prompt"), str) else None
        if isinstance(item.get("b64_json"), str) and item["b64_json"].strip():
            images.append(ImageOut(data=decode_b64(item["b64_json"]), revised_prompt=revised))
        elif isinstance(item.get("url"), str) and item["url"].strip():
            images.append(ImageOut(url=item["url"].strip(), revised_prompt=revised))
    return images


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


def multipart_headers(route: Route) -> dict[str, str]:
    """The bearer headers without a Content-Type: the transport sets multipart's, with its boundary."""
    return {k: v for k, v in bearer(route).items() if k != "Content-Type"}


def form_files(inputs: Inputs, *, many_as_array: bool = True) -> tuple[tuple[str, tuple[str, bytes, str]], ...]:
    """The input files as OpenAI's API takes them: one image as `image`, several as `image[]` each (as the OpenAI
    SDKs send a list), then `mask`."""
    name = "image[]" if many_as_array and len(inputs.images) > 1 else "image"
    files = [(name, _file(image)) for image in inputs.images]
    if inputs.mask is not None:
        files.append(("mask", _file(inputs.mask)))
    return tuple(files)


def _file(file: InputFile) -> tuple[str, bytes, str]:
    return (file.filename, file.data, file.content_type)


def form_fields(values: dict[str, Any]) -> dict[str, str]:
    """Text fields of a multipart body: every value as the text an HTML form would send."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items() if v is not None}


def bearer(route: Route) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = route.api_key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def decode_b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise UpstreamFailed("The provider sent an image that is not valid base64.",
                             code="bad_upstream_response", retriable=False) from None


def translatable_fields(req: ImageRequest, supported: frozenset[str]) -> dict[str, Any]:
    """The optional fields the client set that this dialect can carry; the rest are dropped by rule."""
    return {k: v for k, v in req.upstream_fields().items() if k in supported}
