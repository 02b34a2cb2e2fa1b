"""The public image request (OpenAI Images API plus the gateway's extensions) and its validation.

Shape-level rules live here (types, ranges, enums); rules that depend on the model (which sizes, how many
images) live in `capabilities`. Both raise `BadRequest` naming the offending `param`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import BadRequest

MAX_BODY_BYTES = 64 * 1024


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    model: str = Field(default="dall-e-2", min_length=1, max_length=128)
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
    stream: Literal[False] | None = None
    # Gateway extensions (A1).
    aspect_ratio: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?:\d+(\.\d+)?$")
    resolution: Literal["1k", "2k", "4k"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, strict=True)
    webhook: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")

    @field_validator("quality", "style", "response_format", "output_format", "background", "moderation",
                     "resolution", mode="before")
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
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return ImageRequest.model_validate(raw)
    except ValidationError as exc:
        raise bad_request_from_errors(exc.errors()) from None


def bad_request_from_errors(errors: Sequence[dict[str, Any]], strip: tuple[str, ...] = ()) -> BadRequest:
    """The first pydantic error as a 400 naming its field (`strip` drops Powertools' "body"/"query" prefix)."""
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    if loc and loc[0] in strip:
        loc = loc[1:]
    param = ".".join(loc) or None
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
        return BadRequest("Streaming is not supported by this gateway; omit `stream`.", param=param)
    value = first.get("input")
    shown = json.dumps(value, ensure_ascii=False)[:100] if not isinstance(value, dict) else "an object"
    return BadRequest(f"Invalid value for '{param}': {shown}. {first['msg']}.", param=param,
                      code="invalid_value")
