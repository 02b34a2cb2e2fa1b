"""Image storage in S3 (imagegw.storage) under moto; downloads come from a loopback HTTP server."""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from imagegw import safe_fetch, storage
from imagegw.errors import ServerError, UpstreamFailed, UpstreamTimeout
from imagegw.storage import StoredImage, presigned_url, read_base64, store_bytes, store_from_url
from tests.simulators.fault_sim import (
    FaultSimulator,
    bomb_png,
    gif_with_comment,
    jpeg_with_app_segments,
    jpeg_with_dimensions,
    png_with_frames_declared,
    webp_with_junk,
)

BUCKET = "test-images"
MIB = 1024 * 1024


def encoded(fmt: str, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


PNG = encoded("PNG")


def encoded_frames(fmt: str, frames: int, size: tuple[int, int] = (16, 16)) -> bytes:
    images = [Image.new("RGB", size, (30 * i, 120, 200)) for i in range(frames)]
    buf = io.BytesIO()
    extra = {"save_all": True, "append_images": images[1:]} if frames > 1 else {}
    images[0].save(buf, format=fmt, **extra)
    return buf.getvalue()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "PRESIGN_EXPIRES_S", "MAX_IMAGE_BYTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("IMAGE_BUCKET", BUCKET)
    monkeypatch.setenv("ALLOW_LOOPBACK_FETCH", "1")
    storage.s3.cache_clear()
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
    storage.s3.cache_clear()


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[dict[str, str], bytes]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                headers, body = outer.routes.get(self.path, ({}, b""))
                try:
                    self.send_response(200 if self.path in outer.routes else 404)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    view = memoryview(body)
                    for i in range(0, len(view), 256 * 1024):
                        self.wfile.write(view[i : i + 256 * 1024])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture
def upload_spy(aws, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Wraps storage.s3().upload_fileobj, recording the file object and every read size it asked for."""
    record: dict[str, list] = {"fileobjs": [], "reads": [], "put_object": []}
    client = storage.s3()
    real_upload = client.upload_fileobj
    real_put = client.put_object

    def upload(fileobj, bucket, key, **kwargs):
        record["fileobjs"].append(fileobj)
        real_read = fileobj.read

        def read(n=-1):
            data = real_read(n)
            record["reads"].append((n, len(data)))
            return data

        fileobj.read = read
        return real_upload(fileobj, bucket, key, **kwargs)

    def put_object(**kwargs):
        record["put_object"].append(kwargs["Key"])
        return real_put(**kwargs)

    monkeypatch.setattr(client, "upload_fileobj", upload)
    monkeypatch.setattr(client, "put_object", put_object)
    return record


def no_multipart_left(client) -> bool:
    return not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def all_keys(client) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


# --- pure helpers ---------------------------------------------------------------------------------------


def test_stored_image_item() -> None:
    img = StoredImage(key="images/t1/0.png", content_type="image/png", size=123, width=640, height=480)
    assert img.to_item() == {"key": "images/t1/0.png", "content_type": "image/png", "size": 123, "width": 640,
                             "height": 480}
    animated = StoredImage(key="images/t1/1.gif", content_type="image/gif", size=9, width=4, height=4, frames=3)
    assert animated.to_item()["frames"] == 3


def test_stored_image_item_without_dimensions() -> None:
    # An image whose dimensions are not known has no width or height in its item.
    img = StoredImage(key="images/t1/0.png", content_type="image/png", size=7)
    assert (img.width, img.height, img.frames) == (None, None, 1)
    assert img.to_item() == {"key": "images/t1/0.png", "content_type": "image/png", "size": 7}


# --- store_bytes ----------------------------------------------------------------------------------------


def test_store_bytes_png(aws) -> None:
    stored = store_bytes("images/t1/0", PNG)
    assert stored == StoredImage(key="images/t1/0.png", content_type="image/png", size=len(PNG), width=16, height=16)
    obj = aws.get_object(Bucket=BUCKET, Key="images/t1/0.png")
    assert obj["ContentType"] == "image/png"
    assert obj["Body"].read() == PNG


def test_store_bytes_uses_magic_for_type(aws) -> None:
    jpeg = encoded("JPEG")
    stored = store_bytes("images/t2/1", jpeg)
    assert (stored.key, stored.content_type) == ("images/t2/1.jpg", "image/jpeg")
    assert aws.head_object(Bucket=BUCKET, Key=stored.key)["ContentType"] == "image/jpeg"


def test_store_bytes_refuses_non_image(aws) -> None:
    with pytest.raises(UpstreamFailed) as exc:
        store_bytes("images/t1/0", b"<html>not an image</html>")
    assert exc.value.code == "not_an_image" and exc.value.retriable is False
    assert all_keys(aws) == []


def test_missing_bucket_env_is_a_server_error(aws, monkeypatch) -> None:
    monkeypatch.delenv("IMAGE_BUCKET")
    with pytest.raises(ServerError):
        store_bytes("images/t1/0", PNG)


# --- store_from_url -------------------------------------------------------------------------------------


def test_store_from_url_streams_to_s3(aws, server, upload_spy) -> None:
    server.routes["/a.png"] = ({"Content-Type": "application/octet-stream"}, PNG)
    stored = store_from_url(server.url("/a.png"), "images/t1/0")
    assert stored == StoredImage(key="images/t1/0.png", content_type="image/png", size=len(PNG), width=16, height=16)
    obj = aws.get_object(Bucket=BUCKET, Key="images/t1/0.png")
    assert obj["Body"].read() == PNG
    assert obj["ContentType"] == "image/png"
    # Streamed: a non-seekable capped reader went to upload_fileobj, read in bounded sizes only.
    assert len(upload_spy["fileobjs"]) == 1
    assert isinstance(upload_spy["fileobjs"][0], safe_fetch.CappedReader)
    # (s3transfer's small-object path ends with read() once the stream is exhausted: that returns nothing.)
    reads = upload_spy["reads"]
    assert reads and all(0 < n <= 8 * MIB or got == 0 for n, got in reads)
    assert sum(got for _, got in reads) == len(PNG)
    # Below the multipart threshold s3transfer itself sends one put_object with its bounded buffer.
    assert upload_spy["put_object"] == ["images/t1/0.png"]


def test_store_from_url_large_image_uses_multipart(aws, server, upload_spy, monkeypatch) -> None:
    monkeypatch.setattr(
        storage, "TRANSFER_CONFIG",
        storage.transfer_config(part_mib=5, in_memory_parts=2),
    )
    body = PNG[:64] + os.urandom(11 * MIB)
    server.routes["/big.png"] = ({}, body)  # close-delimited, no Content-Length
    stored = store_from_url(server.url("/big.png"), "images/t3/0", max_bytes=20 * MIB)
    assert stored.size == len(body)
    head = aws.head_object(Bucket=BUCKET, Key="images/t3/0.png")
    assert head["ContentLength"] == len(body)
    assert "-" in head["ETag"]  # multipart ETag: parts were uploaded as they arrived
    assert aws.get_object(Bucket=BUCKET, Key="images/t3/0.png")["Body"].read() == body
    reads = upload_spy["reads"]
    assert all(0 < n <= 5 * MIB and got <= n for n, got in reads)
    assert [got for _, got in reads] == [5 * MIB, 5 * MIB, len(body) - 10 * MIB, 0]
    assert "images/t3/0.png" not in upload_spy["put_object"]
    assert no_multipart_left(aws)


def test_store_from_url_over_cap_leaves_nothing(aws, server, monkeypatch) -> None:
    monkeypatch.setattr(
        storage, "TRANSFER_CONFIG",
        storage.transfer_config(part_mib=5, in_memory_parts=2),
    )
    server.routes["/big.png"] = ({}, PNG[:64] + b"\0" * (12 * MIB))
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/big.png"), "images/t4/0", max_bytes=7 * MIB)
    assert exc.value.code == "image_too_large"
    assert all_keys(aws) == []
    assert no_multipart_left(aws)  # the multipart upload was aborted


def test_store_from_url_max_bytes_from_env(aws, server, monkeypatch) -> None:
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(len(PNG) - 1))
    server.routes["/a.png"] = ({}, PNG)
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/a.png"), "images/t5/0")
    assert exc.value.code == "image_too_large"
    assert all_keys(aws) == []


def test_store_from_url_truncated_body_leaves_nothing(aws, server) -> None:
    server.routes["/cut.png"] = ({"Content-Length": str(len(PNG) + 1000)}, PNG)
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/cut.png"), "images/t6/0")
    assert exc.value.retriable is True
    assert all_keys(aws) == []


def test_store_from_url_not_an_image(aws, server) -> None:
    server.routes["/page"] = ({"Content-Type": "image/png"}, b"<!doctype html><p>nope</p>")
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/page"), "images/t7/0")
    assert exc.value.code == "not_an_image"
    assert all_keys(aws) == []


def test_store_from_url_refuses_loopback_unless_local_stack(aws, server, monkeypatch) -> None:
    monkeypatch.delenv("ALLOW_LOOPBACK_FETCH")
    server.routes["/a.png"] = ({}, PNG)
    with pytest.raises(safe_fetch.UnsafeURL):
        store_from_url(server.url("/a.png"), "images/t8/0")
    with pytest.raises(safe_fetch.UnsafeURL):
        store_from_url("http://img.test/a.png", "images/t8/0", resolver=lambda h, p: ["169.254.169.254"])
    assert all_keys(aws) == []


# --- presigned URLs and base64 ----------------------------------------------------------------------------


def test_presigned_url(aws) -> None:
    store_bytes("images/t1/0", PNG)
    url = presigned_url("images/t1/0.png")
    assert "images/t1/0.png" in url
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=3600" in url
    assert "X-Amz-Expires=60" in presigned_url("images/t1/0.png", 60)


def test_presigned_url_expiry_from_env(aws, monkeypatch) -> None:
    monkeypatch.setenv("PRESIGN_EXPIRES_S", "900")
    assert "X-Amz-Expires=900" in presigned_url("images/t1/0.png")


def test_presigned_url_path_style_for_local_endpoint(aws, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5999")
    storage.s3.cache_clear()
    url = presigned_url("images/t1/0.png")
    assert url.startswith(f"http://127.0.0.1:5999/{BUCKET}/images/t1/0.png?")
    assert "X-Amz-Signature=" in url


def test_read_base64_round_trips(aws) -> None:
    store_bytes("images/t1/0", PNG)
    assert base64.b64decode(read_base64("images/t1/0.png")) == PNG


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_read_base64_large_object(aws, extra: int) -> None:
    # Larger than one encoding chunk and not a multiple of 3, so the carry-over path is exercised.
    body = PNG[:64] + os.urandom(storage._B64_CHUNK * 2 + 64 + extra)
    stored = store_bytes("images/t9/0", body)
    encoded_body = read_base64(stored.key)
    assert encoded_body == base64.b64encode(body).decode()


# --- image headers: dimensions recorded, bombs refused before anything is stored ----------------------------


def over_budget_images() -> dict[str, bytes]:
    """Images a client could not decode: each is refused under the default budget (8192x8192 pixels)."""
    return {
        "png_bomb": bomb_png(),  # 48 KB declaring 20000x20000
        "jpeg_bomb": jpeg_with_dimensions(30000, 30000),
        "apng_frames": png_with_frames_declared(100_000),  # 64x64 x 100000 frames
        "truncated_png": bomb_png()[:30],  # signature and a cut IHDR
        "broken_jpeg": b"\xff\xd8\xff\xda\x00\x08" + bytes(200),  # image data before any frame header
    }


@pytest.mark.parametrize("name", list(over_budget_images()))
def test_store_bytes_refuses_bombs_and_broken_headers(aws, upload_spy, name: str) -> None:
    with pytest.raises(UpstreamFailed) as exc:
        store_bytes("images/t10/0", over_budget_images()[name])
    assert exc.value.code == "upstream_invalid_image" and exc.value.retriable is False
    assert exc.value.body()["error"]["type"] == "upstream_error"
    assert upload_spy["put_object"] == []
    assert all_keys(aws) == []


def test_store_bytes_animated_gif_over_budget(aws, monkeypatch) -> None:
    animated = encoded_frames("GIF", 4)  # 16x16 x 4 frames = 1024 pixels
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(UpstreamFailed) as exc:
        store_bytes("images/t11/0", animated)
    assert exc.value.code == "upstream_invalid_image"
    assert "16x16 x 4 frames" in exc.value.message
    assert all_keys(aws) == []
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1024")
    stored = store_bytes("images/t11/0", animated)
    assert (stored.width, stored.height, stored.frames) == (16, 16, 4)
    assert all_keys(aws) == ["images/t11/0.gif"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_store_bytes_records_dimensions(aws, fmt: str) -> None:
    data = encoded_frames(fmt, 1, size=(37, 23))
    stored = store_bytes("images/t12/0", data)
    assert (stored.width, stored.height, stored.frames) == (37, 23, 1)
    assert stored.to_item()["width"] == 37 and stored.to_item()["height"] == 23


@pytest.mark.parametrize("name", list(over_budget_images()))
def test_store_from_url_refuses_bombs_before_upload(aws, server, upload_spy, name: str) -> None:
    server.routes[f"/{name}"] = ({}, over_budget_images()[name])
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url(f"/{name}"), "images/t13/0")
    assert exc.value.code == "upstream_invalid_image" and exc.value.retriable is False
    assert upload_spy["fileobjs"] == []  # refused on the head: the upload never started
    assert all_keys(aws) == []
    assert no_multipart_left(aws)


def test_store_from_url_refuses_a_bomb_whose_body_is_large(aws, server, upload_spy) -> None:
    # The header alone decides: a 20000x20000 PNG followed by 12 MiB is refused before any part is read.
    server.routes["/big-bomb.png"] = ({}, bomb_png()[:33] + os.urandom(12 * MIB))
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/big-bomb.png"), "images/t14/0", max_bytes=20 * MIB)
    assert exc.value.code == "upstream_invalid_image"
    assert upload_spy["fileobjs"] == []
    assert all_keys(aws) == []


def test_store_from_url_records_dimensions(aws, server) -> None:
    data = encoded_frames("WEBP", 3, size=(37, 23))
    server.routes["/anim.webp"] = ({}, data)
    stored = store_from_url(server.url("/anim.webp"), "images/t15/0")
    assert (stored.key, stored.width, stored.height, stored.frames) == ("images/t15/0.webp", 37, 23, 3)
    assert aws.get_object(Bucket=BUCKET, Key=stored.key)["Body"].read() == data


def test_store_from_url_reads_a_jpeg_header_past_the_first_chunk(aws, server) -> None:
    # Three 65 KB EXIF-like segments put the frame header beyond the 64 KiB sniffed first: the head grows,
    # and every byte read for it is still uploaded.
    data = jpeg_with_app_segments(3)
    server.routes["/exif.jpg"] = ({}, data)
    stored = store_from_url(server.url("/exif.jpg"), "images/t16/0")
    assert (stored.width, stored.height, stored.size) == (37, 23, len(data))
    assert aws.get_object(Bucket=BUCKET, Key="images/t16/0.jpg")["Body"].read() == data


def test_store_from_url_jpeg_bomb_behind_large_segments(aws, server, upload_spy) -> None:
    server.routes["/exif-bomb.jpg"] = ({}, jpeg_with_dimensions(40000, 40000, jpeg_with_app_segments(3)))
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/exif-bomb.jpg"), "images/t17/0")
    assert "40000x40000" in exc.value.message
    assert upload_spy["fileobjs"] == []
    assert all_keys(aws) == []


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_store_from_url_counts_frames_past_the_head(aws, server, monkeypatch, fmt: str) -> None:
    # 100 KB of comment (GIF) or an unknown chunk (WebP) before the frames: the head holds none of them.
    pad = gif_with_comment if fmt == "GIF" else webp_with_junk
    data = pad(encoded_frames(fmt, 4), 100_000)
    server.routes["/anim"] = ({}, data)
    monkeypatch.setenv("MAX_IMAGE_PIXELS", str(16 * 16 * 4))
    stored = store_from_url(server.url("/anim"), "images/t20/0")
    assert (stored.width, stored.height, stored.frames) == (16, 16, 4)
    assert aws.get_object(Bucket=BUCKET, Key=stored.key)["Body"].read() == data


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_store_from_url_refuses_frames_past_the_head_and_aborts(aws, server, upload_spy, monkeypatch, fmt) -> None:
    # The frames come after 11 MiB: two 5 MiB parts are uploaded before the count goes over; that
    # multipart upload is aborted, nothing is left.
    monkeypatch.setattr(storage, "TRANSFER_CONFIG", storage.transfer_config(part_mib=5, in_memory_parts=2))
    pad = gif_with_comment if fmt == "GIF" else webp_with_junk
    server.routes["/anim"] = ({}, pad(encoded_frames(fmt, 4), 11 * MIB))
    monkeypatch.setenv("MAX_IMAGE_PIXELS", str(16 * 16 * 4 - 1))
    with pytest.raises(UpstreamFailed) as exc:
        store_from_url(server.url("/anim"), "images/t21/0", max_bytes=20 * MIB)
    assert exc.value.code == "upstream_invalid_image"
    assert "16x16 x 4 frames" in exc.value.message
    assert len(upload_spy["fileobjs"]) == 1  # refused while streaming, not on the head
    assert all_keys(aws) == []
    assert no_multipart_left(aws)


# --- the download's time budget ---------------------------------------------------------------------------


@pytest.mark.parametrize("drip_headers", [True, False], ids=["headers", "body"])
def test_store_from_url_drip_ends_in_timeout(aws, drip_headers: bool) -> None:
    with FaultSimulator("drip_image", drip_s=0.2, drip_headers=drip_headers) as sim:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as exc:
            store_from_url(sim.fault_url("drip.png"), "images/t18/0", max_seconds=1)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5
    assert exc.value.code == "upstream_timeout" and exc.value.retriable is True
    assert all_keys(aws) == []
    assert no_multipart_left(aws)


def test_store_from_url_time_budget_from_env(aws, monkeypatch) -> None:
    monkeypatch.setenv("MAX_DOWNLOAD_S", "0.5")
    with FaultSimulator("hang_image") as sim:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            store_from_url(sim.fault_url("hang.png"), "images/t19/0")
        assert time.monotonic() - started < 2
    assert all_keys(aws) == []
