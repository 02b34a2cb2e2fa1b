"""The transport against the loopback openai simulator: retries, Retry-After, error mapping, and `timeout_s` as
a bound on the whole call (a raw loopback server that drip-feeds its answer)."""

import re
import socket
import threading
import time

import pytest

from imagegw import transport
from imagegw.transport import HttpCall
from imagegw.errors import BadRequest, RateLimited, UpstreamFailed, UpstreamTimeout
from tests.simulators.openai_sim import Behaviour, OpenAISimulator


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BACKOFF_S", "0.01")
    transport.session.cache_clear()
    yield
    transport.session.cache_clear()


def call(sim, key="sk-upstream", body=None, timeout_s=10):
    return HttpCall("POST", sim.base_url + "/v1/images/generations", json=body or {"model": "dall-e-2", "prompt": "p"},
                    headers={"Authorization": f"Bearer {key}"}, timeout_s=timeout_s)


def test_429_then_503_are_retried_honouring_retry_after():
    with OpenAISimulator(behaviour=Behaviour(failures=[429, 503], retry_after="1")) as sim:
        started = time.monotonic()
        reply = transport.send(call(sim))
        assert reply.status == 200 and len(sim.generations) == 3
        assert time.monotonic() - started >= 2  # waited Retry-After: 1 s, twice


def test_persistent_failures_map_to_retriable_errors():
    with OpenAISimulator(behaviour=Behaviour(failures=[429] * 3)) as sim:
        with pytest.raises(RateLimited) as err:
            transport.send(call(sim))
        assert err.value.retriable and len(sim.generations) == 3
    with OpenAISimulator(behaviour=Behaviour(failures=[503] * 3)) as sim:
        with pytest.raises(UpstreamFailed) as err:
            transport.send(call(sim))
        assert err.value.retriable and err.value.status == 502


def test_credentials_and_request_errors():
    with OpenAISimulator() as sim:
        with pytest.raises(UpstreamFailed) as err:
            transport.send(call(sim, key="sk-secret-wrong"))
        assert err.value.code == "provider_auth_failed" and "sk-secret" not in err.value.message
        with pytest.raises(BadRequest) as err:
            transport.send(call(sim, body={"model": "dall-e-2", "prompt": "p", "size": "9x9"}))
        assert not err.value.retriable and "Invalid size" in err.value.message
        assert len(sim.generations) == 2  # no retry of a request error


def test_a_slow_upstream_times_out():
    with OpenAISimulator(behaviour=Behaviour(delay_s=2)) as sim:
        with pytest.raises(UpstreamTimeout):
            transport.send(call(sim, timeout_s=0.5))
        assert len(sim.generations) == 1  # a read timeout is not retried: the image may be in the works


class DripServer:
    """A raw HTTP server on 127.0.0.1 that answers one byte every `interval_s`: its whole answer
    (`drip="headers"`: even the status line crawls) or only the body after complete headers (`drip="body"`,
    with a Content-Length, or `drip="close"`, without one, the body ending when the connection closes).
    It stops by itself: after `max_connections` requests, when the client goes away, or on exit."""

    def __init__(self, drip, body=b'{"data": []}' + b" " * 200, interval_s=0.2, max_connections=3, tls=None):
        self.drip, self.body, self.interval_s, self.max_connections = drip, body, interval_s, max_connections
        self.tls = tls  # an ssl.SSLContext: serve HTTPS
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}/v1/images/generations"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self):
        while not self._stop.is_set() and self.connections < self.max_connections:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            try:
                conn = self.tls.wrap_socket(conn, server_side=True) if self.tls else conn
                with conn:
                    self._answer(conn)
            except OSError:
                continue  # the client hung up (or refused the handshake)

    def _answer(self, conn):
        conn.settimeout(2)
        request = b""
        while b"\r\n\r\n" not in request:  # the request line and headers
            chunk = conn.recv(65536)
            if not chunk:
                return
            request += chunk
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", head, re.I)[1])
        while len(body) < length:  # read it all: closing on unread data would reset the connection
            body += conn.recv(65536)
        length = b"" if self.drip == "close" else f"Content-Length: {len(self.body)}\r\n".encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + length + b"Connection: close\r\n\r\n"
        fast, slow = (b"", head + self.body) if self.drip == "headers" else (head, self.body)
        try:
            conn.sendall(fast)
            for i in range(len(slow)):
                if self._stop.wait(self.interval_s):
                    return
                conn.sendall(slow[i:i + 1])
        except OSError:
            return  # the client hung up: what a deadline does


@pytest.mark.parametrize("drip", ["headers", "body", "close"])
def test_timeout_s_bounds_the_whole_call_even_when_the_answer_drips(drip):
    with DripServer(drip) as server:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as err:
            transport.send(HttpCall("POST", server.url, json={"prompt": "p"}, timeout_s=1))
        elapsed = time.monotonic() - started
    assert elapsed < 2, elapsed  # the answer would take > 40 s at one byte every 0.2 s
    assert err.value.retriable and err.value.status == 504 and "1 s" in err.value.message
    assert server.connections == 1  # a timed-out call is not run again (the image may be in the works)


def test_retries_stay_within_timeout_s():
    with OpenAISimulator(behaviour=Behaviour(failures=[429] * 3, retry_after="5")) as sim:
        started = time.monotonic()
        with pytest.raises(RateLimited) as err:
            transport.send(call(sim, timeout_s=1))
        assert time.monotonic() - started < 1  # it did not sleep 5 s twice past its 1 s
        assert err.value.retriable and len(sim.generations) == 1  # the next route gets the request at once


def test_an_answer_in_time_is_untouched_and_the_connection_stays_usable():
    with OpenAISimulator(behaviour=Behaviour(mode="b64_json")) as sim:
        first = transport.send(call(sim, timeout_s=1))
        time.sleep(1.2)  # past the first call's deadline: its timer must not have harmed the pooled connection
        second = transport.send(call(sim, timeout_s=1))
    for reply in (first, second):
        assert reply.status == 200 and reply.json()["data"][0]["b64_json"]
    assert len(sim.generations) == 2


@pytest.mark.parametrize("drip", ["body", "close"])  # announced by Content-Length, or only counted
def test_an_answer_over_the_body_cap_is_refused(monkeypatch, drip):
    monkeypatch.setattr(transport, "MAX_BODY_BYTES", 4096)
    with DripServer(drip, body=b'{"data": [{"b64_json": "' + b"A" * 20_000 + b'"}]}', interval_s=0) as server:
        with pytest.raises(UpstreamFailed) as err:
            transport.send(HttpCall("POST", server.url, json={"prompt": "p"}, timeout_s=5))
    assert err.value.code == "upstream_response_too_large"


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A server context with a self-signed certificate for 127.0.0.1, trusted by the transport's session."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    monkeypatch.setattr(transport.session(), "verify", str(cert_path))
    return context


def test_an_https_answer_in_time_passes(tls):
    with DripServer("body", interval_s=0, tls=tls) as server:
        reply = transport.send(HttpCall("POST", server.url, json={"prompt": "p"}, timeout_s=5))
    assert reply.status == 200 and reply.json() == {"data": []}


@pytest.mark.parametrize("drip", ["headers", "body"])
def test_the_deadline_also_ends_a_dripping_https_answer(tls, drip):
    with DripServer(drip, tls=tls) as server:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            transport.send(HttpCall("POST", server.url, json={"prompt": "p"}, timeout_s=1))
    assert time.monotonic() - started < 2
