"""The input images of an edit or a variation: read from the multipart request, checked, kept in the bucket.

OpenAI SDKs send `POST /v1/images/edits` and `/variations` as `multipart/form-data`: text fields, then one
`image` file (or several as `image[]`) and an optional `mask`. API Gateway hands the body over base64-encoded
(the template declares multipart/form-data a binary media type), at most 10 MB. Here:

- `parse_form` reads the body (the standard library's MIME parser: no dependency in the layer) into text
  fields and files; anything malformed is a 400.
- `check_files` decides each file's type by its magic bytes (PNG, JPEG, WebP; never the file name) and applies
  the model's rules (`capabilities.InputRules`): how many images, which types, how large, square, a mask of
  the image's size. Every refusal is a 400 naming the field, before anything is stored or sent.
- `store` keeps the files under `inputs/<task>/` before any upstream call, so a retry or a fallback route
  sends the very same bytes; the bucket's lifecycle rule removes them (template.yaml). `load` reads them back
  for the worker.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from . import image_header, storage
from .errors import BadRequest, GatewayError
from .safe_fetch import detect_image_type

MAX_MULTIPART_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
IMAGE_FIELDS = ("image", "image[]")
MASK_FIELD = "mask"
INPUT_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class InputFile:
    field: str  # "image" or "mask"
    filename: str
    content_type: str  # from the magic bytes
    data: bytes = dataclasses.field(repr=False)

    @property
    def extension(self) -> str:
        return INPUT_TYPES[self.content_type]


@dataclass(frozen=True)
class Form:
    fields: dict[str, str]
    images: list[InputFile]
    mask: InputFile | None


def body_bytes(body: str | None, *, base64_encoded: bool) -> bytes:
    if not body:
        return b""
    if not base64_encoded:
        return body.encode("utf-8", "surrogateescape")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("The request body is marked as base64 but is not.", code="invalid_multipart") from None


def parse_form(raw: bytes, content_type: str | None) -> Form:
    """Text fields, image files and the mask of a multipart/form-data body; 400 for anything else."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("Send this route's body as multipart/form-data (the image files and the fields), as the "
                         "OpenAI SDKs do.", param="Content-Type", code="unsupported_content_type")
    if "boundary=" not in content_type.lower():
        raise BadRequest("The multipart body has no boundary.", param="Content-Type", code="invalid_multipart")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1", "replace")
                                                  + b"\r\n\r\n" + raw)
    if not message.is_multipart() or message.defects:
        raise BadRequest("The multipart body could not be read.", code="invalid_multipart")
    fields: dict[str, str] = {}
    images: list[InputFile] = []
    mask: InputFile | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise BadRequest("A part of the multipart body has no field name.", code="invalid_multipart")
        payload = part.get_payload(decode=True)  # bytes for a leaf part (the body is never nested)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if name in IMAGE_FIELDS or name == MASK_FIELD:
            if filename is None and not data:
                continue
            file = _input_file("image" if name in IMAGE_FIELDS else MASK_FIELD, filename or name, data)
            if file.field == MASK_FIELD:
                if mask is not None:
                    raise BadRequest("Send at most one mask.", param="mask", code="invalid_value")
                mask = file
            else:
                images.append(file)
            continue
        if filename is not None:
            raise BadRequest(f"Unexpected file in field '{name}': only `image` and `mask` take files.", param=name,
                             code="unknown_parameter")
        if name in fields:
            raise BadRequest(f"The field '{name}' is sent twice.", param=name, code="invalid_value")
        try:
            fields[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"The field '{name}' is not UTF-8 text.", param=name, code="invalid_value") from None
    return Form(fields=fields, images=images, mask=mask)


def _input_file(name: str, filename: str, data: bytes) -> InputFile:
    detected = detect_image_type(data[:16])
    if detected is None or detected[0] not in INPUT_TYPES:
        raise BadRequest(f"The {name} is not a PNG, JPEG or WebP image.", param=name, code="invalid_image")
    return InputFile(field=name, filename=filename[:200], content_type=detected[0], data=data)


@dataclass(frozen=True)
class InputRules:
    """What a model takes as inputs (an edit's images and mask, or a variation's image)."""

    max_images: int = 16
    max_bytes: int = 50 * 1024 * 1024
    types: frozenset[str] = frozenset(INPUT_TYPES)
    square: bool = False
    mask_same_size: bool = False


def check_files(form: Form, rules: InputRules, *, model: str, mask_allowed: bool = True) -> None:
    """The model's input rules, each refusal a 400 naming the field."""
    if not form.images:
        raise BadRequest("Missing required parameter: 'image' (the image to edit, as a file).", param="image",
                         code="missing_required_parameter")
    if len(form.images) > rules.max_images:
        raise BadRequest(f"{model} takes at most {rules.max_images} image{'s' if rules.max_images > 1 else ''} "
                         f"(got {len(form.images)}).", param="image", code="invalid_value")
    if form.mask is not None and not mask_allowed:
        raise BadRequest("A variation takes no mask.", param="mask", code="unknown_parameter")
    for file in [*form.images, *([form.mask] if form.mask else [])]:
        allowed = rules.types if file.field == "image" else frozenset({"image/png"})
        if file.content_type not in allowed:
            kinds = ", ".join(sorted(INPUT_TYPES[t].upper() for t in allowed))
            raise BadRequest(f"{model} takes {kinds} {'images' if file.field == 'image' else 'masks'}, not "
                             f"{INPUT_TYPES[file.content_type].upper()}.", param=file.field, code="invalid_image")
        if len(file.data) > rules.max_bytes:
            raise BadRequest(f"Each {file.field} for {model} must be under {rules.max_bytes // (1024 * 1024)} MB.",
                             param=file.field, code="invalid_image")
    sizes = [_size(image) for image in form.images]  # each header read, so a bomb is refused here
    first = sizes[0]
    if rules.square and first[0] != first[1]:
        raise BadRequest(f"{model} takes a square image (got {first[0]}x{first[1]}).", param="image",
                         code="invalid_image")
    if form.mask is not None and not _has_alpha(form.mask.data):
        raise BadRequest("The mask must have an alpha channel: its fully transparent pixels mark where to edit.",
                         param="mask", code="invalid_image")
    if form.mask is not None and rules.mask_same_size and _size(form.mask) != first:
        width, height = _size(form.mask)
        raise BadRequest(f"The mask must be the image's size, {first[0]}x{first[1]} (got {width}x{height}).",
                         param="mask", code="invalid_image")


def _size(file: InputFile) -> tuple[int, int]:
    """Width and height from the header (never decoding), within the pixel budget (no bombs as inputs)."""
    try:
        header = image_header.checked(file.data, file.content_type, complete=True)
    except GatewayError:
        header = None
    if header is None:
        raise BadRequest(f"The {file.field} could not be read as an image, or it has more pixels than the gateway "
                         f"takes.", param=file.field, code="invalid_image")
    return header.width, header.height


def _has_alpha(png: bytes) -> bool:
    """Whether a PNG carries transparency: a colour type with alpha (4, 6), or a tRNS chunk before its data."""
    if len(png) > 25 and png[25] in (4, 6):
        return True
    head = png[:png.find(b"IDAT")] if b"IDAT" in png else png
    return b"tRNS" in head


def store(task_id: str, form: Form) -> dict[str, Any]:
    """Put the files under inputs/<task>/ (before any upstream call); the task's `inputs`: their keys."""
    keys = []
    for index, image in enumerate(form.images):
        keys.append(_put(f"inputs/{task_id}/image-{index}.{image.extension}", image))
    stored: dict[str, Any] = {"images": keys}
    if form.mask is not None:
        stored["mask"] = _put(f"inputs/{task_id}/mask.{form.mask.extension}", form.mask)
    return stored


def _put(key: str, file: InputFile) -> str:
    storage.s3().put_object(Bucket=storage.bucket(), Key=key, Body=file.data, ContentType=file.content_type)
    return key


@dataclass(frozen=True)
class Inputs:
    """An edit's or a variation's input files, as the worker hands them to a dialect."""

    images: list[InputFile]
    mask: InputFile | None = None


def load(stored: dict[str, Any]) -> Inputs:
    """The task's input files, read back from the bucket."""
    images = [_get(key, "image") for key in stored.get("images") or []]
    mask = _get(stored["mask"], MASK_FIELD) if stored.get("mask") else None
    return Inputs(images=images, mask=mask)


def _get(key: str, name: str) -> InputFile:
    data = storage.s3().get_object(Bucket=storage.bucket(), Key=key)["Body"].read()
    detected = detect_image_type(data[:16])
    content_type = detected[0] if detected else "application/octet-stream"
    return InputFile(field=name, filename=key.rsplit("/", 1)[-1], content_type=content_type, data=data)
