"""SSRF guard and streamed download (imagegw.safe_fetch). Only loopback HTTP; DNS is always stubbed."""

from __future__ import annotations

import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3.util.connection
from PIL import Image

from imagegw import safe_fetch
from imagegw.errors import BadRequest, UpstreamFailed, UpstreamTimeout
from imagegw.safe_fetch import UnsafeURL, detect_image_type, is_public_address, open_image
from tests.simulators.fault_sim import FaultSimulator


def make_png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = make_png()


@dataclass
class Drip:
    """A body sent one byte every `every` seconds (until the client leaves or the server stops)."""

    data: bytes
    every: float


class LoopbackServer:
    """http.server on 127.0.0.1:0; routes map path -> (status, headers, body or Drip)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes | Drip]] = {}
        self.hosts: list[str] = []
        self.paths: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hosts.append(self.headers.get("Host", ""))
                outer.paths.append(self.path)
                status, headers, body = outer.routes.get(self.path, (404, {}, b"missing"))
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if isinstance(body, Drip):
                        for i in range(len(body.data)):  # bounded by the body's length
                            if outer.stop.wait(body.every):
                                break
                            self.wfile.write(body.data[i:i + 1])
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client stopped reading on purpose (cap reached, time budget spent)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def stub_resolver(mapping: dict[str, list[str]]):
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in mapping:
            raise socket.gaierror(f"unknown host {host}")
        return list(mapping[host])

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every TCP connect; fail the test if one targets anything but loopback."""
    seen: list[tuple[str, int]] = []
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        seen.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            pytest.fail(f"connection attempted to {address}")
        return real(address, *args, **kwargs)

    def never(*args, **kwargs):
        pytest.fail("urllib3's unguarded create_connection was used")

    monkeypatch.setattr(socket, "create_connection", guarded)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", never)
    return seen


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        pytest.fail(f"a TCP connection was attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", forbidden)


# --- address policy -----------------------------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "127.1.2.3", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "fd00::1", "fc00::1", "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "0.0.0.0", "::", "224.0.0.1", "ff02::1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
    "192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1", "192.0.0.8", "2001:db8::1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "::10.0.0.1",  # IPv4-compatible (deprecated)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fec0::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("addr", REFUSED)
def test_non_public_addresses_are_refused(addr: str) -> None:
    assert not is_public_address(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ALLOWED)
def test_public_addresses_are_allowed(addr: str) -> None:
    assert is_public_address(ipaddress.ip_address(addr))


def test_allow_loopback_admits_only_loopback() -> None:
    for addr in ("127.0.0.1", "127.9.9.9", "::1"):
        assert is_public_address(ipaddress.ip_address(addr), allow_loopback=True)
    for addr in ("10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "0.0.0.0", "fd00::1", "64:ff9b::7f00:1"):
        assert not is_public_address(ipaddress.ip_address(addr), allow_loopback=True)


def test_unsafe_url_is_a_bad_request() -> None:
    err = UnsafeURL("nope")
    assert isinstance(err, BadRequest) and err.code == "unsafe_url" and err.status == 400


# --- refusal before connecting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr",
    ["127.0.0.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "fd00::1",
     "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"],
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_host_resolving_to_non_public_is_refused_before_connect(no_connections, addr: str, scheme: str) -> None:
    resolver = stub_resolver({"evil.test": [addr]})
    with pytest.raises(UnsafeURL):
        open_image(f"{scheme}://evil.test/x.png", max_bytes=1000, resolver=resolver)
    assert resolver.calls == [("evil.test", 80 if scheme == "http" else 443)]


def test_any_bad_address_refuses(no_connections) -> None:
    resolver = stub_resolver({"mixed.test": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(UnsafeURL):
        open_image("http://mixed.test/x.png", max_bytes=1000, resolver=resolver)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x.png", "http://10.0.0.1:8080/x", "http://169.254.169.254/latest/meta-data/",
     "http://[::1]/x", "http://[::ffff:127.0.0.1]/x", "https://[fd00::1]/x", "http://0.0.0.0/", "http://[::]/",
     "http://100.64.0.1/"],
)
def test_literal_ip_urls_are_refused(no_connections, url: str) -> None:
    resolver = stub_resolver({})
    with pytest.raises(UnsafeURL):
        open_image(url, max_bytes=1000, resolver=resolver)
    assert resolver.calls == []


def test_literal_ip_checked_at_connect_time_too(no_connections) -> None:
    # Numeric forms the URL check does not recognise still end up validated by the connection layer.
    resolver = stub_resolver({"2130706433": ["127.0.0.1"]})
    with pytest.raises(UnsafeURL):
        open_image("http://2130706433/x", max_bytes=1000, resolver=resolver)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://example.com/_x", "data:image/png;base64,AAAA",
     "dict://example.com:11211/", "javascript:alert(1)", "", "example.com/x.png", "http:///x.png"],
)
def test_non_http_urls_are_refused(no_connections, url: str) -> None:
    with pytest.raises(UnsafeURL):
        open_image(url, max_bytes=1000, resolver=stub_resolver({}))


@pytest.mark.parametrize(
    "url",
    ["http://user:pass@img.test/x.png", "http://img.test@10.0.0.1/x.png", "http://user@img.test/x.png",
     "https://:@img.test/x"],
)
def test_userinfo_is_refused(no_connections, url: str) -> None:
    with pytest.raises(UnsafeURL):
        open_image(url, max_bytes=1000, resolver=stub_resolver({"img.test": ["93.184.216.34"]}))


def test_loopback_refused_without_allow_loopback(no_connections) -> None:
    with pytest.raises(UnsafeURL):
        open_image("http://img.test:1/x", max_bytes=1000, resolver=stub_resolver({"img.test": ["127.0.0.1"]}))


# --- against a loopback server ----------------------------------------------------------------------


def test_pinned_connection_keeps_hostname(server: LoopbackServer, connections) -> None:
    server.routes["/a.png"] = (200, {"Content-Type": "text/plain"}, PNG)
    resolver = stub_resolver({"img.test": ["127.0.0.1"]})
    with open_image(server.url("/a.png", "img.test"), max_bytes=10_000, resolver=resolver, allow_loopback=True) as img:
        body = img.raw.read()
        assert (img.content_type, img.extension) == ("image/png", "png")  # from bytes, not the header
    assert body == PNG
    assert server.hosts == [f"img.test:{server.port}"]
    assert connections == [("127.0.0.1", server.port)]
    assert resolver.calls == [("img.test", server.port)]


def test_redirect_to_internal_host_is_refused_before_connect(server: LoopbackServer, connections) -> None:
    server.routes["/go"] = (302, {"Location": "http://internal.test/secret"}, b"")
    resolver = stub_resolver({"internal.test": ["10.0.0.5"], "loopback.test": ["127.0.0.1"]})
    with pytest.raises(UnsafeURL):
        open_image(server.url("/go", "loopback.test"), max_bytes=10_000, resolver=resolver, allow_loopback=True)
    assert ("internal.test", 80) in resolver.calls
    assert connections == [("127.0.0.1", server.port)]  # only the first hop ever connected
    assert server.paths == ["/go"]


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/", "file:///etc/passwd",
               "gopher://loopback.test/", "http://u:p@loopback.test/"],
)
def test_redirect_to_refused_url_is_refused(server: LoopbackServer, connections, target: str) -> None:
    server.routes["/go"] = (301, {"Location": target}, b"")
    resolver = stub_resolver({"loopback.test": ["127.0.0.1"]})
    with pytest.raises(UnsafeURL):
        open_image(server.url("/go", "loopback.test"), max_bytes=10_000, resolver=resolver, allow_loopback=True)
    assert connections == [("127.0.0.1", server.port)]


def test_redirect_chain_to_image_works(server: LoopbackServer, connections) -> None:
    server.routes["/img.png"] = (200, {}, PNG)
    server.routes["/r/0"] = (307, {"Location": "/img.png"}, b"")
    server.routes["/r/1"] = (303, {"Location": server.url("/r/0", "other.test")}, b"")
    server.routes["/r/2"] = (308, {"Location": "/r/1"}, b"")
    server.routes["/r/3"] = (301, {"Location": "/r/2"}, b"")
    server.routes["/r/4"] = (302, {"Location": "/r/3"}, b"")
    resolver = stub_resolver({"loopback.test": ["127.0.0.1"], "other.test": ["127.0.0.2", "127.0.0.1"]})
    with open_image(server.url("/r/4", "loopback.test"), max_bytes=10_000, resolver=resolver,
                    allow_loopback=True) as img:
        assert img.raw.read() == PNG
        assert img.url == server.url("/img.png", "other.test")
    assert server.paths == ["/r/4", "/r/3", "/r/2", "/r/1", "/r/0", "/img.png"]  # exactly 5 redirects
    assert server.hosts[-1] == f"other.test:{server.port}"


def test_too_many_redirects(server: LoopbackServer, connections) -> None:
    for i in range(10):
        server.routes[f"/r/{i}"] = (302, {"Location": f"/r/{i + 1}"}, b"")
    resolver = stub_resolver({"loopback.test": ["127.0.0.1"]})
    with pytest.raises(UpstreamFailed) as exc:
        open_image(server.url("/r/0", "loopback.test"), max_bytes=10_000, resolver=resolver, allow_loopback=True)
    assert exc.value.retriable is False
    assert exc.value.code == "too_many_redirects"
    assert "redirect" in exc.value.message
    assert len(server.paths) == safe_fetch.MAX_REDIRECTS + 1


def test_body_over_cap_is_refused_while_streaming(server: LoopbackServer, connections) -> None:
    body = PNG[:64] + b"\0" * 200_000  # no Content-Length: HTTP/1.0 close-delimited
    server.routes["/big.png"] = (200, {}, body)
    with open_image(server.url("/big.png"), max_bytes=100_000, allow_loopback=True) as img:
        assert img.content_length is None
        got = 0
        with pytest.raises(UpstreamFailed) as exc:
            for _ in range(1000):  # bounded
                chunk = img.raw.read(8192)
                assert chunk, "stream ended before the cap was hit"
                got += len(chunk)
        assert exc.value.code == "image_too_large" and exc.value.retriable is False
        assert got <= 100_000
        assert img.raw.bytes_read == 100_001  # never pulled more than one byte past the cap


def test_read_all_is_capped_too(server: LoopbackServer, connections) -> None:
    server.routes["/big.png"] = (200, {}, PNG[:64] + b"\0" * 300_000)
    with open_image(server.url("/big.png"), max_bytes=200_000, allow_loopback=True) as img:
        with pytest.raises(UpstreamFailed) as exc:
            img.raw.read()
    assert exc.value.code == "image_too_large"


def test_small_cap_exceeded_by_first_chunk(server: LoopbackServer, connections) -> None:
    server.routes["/a.png"] = (200, {}, PNG)
    with pytest.raises(UpstreamFailed) as exc:
        open_image(server.url("/a.png"), max_bytes=len(PNG) - 1, allow_loopback=True)
    assert exc.value.code == "image_too_large"


def test_exact_cap_is_allowed(server: LoopbackServer, connections) -> None:
    server.routes["/a.png"] = (200, {}, PNG)
    with open_image(server.url("/a.png"), max_bytes=len(PNG), allow_loopback=True) as img:
        assert img.raw.read() == PNG


def test_content_length_over_cap_refused_before_reading(server: LoopbackServer, connections, monkeypatch) -> None:
    server.routes["/big.png"] = (200, {"Content-Length": "5000000"}, PNG)
    read_sizes: list[int] = []
    real_read = safe_fetch.CappedReader._upstream

    def spy(self, n):
        read_sizes.append(n)
        return real_read(self, n)

    monkeypatch.setattr(safe_fetch.CappedReader, "_upstream", spy)
    with pytest.raises(UpstreamFailed) as exc:
        open_image(server.url("/big.png"), max_bytes=1_000_000, allow_loopback=True)
    assert exc.value.code == "image_too_large" and exc.value.retriable is False
    assert read_sizes == []


def test_html_is_not_an_image(server: LoopbackServer, connections) -> None:
    server.routes["/page"] = (200, {"Content-Type": "image/png"}, b"<!doctype html><html><body>hi</body></html>")
    with pytest.raises(UpstreamFailed) as exc:
        open_image(server.url("/page"), max_bytes=10_000, allow_loopback=True)
    assert exc.value.code == "not_an_image" and exc.value.retriable is False


def test_empty_body_is_not_an_image(server: LoopbackServer, connections) -> None:
    server.routes["/empty"] = (200, {}, b"")
    with pytest.raises(UpstreamFailed) as exc:
        open_image(server.url("/empty"), max_bytes=10_000, allow_loopback=True)
    assert exc.value.code == "not_an_image"


@pytest.mark.parametrize("status,retriable", [(404, False), (403, False), (500, True), (503, True), (429, True)])
def test_http_errors(server: LoopbackServer, connections, status: int, retriable: bool) -> None:
    server.routes["/x"] = (status, {}, b"nope")
    with pytest.raises(UpstreamFailed) as exc:
        open_image(server.url("/x"), max_bytes=10_000, allow_loopback=True)
    assert exc.value.message == f"image download failed with HTTP {status}"
    assert exc.value.retriable is retriable


def test_connection_refused_is_retriable(connections) -> None:
    # Bind then close to get a loopback port nobody listens on.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(UpstreamFailed) as exc:
        open_image(f"http://127.0.0.1:{port}/x", max_bytes=10_000, allow_loopback=True)
    assert exc.value.retriable is True


def test_unresolvable_host_is_retriable_upstream_failure(no_connections) -> None:
    with pytest.raises(UpstreamFailed) as exc:
        open_image("http://nowhere.test/x", max_bytes=10_000, resolver=stub_resolver({}))
    assert exc.value.retriable is True


def test_read_timeout_maps_to_upstream_timeout(connections) -> None:
    from imagegw.errors import UpstreamTimeout

    # A listener that accepts but never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        port = listener.getsockname()[1]
        with pytest.raises(UpstreamTimeout):
            open_image(f"http://127.0.0.1:{port}/x", max_bytes=10_000, timeout=(1, 0.3), allow_loopback=True)
    finally:
        listener.close()


# --- sniffing -----------------------------------------------------------------------------------------


def test_detect_image_type() -> None:
    def encoded(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=fmt)
        return buf.getvalue()

    assert detect_image_type(encoded("PNG")) == ("image/png", "png")
    assert detect_image_type(encoded("JPEG")) == ("image/jpeg", "jpg")
    assert detect_image_type(encoded("WEBP")) == ("image/webp", "webp")
    assert detect_image_type(encoded("GIF")) == ("image/gif", "gif")
    assert detect_image_type(b"RIFF\0\0\0\0WAVE") is None
    assert detect_image_type(b"<html>") is None
    assert detect_image_type(b"") is None


# --- DNS rebinding and TLS with a pinned address --------------------------------------------------------


def test_every_new_connection_is_re_resolved_and_re_checked(server: LoopbackServer, connections) -> None:
    # First answer is acceptable, the next one rebinds to an internal address: the second hop (a new
    # connection, the test server closes after each response) must be refused, never connected.
    server.routes["/go"] = (302, {"Location": "/img.png"}, b"")
    server.routes["/img.png"] = (200, {}, PNG)
    answers = iter([["127.0.0.1"], ["10.0.0.5"], ["10.0.0.5"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    with pytest.raises(UnsafeURL):
        open_image(server.url("/go", "rebind.test"), max_bytes=10_000, resolver=rebinding, allow_loopback=True)
    assert calls == ["rebind.test", "rebind.test"]
    assert connections == [("127.0.0.1", server.port)]
    assert server.paths == ["/go"]


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[LoopbackServer, str, list[str | None]]]:
    """HTTPS loopback server with a certificate for img.test only; yields (server, ca_path, sni_names)."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "img.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("img.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sni: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    ctx.sni_callback = lambda sock, server_name, _ctx: sni.append(server_name)
    srv = LoopbackServer()
    srv.httpd.socket = ctx.wrap_socket(srv.httpd.socket, server_side=True)
    srv.thread.start()
    try:
        yield srv, str(cert_path), sni
    finally:
        srv.stop.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture
def trust_ca(monkeypatch: pytest.MonkeyPatch):
    def install(ca_path: str) -> None:
        real = safe_fetch.guarded_session

        def with_ca(**kwargs):
            session = real(**kwargs)
            session.verify = ca_path
            return session

        monkeypatch.setattr(safe_fetch, "guarded_session", with_ca)

    return install


def test_https_pinned_ip_keeps_sni_and_verifies_hostname(tls_server, trust_ca, connections) -> None:
    srv, ca_path, sni = tls_server
    srv.routes["/a.png"] = (200, {}, PNG)
    trust_ca(ca_path)
    url = f"https://img.test:{srv.port}/a.png"
    with open_image(url, max_bytes=10_000, resolver=stub_resolver({"img.test": ["127.0.0.1"]}),
                    allow_loopback=True) as img:
        assert img.raw.read() == PNG
    assert sni == ["img.test"]
    assert srv.hosts == [f"img.test:{srv.port}"]
    assert connections == [("127.0.0.1", srv.port)]


def test_https_certificate_for_another_name_fails(tls_server, trust_ca, connections) -> None:
    srv, ca_path, sni = tls_server
    srv.routes["/a.png"] = (200, {}, PNG)
    trust_ca(ca_path)
    with pytest.raises(UpstreamFailed):
        open_image(f"https://other.test:{srv.port}/a.png", max_bytes=10_000,
                   resolver=stub_resolver({"other.test": ["127.0.0.1"]}), allow_loopback=True)
    assert sni == ["other.test"]


def test_reads_are_full_like_a_file(server: LoopbackServer, connections) -> None:
    # s3transfer treats a short read as end of stream, so read(n) must return n bytes until EOF,
    # across the boundary between the sniffed first chunk and the rest.
    body = PNG[:64] + bytes(range(256)) * 1000
    server.routes["/a.png"] = (200, {}, body)
    with open_image(server.url("/a.png"), max_bytes=len(body), allow_loopback=True) as img:
        sizes = []
        for _ in range(100):  # bounded
            chunk = img.raw.read(100_000)
            if not chunk:
                break
            sizes.append(len(chunk))
        assert sizes == [100_000, 100_000, len(body) - 200_000]
        assert img.raw.bytes_read == len(body)


# --- total time budget ------------------------------------------------------------------------------------


def timed_open(url: str, max_seconds: float, **kwargs) -> tuple[pytest.ExceptionInfo, float]:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as exc:
        with open_image(url, max_bytes=10_000_000, allow_loopback=True, max_seconds=max_seconds, **kwargs) as img:
            img.raw.read()
    return exc, time.monotonic() - started


@pytest.mark.parametrize("drip_headers", [True, False], ids=["headers", "body"])
def test_drip_ends_in_timeout_within_the_budget(connections, drip_headers: bool) -> None:
    # Every read gets a byte well within its socket timeout: only the total budget can end this.
    with FaultSimulator("drip_image", drip_s=0.2, drip_headers=drip_headers) as sim:
        exc, elapsed = timed_open(sim.fault_url("drip.png"), max_seconds=1)
    assert 0.9 < elapsed < 2.5
    assert exc.value.code == "upstream_timeout" and exc.value.retriable is True
    assert "1 s" in exc.value.message


def test_drip_of_a_close_delimited_body_is_not_a_clean_end(connections) -> None:
    # Without Content-Length, the connection the budget cuts looks like the end of the body: it must not
    # pass for a complete (truncated) image.
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n" + PNG[:40])
            for byte in PNG[40:]:  # bounded by the image's length
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):  # already while sniffing the head, whose read the cut ended
            open_image(f"http://127.0.0.1:{listener.getsockname()[1]}/a.png", max_bytes=10_000,
                       allow_loopback=True, max_seconds=1)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    assert time.monotonic() - started < 2.5


def test_hang_ends_at_the_budget_not_the_read_timeout(connections) -> None:
    with FaultSimulator("hang_image") as sim:
        _, elapsed = timed_open(sim.fault_url("hang.png"), max_seconds=0.5, timeout=(5, 60))
    assert elapsed < 1.5


def test_the_budget_covers_redirect_hops(connections) -> None:
    # Each hop answers quickly, but the last one drips: the budget started at the first hop.
    with FaultSimulator("drip_image", drip_s=0.2) as sim:
        with LoopbackServer() as redirector:
            redirector.routes["/go"] = (302, {"Location": sim.fault_url("drip.png")}, b"")
            exc, elapsed = timed_open(redirector.url("/go"), max_seconds=1)
    assert elapsed < 2.5


def test_the_budget_timer_ends_with_the_download(server: LoopbackServer, connections) -> None:
    server.routes["/a.png"] = (200, {}, PNG)
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}
    with open_image(server.url("/a.png"), max_bytes=10_000, allow_loopback=True, max_seconds=30) as img:
        assert img.raw.read() == PNG
    for _ in range(50):  # bounded: the cancelled timer thread exits promptly
        left = {t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()} - before
        if not left:
            break
        time.sleep(0.02)
    assert not left


def test_https_drip_ends_in_timeout(tls_server, trust_ca, connections) -> None:
    # The budget cuts the connection under TLS too (the watched socket is a dup, not the wrapped original).
    srv, ca_path, _ = tls_server
    srv.routes["/drip.png"] = (200, {"Content-Length": str(len(PNG))}, Drip(PNG, 0.2))
    trust_ca(ca_path)
    exc, elapsed = timed_open(f"https://img.test:{srv.port}/drip.png", max_seconds=1,
                              resolver=stub_resolver({"img.test": ["127.0.0.1"]}))
    assert 0.9 < elapsed < 2.5
