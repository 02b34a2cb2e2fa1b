"""The public image request (OpenAI Images API plus the gateway's extensions) and its validation.

Shape-level rules live here (types, ranges, enums); rules that depend on the model (which sizes, how many
images) live in `capabilities`. Both raise `BadRequest` naming the offending `param`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import BadRequest

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # the request is flat; deeper nesting is an attack on the parser or on the error echo
MAX_INT_DIGITS = 100  # beyond any field's bound; int() refuses > 4300 digits and is quadratic below that
ECHO_CHARS = 100  # how much of a client's value an error message shows
CONTENT_TYPE = "Content-Type"
_SURROGATE = re.compile(r"[\ud800-\udfff]")
STREAMING_UNSUPPORTED = ("Streaming is not supported by this gateway; omit `stream` or send false. To follow "
                         "progress, use the task API: send the request with `?async=true` or "
                         "`Prefer: respond-async`, then poll `GET /v1/images/tasks/{id}`, whose `progress` moves.")


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # No control characters: the name is echoed in errors and, on a wildcard route, sent upstream as is.
    model: str = Field(default="dall-e-2", min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
    prompt: str = Field(min_length=1, max_length=32000)
    n: int = Field(default=1, ge=1, le=10, strict=True)
    size: str | None = Field(default=None, max_length=32)
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100, strict=True)
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: str | None = Field(default=None, max_length=256)
    # Accepted so that no current OpenAI request is refused, and dropped by every dialect: the gateway does
    # not stream (partial images exist only in a stream), and input fidelity only means something for edits.
    partial_images: int | None = Field(default=None, ge=0, le=3, strict=True)
    input_fidelity: Literal["high", "low"] | None = None
    stream: Literal[False] | None = None
    # The gateway's own extensions, mapped by each dialect (README "Dialects").
    aspect_ratio: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?:\d+(\.\d+)?$")
    resolution: Literal["1k", "2k", "4k"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, strict=True)
    webhook: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")

    @field_validator("quality", "style", "response_format", "output_format", "background", "moderation",
                     "input_fidelity", "resolution", mode="before")
    @classmethod
    def _lower_enum(cls, value: Any) -> Any:
        # Relays send enum values with stray case or whitespace ("b64_json "); accept them normalised.
        return value.strip().lower() if isinstance(value, str) else value

    def upstream_fields(self) -> dict[str, Any]:
        """The fields a client set (defaults left out), for faithful translation."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


def parse_request(raw: str | bytes | dict | None) -> ImageRequest:
    """Parse and shape-validate a request body; every failure is a 400 naming the field."""
    if raw is None or raw == "" or raw == b"":
        raise BadRequest("The request body is empty: send a JSON object with at least `prompt`.")
    if isinstance(raw, bytes):
        raw = _utf8(raw)
    if isinstance(raw, str):
        raw = load_json_object(raw)
    elif isinstance(raw, dict):
        _check_tree(raw)  # a bus event or batch line is as untrusted as an HTTP body
    else:
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return ImageRequest.model_validate(raw)
    except ValidationError as exc:
        raise bad_request_from_errors(exc.errors()) from None


#: the text fields of an edit (OpenAI's edit reference, plus the gateway's `webhook`) and of a variation
EDIT_FIELDS = frozenset({"model", "prompt", "n", "size", "quality", "background", "input_fidelity", "output_format",
                         "output_compression", "response_format", "user", "partial_images", "stream", "moderation",
                         "webhook"})
VARIATION_FIELDS = frozenset({"model", "n", "size", "response_format", "user", "webhook"})
_FORM_INTEGERS = ("n", "output_compression", "partial_images")


class VariationRequest(ImageRequest):
    """A variation's fields: dall-e-2's, without a prompt."""

    # A variation takes no prompt: pydantic lets a subclass widen the field, mypy does not.
    prompt: str | None = Field(default=None, max_length=32000)  # type: ignore[assignment]


def parse_form_fields(fields: dict[str, str], operation: str) -> ImageRequest:
    """An edit's or a variation's text fields as the request they make; 400 naming the field otherwise.

    Form values are text: integers arrive as digits, `stream` as "true"/"false"."""
    allowed = EDIT_FIELDS if operation == "edit" else VARIATION_FIELDS
    for name in fields:
        if name not in allowed:
            raise BadRequest(f"Unknown parameter: '{printable(name, ECHO_CHARS)}'.", param=printable(name, 64),
                             code="unknown_parameter")
    raw: dict[str, Any] = dict(fields)
    for name in _FORM_INTEGERS:
        value = raw.get(name)
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() \
                and len(value.strip()) <= MAX_INT_DIGITS:
            raw[name] = int(value.strip())
    if isinstance(raw.get("stream"), str):
        raw["stream"] = {"false": False, "true": True}.get(raw["stream"].strip().lower(), raw["stream"])
    _check_tree(raw)
    try:
        return (VariationRequest if operation == "variation" else ImageRequest).model_validate(raw)
    except ValidationError as exc:
        raise bad_request_from_errors(exc.errors()) from None


class OverlongInteger:
    """An integer literal of more than MAX_INT_DIGITS digits, left unconverted: no field accepts it, so the
    model's validation refuses it naming the field (int() would fail inside the JSON parser instead)."""

    __slots__ = ("digits",)

    def __init__(self, digits: str):
        self.digits = digits

    def __repr__(self) -> str:
        return f"{self.digits[:20]}... ({len(self.digits.lstrip('-'))} digits)"


def _parse_int(literal: str) -> int | OverlongInteger:
    return int(literal) if len(literal) <= MAX_INT_DIGITS else OverlongInteger(literal)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; JSON has neither


def json_text(body: str | None, *, base64_encoded: bool, content_type: str | None) -> str:
    """The text of a JSON request body as API Gateway hands it over (text, or base64 in binary mode).

    400 naming `Content-Type` for another media type or a charset other than UTF-8 (a missing Content-Type
    counts as JSON: curl users forget it); 400 `invalid_json` for bytes that are not UTF-8."""
    _check_json_media_type(content_type)
    if not body:
        return ""
    if not base64_encoded:
        return body
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("The request body is marked as base64 but is not.", code="invalid_json") from None
    return _utf8(raw)


def _check_json_media_type(value: str | None) -> None:
    if value is None or not value.strip():
        return
    media, *params = (part.strip() for part in value.split(";"))
    charset = "utf-8"
    for name, _, setting in (p.partition("=") for p in params):
        if name.strip().lower() == "charset":
            charset = setting.strip().strip('"').lower()
    if media.lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise BadRequest(f"Unsupported {CONTENT_TYPE}: {echo(value)}. Send the body as JSON, with "
                         f"`{CONTENT_TYPE}: application/json` (UTF-8).", param=CONTENT_TYPE,
                         code="unsupported_content_type")


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8: send JSON encoded as UTF-8.",
                         code="invalid_json") from None


def load_json_object(text: str) -> dict[str, Any]:
    """The JSON object in `text`, checked so that what follows can trust it; Powertools parses the API's
    bodies with this too. 400 `invalid_json` for anything but one JSON object (arrays included: they are not
    batches) or for nesting deeper than MAX_JSON_DEPTH; a 400 naming the field for a lone surrogate (a
    `\\ud800` escape), since such a string can be neither stored nor sent back."""
    try:
        value = json.loads(text.removeprefix("\ufeff"), parse_int=_parse_int, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep(()) from None
    except ValueError:
        raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_kind(value)}.", code="invalid_json")
    _check_tree(value)
    return value


def _check_tree(root: dict[str, Any]) -> None:
    """Walk the parsed body (without recursion): depth within MAX_JSON_DEPTH, every key and string Unicode."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), root)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise _too_deep(path)
        if isinstance(value, str) and _SURROGATE.search(value):
            raise _surrogate(path)
        if isinstance(value, dict):
            for key in value:
                if _SURROGATE.search(str(key)):
                    raise _surrogate((*path, str(key)))
            stack.extend(((*path, str(key)), item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, str(i)), item) for i, item in reversed(list(enumerate(value))))


def _too_deep(path: tuple[str, ...]) -> BadRequest:
    param = printable(path[0], 120) if path else None
    where = f" (in '{param}')" if param else ""
    return BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels{where}.", param=param,
                      code="invalid_json")


def _surrogate(path: tuple[str, ...]) -> BadRequest:
    param = printable(".".join(path), 120)
    return BadRequest(f"Invalid value for '{param}': it holds a lone surrogate (an unpaired \\ud800-\\udfff "
                      "escape), which is not valid Unicode.", param=param, code="invalid_value")


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return "a number"


def printable(text: str, limit: int = ECHO_CHARS) -> str:
    """Client text as an error message may show it: at most `limit` characters, with control, format, line
    separator and surrogate characters escaped (it goes back to a client, and into logs)."""
    shown = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c
                    for c in text[:limit])
    return shown[:limit] + ("…" if len(shown) > limit or len(text) > limit else "")


def echo(value: Any) -> str:
    """A client's value for an error message: JSON for a scalar, its kind for a container, always short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value) if isinstance(value, OverlongInteger) else json.dumps(value, ensure_ascii=False, default=repr)
    return printable(text)


def bad_request_from_errors(errors: Sequence[Mapping[str, Any]], strip: tuple[str, ...] = ()) -> BadRequest:
    """The first pydantic error as a 400 naming its field (`strip` drops Powertools' "body"/"query" prefix)."""
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    if loc and loc[0] in strip:
        loc = loc[1:]
    param = printable(".".join(loc), 120) or None  # an unknown key is the client's text
    kind = first["type"]
    if kind == "json_invalid":
        return BadRequest("We could not parse the JSON body of your request.", code="invalid_json")
    if param is None or param.isdigit():
        return BadRequest("The request body must be a JSON object with at least `prompt`.", code="invalid_json")
    if kind == "missing":
        return BadRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return BadRequest(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    if param == "stream":
        return BadRequest(STREAMING_UNSUPPORTED, param=param)
    return BadRequest(f"Invalid value for '{param}': {echo(first.get('input'))}. {first['msg']}.", param=param,
                      code="invalid_value")
