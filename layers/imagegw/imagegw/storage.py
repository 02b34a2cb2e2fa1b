"""Generated images in S3: the gateway keeps its own copy of every image and hands out presigned URLs.

Provider URLs expire and provider bytes are untrusted, so results are copied into `IMAGE_BUCKET` under
`images/{task_id}/{index}.{ext}`, with the content type taken from the magic bytes. Downloads go through
`safe_fetch` (SSRF guard, byte cap, time budget) and are streamed to S3 so a Lambda never holds a whole image
from a URL. Every image's header is read first (`image_header`): one over the pixel budget, or whose header
is unreadable, is refused before anything is uploaded.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from . import image_header, safe_fetch, settings
from .errors import ServerError, UpstreamFailed

_MIB = 1024 * 1024


def transfer_config(*, part_mib: int = 8, in_memory_parts: int = 4) -> TransferConfig:
    """Uploads of streams we cannot seek: s3transfer buffers at most `in_memory_parts` parts of `part_mib`
    (its default would be 10 parts), so the memory an upload needs is bounded whatever the object's size.
    "classic" so this non-seekable path (and its abort-on-failure) is used even where awscrt is installed;
    older boto3 (before the CRT option existed) always behaves that way."""
    sizes = functools.partial(TransferConfig, multipart_threshold=part_mib * _MIB, multipart_chunksize=part_mib * _MIB,
                    max_concurrency=in_memory_parts)
    try:
        config = sizes(preferred_transfer_client="classic")
    except TypeError:
        config = sizes()
    config.max_in_memory_upload_chunks = in_memory_parts  # not a boto3 argument; s3transfer reads it
    return config


TRANSFER_CONFIG = transfer_config()  # images: at most 4 parts of 8 MiB held at once
_B64_CHUNK = 3 * 256 * 1024  # multiple of 3 so chunks encode independently without padding


@dataclass(frozen=True)
class StoredImage:
    key: str
    content_type: str
    size: int
    width: int | None = None  # from the image header; None on items stored before headers were read
    height: int | None = None
    frames: int = 1

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"key": self.key, "content_type": self.content_type, "size": self.size}
        if self.width is not None and self.height is not None:
            item.update(width=self.width, height=self.height)
        if self.frames != 1:
            item["frames"] = self.frames
        return item

    @classmethod
    def of(cls, key: str, content_type: str, size: int, header: image_header.ImageHeader) -> StoredImage:
        return cls(key=key, content_type=content_type, size=size, width=header.width, height=header.height,
                   frames=header.frames)


@functools.lru_cache(maxsize=1)
def s3() -> Any:
    """The shared S3 client (created on first use; `s3.cache_clear()` resets it, e.g. in tests).

    boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 by itself. Against such a local endpoint (moto
    server) path-style addressing keeps presigned URLs resolvable; on AWS the default (virtual-hosted)
    is kept. SigV4 always, so presigned URLs work in every region.
    """
    path_style = settings.current().s3_is_local
    return boto3.client("s3", config=Config(signature_version="s3v4",
                                            s3={"addressing_style": "path"} if path_style else None))


def bucket() -> str:
    name = settings.current().image_bucket
    if not name:
        raise ServerError("IMAGE_BUCKET is not configured.")
    return name


def _not_an_image() -> UpstreamFailed:
    return UpstreamFailed("The provider returned data that is not an image.", code="not_an_image", retriable=False)


def store_bytes(key_prefix: str, data: bytes) -> StoredImage:
    """Store image bytes (e.g. decoded b64 from a provider) at `{key_prefix}.{ext}`, if its header passes."""
    detected = safe_fetch.detect_image_type(data[:16])
    if detected is None:
        raise _not_an_image()
    content_type, ext = detected
    header = image_header.checked(data, content_type, complete=True)
    assert header is not None  # complete bytes: a header, or an error
    key = f"{key_prefix}.{ext}"
    s3().put_object(Bucket=bucket(), Key=key, Body=data, ContentType=content_type)
    return StoredImage.of(key, content_type, len(data), header)


def _streamed_header(image: safe_fetch.FetchedImage) -> image_header.ImageHeader:
    """The header of a download, read from its head (grown in steps up to image_header.HEADER_LIMIT)."""
    head = image.raw.head
    for _ in range(image_header.HEADER_LIMIT // safe_fetch.HEAD_BYTES + 1):
        header = image_header.checked(head, image.content_type, complete=image.raw.at_eof)
        if header is not None:
            return header
        head = image.raw.extend_head(safe_fetch.HEAD_BYTES)
    raise image_header.invalid_image("The provider returned an image whose header could not be found.")


def _watch_frames(image: safe_fetch.FetchedImage, header: image_header.ImageHeader) -> image_header.FrameWatch | None:
    """GIF and WebP state no frame count up front: keep counting past the head while the body streams."""
    if not image_header.FrameWatch.wanted(image.content_type):
        return None
    watch = image_header.FrameWatch(image.content_type, header)
    watch.feed(image.raw.head)
    image.raw.on_chunk = watch.feed
    return watch


def _max_image_bytes() -> int:
    return settings.current().max_image_bytes


def _max_download_s() -> float:
    return settings.current().max_download_s


def store_from_url(
    url: str,
    key_prefix: str,
    *,
    max_bytes: int | None = None,
    resolver: safe_fetch.Resolver | None = None,
    max_seconds: float | None = None,
) -> StoredImage:
    """Download `url` through the SSRF guard and stream it to `{key_prefix}.{ext}`.

    Memory stays bounded: the body is read in parts and uploaded as it arrives (multipart above the
    threshold). If the download fails midway (cap exceeded, time budget spent, connection lost)
    upload_fileobj aborts the multipart upload, and below the threshold nothing was put yet, so no partial
    object remains. The header is checked on the head of the body, before the upload starts; GIF and WebP
    frames are counted on as the body streams, and the upload is aborted once they are over the budget.
    """
    allow_loopback = safe_fetch.loopback_allowed()
    cap = max_bytes if max_bytes is not None else _max_image_bytes()
    budget_s = max_seconds if max_seconds is not None else _max_download_s()
    target_bucket = bucket()
    with safe_fetch.open_image(
        url, max_bytes=cap, resolver=resolver, allow_loopback=allow_loopback, max_seconds=budget_s
    ) as image:
        header = _streamed_header(image)
        watch = _watch_frames(image, header)
        key = f"{key_prefix}.{image.extension}"
        s3().upload_fileobj(
            image.raw,
            target_bucket,
            key,
            ExtraArgs={"ContentType": image.content_type},
            Config=TRANSFER_CONFIG,
        )
        return StoredImage.of(key, image.content_type, image.raw.bytes_read, watch.header if watch else header)


def fetch_image(
    url: str,
    *,
    max_bytes: int | None = None,
    resolver: safe_fetch.Resolver | None = None,
    max_seconds: float | None = None,
) -> tuple[bytes, str]:
    """Download `url` whole (the same SSRF guard, byte cap and time budget as `store_from_url`), its header
    checked against the pixel budget before the rest is read: (bytes, content type). For images the worker
    must decode (tiles cut from a grid); anything else is streamed by `store_from_url`."""
    with safe_fetch.open_image(
        url,
        max_bytes=max_bytes if max_bytes is not None else _max_image_bytes(),
        resolver=resolver,
        allow_loopback=safe_fetch.loopback_allowed(),
        max_seconds=max_seconds if max_seconds is not None else _max_download_s(),
    ) as image:
        _watch_frames(image, _streamed_header(image))  # GIF/WebP frames counted as the rest is read
        return image.raw.read(), image.content_type


def presigned_url(key: str, expires_s: int | None = None) -> str:
    if expires_s is None:
        expires_s = settings.current().presign_expires_s
    return s3().generate_presigned_url(
        "get_object", Params={"Bucket": bucket(), "Key": key}, ExpiresIn=expires_s
    )


def read_base64(key: str) -> str:
    """The stored object as base64 (for response_format=b64_json), encoded chunk by chunk."""
    body = s3().get_object(Bucket=bucket(), Key=key)["Body"]
    parts: list[str] = []
    carry = b""
    try:
        while chunk := body.read(_B64_CHUNK):
            chunk = carry + chunk
            cut = len(chunk) - len(chunk) % 3  # encode whole 3-byte groups; keep the rest for the next round
            parts.append(base64.b64encode(chunk[:cut]).decode("ascii"))
            carry = chunk[cut:]
    finally:
        body.close()
    parts.append(base64.b64encode(carry).decode("ascii"))
    return "".join(parts)


def discard_images(task_id: str) -> int:
    """Delete every stored image of a task that will not show them (cancelled, failed, moved to another
    route); returns how many were deleted. Listed rather than remembered: a worker that failed half-way does
    not know what it put."""
    target_bucket = bucket()
    listing = s3().list_objects_v2(Bucket=target_bucket, Prefix=f"images/{task_id}/")
    keys = [{"Key": obj["Key"]} for obj in listing.get("Contents", [])]
    if keys:
        s3().delete_objects(Bucket=target_bucket, Delete={"Objects": keys, "Quiet": True})
    return len(keys)
