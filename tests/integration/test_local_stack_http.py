"""The local API Gateway's HTTP layer under load and abuse, in process, in front of a tiny function.

The gateway (local/apigateway.py) and its execution environments (local/environments.py) run as the stack runs
them, but in front of a one-file handler written here, so each test starts in about a second: a burst of
connections all answered, every malformed request answered (never a silent close), a function result API Gateway
would refuse answered 502 (the template's own gateway responses), and the pool growing, throttling and shrinking
like Lambda.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local import template
from local.apigateway import ApiGateway, MalformedResult, _proxy_result
from local.environments import EnvironmentPool
from local.template import ApiRoute, Function

SHIPPED = template.load(Path(__file__).resolve().parents[2])  # its GatewayResponses answer what the gateway does

HANDLER = '''
import json, os, time

def lambda_handler(event, context):
    """Echoes what it got; {"sleep": s} waits first; {"result": r} returns r as the proxy result."""
    request = json.loads(event["body"]) if event.get("body") and not event["isBase64Encoded"] else {}
    time.sleep(request.get("sleep", 0))
    if "result" in request:
        return request["result"]
    echo = {"pid": os.getpid(), "isBase64Encoded": event["isBase64Encoded"], "body": event.get("body"),
            "headers": event.get("headers")}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(echo)}
'''
MODULE = "local_stack_http_echo"
STATUS_TIMEOUT_S = 10
BURST_TIMEOUT_S = 20


def _function(code_dir: Path) -> Function:
    return Function(logical_id="EchoFunction", name="echo", code_dir=code_dir, handler=f"{MODULE}.lambda_handler",
                    layer_dirs=[], timeout_s=20, memory_mb=128, environment={})


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("echo_function")
    (directory / f"{MODULE}.py").write_text(HANDLER)
    return directory


class Gateway:
    def __init__(self, server: ApiGateway, pool: EnvironmentPool):
        self.server, self.pool, self.port = server, pool, server.port

    def request(self, raw: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], bytes]:
        return _exchange(self.port, raw, half_close=half_close)


def _gateway(code_dir: Path, **pool_options) -> Gateway:
    fn = _function(code_dir)
    routes = [ApiRoute(function=fn.logical_id, event="Echo", path="/v1/echo", method="ANY", stage="prod",
                       api="GatewayApi")]
    pool = EnvironmentPool({fn.logical_id: fn}, "us-east-1", **pool_options)
    server = ApiGateway(routes, pool, port=0, gateway_responses=SHIPPED.gateway_responses)
    pool.start()
    try:
        pool.wait_ready()
    except BaseException:
        server.server.server_close()
        pool.stop()
        raise
    server.start()
    return Gateway(server, pool)


@pytest.fixture
def make_gateway(code_dir: Path) -> Iterator:
    started: list[Gateway] = []

    def make(**pool_options) -> Gateway:
        started.append(_gateway(code_dir, **pool_options))
        return started[-1]

    yield make
    for gateway in started:
        gateway.server.stop()
        gateway.pool.stop()


@pytest.fixture(scope="module")
def gateway(code_dir: Path) -> Iterator[Gateway]:
    running = _gateway(code_dir, size=2, max_size=4)
    yield running
    running.server.stop()
    running.pool.stop()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased) and body of one response; raises if the connection closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an HTTP answer (got {data[:80]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def _exchange(port: int, raw: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=STATUS_TIMEOUT_S) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return _read_response(sock)


def _assert_openai_error(headers: dict[str, str], body: bytes) -> dict:
    assert headers.get("content-type") == "application/json", headers
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] and error["code"]
    return error


def _post(body: bytes | str, extra: str = "") -> bytes:
    payload = body.encode() if isinstance(body, str) else body
    return (f"POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


# -- a burst of connections -----------------------------------------------------------------------------------

Response = tuple[int, dict[str, str], bytes]


def burst(port: int, count: int, request: bytes) -> list[Response | str]:
    """`count` connections opened at once (non-blocking connects, then the requests): each one's response,
    or what went wrong instead (a reset, a timeout, a close without an answer)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        outcomes: dict[int, Response | str] = {}
        deadline = time.monotonic() + BURST_TIMEOUT_S  # for the whole burst, not per connection
        for i, sock in enumerate(socks):  # every request is sent before any answer is read: all at once
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock.sendall(request)
            except OSError as exc:
                outcomes[i] = f"{type(exc).__name__}: {exc}"
        for i, sock in enumerate(socks):
            if i not in outcomes:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    outcomes[i] = _read_response(sock)
                except OSError as exc:
                    outcomes[i] = f"{type(exc).__name__}: {exc}"
        return [outcomes[i] for i in range(count)]
    finally:
        for sock in socks:
            sock.close()


def test_a_burst_of_300_connections_is_all_answered(gateway: Gateway) -> None:
    request = b"GET /v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    started = time.monotonic()
    outcomes = [o if isinstance(o, str) else o[0] for o in burst(gateway.port, 300, request)]
    elapsed = time.monotonic() - started
    assert outcomes == [404] * 300, [o for o in outcomes if o != 404][:5]
    # With a listen backlog of 5, connections past the queue wait for retransmits (1 s, 3 s, ...) or time out.
    print(f"300 connections at once: all answered in {elapsed:.2f} s")
    assert elapsed < 3.0, f"300 connections took {elapsed:.2f} s"


def test_a_burst_of_invocations_is_all_answered(gateway: Gateway) -> None:
    request = _post('{"sleep": 0}', "Connection: close\r\n")
    outcomes = [o if isinstance(o, str) else o[0] for o in burst(gateway.port, 200, request)]
    assert all(o in (200, 429) for o in outcomes), sorted({str(o) for o in outcomes})
    assert outcomes.count(200) >= 100, outcomes


# -- malformed requests ---------------------------------------------------------------------------------------

CHUNKED = "POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
GET = "GET /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"

MALFORMED = {
    "bad chunk size line": (CHUNKED + "zz\r\nhello\r\n0\r\n\r\n", False, 400),
    "chunk shorter than declared, then EOF": (CHUNKED + "10\r\nabc", True, 400),
    "chunk longer than declared": (CHUNKED + "3\r\nabcdef\r\n0\r\n\r\n", False, 400),
    "chunked body cut before the last chunk": (CHUNKED + "3\r\nabc\r\n", True, 400),
    "negative Content-Length": ("POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\nabc", True,
                                400),
    "non-numeric Content-Length": ("POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\nabc",
                                   True, 400),
    "two different Content-Lengths": ("POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                                      "Content-Length: 3\r\n\r\n{}", True, 400),
    "Content-Length past the body, then half-close": (
        "POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{}", True, 400),
    "Content-Length and Transfer-Encoding": (
        "POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n", False, 400),
    "unsupported Transfer-Encoding": ("POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                                      True, 501),
    "Content-Length over 10 MB": (
        "POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20000000\r\n\r\n{}", False, 413),
    "over-long request line": ("GET /v1/" + "a" * 70000 + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", False, 414),
    "over-long header": (GET + "X-Long: " + "a" * 70000 + "\r\n\r\n", False, 431),
    "too many headers": (GET + "".join(f"X-H{i}: {i}\r\n" for i in range(120)) + "\r\n", False, 431),
    "header line without a colon": (GET + "this is not a header\r\n\r\n", False, 400),
    "header continuation line": (GET + " folded\r\n\r\n", False, 400),
    "empty request line": ("\r\n", True, 400),
    "request line without a version or path": ("GET\r\n\r\n", True, 400),
    "HTTP/2.0 request line": ("GET /v1/echo HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", False, 505),
    "unknown method": ("BREW /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", False, 501),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_every_malformed_request_gets_an_openai_shaped_answer(gateway: Gateway, name: str) -> None:
    raw, half_close, expected = MALFORMED[name]
    status, headers, body = gateway.request(raw.encode("latin-1"), half_close=half_close)
    assert status == expected, body[:300]
    _assert_openai_error(headers, body)
    assert headers.get("connection") == "close"  # where the request ended is unknown: never reuse the connection


def test_a_client_that_stops_sending_its_body_is_answered_408(make_gateway) -> None:
    gateway = make_gateway(size=1)
    gateway.server.server.RequestHandlerClass.timeout = 1  # READ_TIMEOUT_S is 60 s; this gateway's class only
    started = time.monotonic()
    status, headers, body = gateway.request(b"POST /v1/echo HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}")
    assert status == 408, body[:300]
    assert _assert_openai_error(headers, body)["code"] == "request_timeout"
    assert time.monotonic() - started < 5


def test_the_gateway_still_serves_after_a_bad_request(gateway: Gateway) -> None:
    assert gateway.request((CHUNKED + "zz\r\n").encode())[0] == 400
    status, _, body = gateway.request(_post('{"sleep": 0}'))
    assert status == 200, body[:300]


def test_a_non_utf8_header_value_reaches_the_function(gateway: Gateway) -> None:
    status, _, body = gateway.request(GET.encode() + b"X-Name: caf\xe9 \xff\r\n\r\n")
    assert status == 200, body[:300]
    assert json.loads(body)["headers"]["X-Name"] == "caf\xe9 \xff"  # as API Gateway: the bytes as ISO-8859-1


def test_a_non_utf8_body_reaches_the_function_base64_encoded(gateway: Gateway) -> None:
    status, _, body = gateway.request(_post(b"\xff\xfe\x00binary"))
    assert status == 200, body[:300]
    echo = json.loads(body)
    assert echo["isBase64Encoded"] is True and echo["body"] == "//4AYmluYXJ5"


def test_a_valid_chunked_body_reaches_the_function(gateway: Gateway) -> None:
    chunks = '4;ext=1\r\n{"sl\r\n8\r\neep": 0}\r\n0\r\nX-Trailer: 1\r\n\r\n'
    status, _, body = gateway.request((CHUNKED + chunks).encode())
    assert status == 200, body[:300]
    assert json.loads(body)["body"] == '{"sleep": 0}'


# -- function results API Gateway would refuse ----------------------------------------------------------------

INVALID_RESULTS = {
    "body with a lone surrogate": {"statusCode": 200, "body": "\ud800"},
    "header value with CRLF": {"statusCode": 200, "headers": {"X-A": "1\r\nSet-Cookie: x=1"}, "body": "{}"},
    "header value outside ISO-8859-1": {"statusCode": 200, "headers": {"X-A": "\u2603"}, "body": "{}"},
    "header name that is not a token": {"statusCode": 200, "headers": {"X A": "1"}, "body": "{}"},
    "statusCode out of range": {"statusCode": 1000, "body": "{}"},
    "statusCode as a string": {"statusCode": "200", "body": "{}"},
    "body that is not a string": {"statusCode": 200, "body": {"a": 1}},
    "invalid base64 body": {"statusCode": 200, "isBase64Encoded": True, "body": "not base64!"},
    "headers that are not an object": {"statusCode": 200, "headers": ["X-A", "1"], "body": "{}"},
    "no result at all": None,
}


@pytest.mark.parametrize("name", INVALID_RESULTS)
def test_an_invalid_function_result_is_a_502(gateway: Gateway, name: str, caplog: pytest.LogCaptureFixture) -> None:
    status, headers, body = gateway.request(_post(json.dumps({"result": INVALID_RESULTS[name]})))
    assert status == 502, body[:300]
    assert _assert_openai_error(headers, body)["code"] == "gateway_error"  # the template's DEFAULT_5XX
    assert headers.get("x-amzn-requestid") and headers["x-amzn-requestid"] in json.loads(body)["error"]["message"]
    assert any("malformed" in r.getMessage() and "EchoFunction" in r.getMessage() for r in caplog.records)


def test_proxy_result_with_a_lone_surrogate_is_malformed_not_an_exception() -> None:
    with pytest.raises(MalformedResult, match="body cannot be sent"):
        _proxy_result({"statusCode": 200, "body": "ok \ud800"}, "req-1")


def test_proxy_result_passes_a_valid_result_through() -> None:
    status, headers, payload = _proxy_result(
        {"statusCode": 201, "headers": {"A": "1"}, "multiValueHeaders": {"B": ["1", "2"]}, "body": "caf\u00e9"},
        "req-2")
    assert (status, payload) == (201, "caf\u00e9".encode())
    assert [h for h in headers if h[0] in ("A", "B")] == [("B", "1"), ("B", "2"), ("A", "1")]


# -- elastic execution environments ---------------------------------------------------------------------------

def _post_in_thread(port: int, body: dict, results: dict, key: object) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        try:
            results[key] = _exchange(port, _post(json.dumps(body)))
        except OSError as exc:
            results[key] = exc
        results[(key, "s")] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_busy_environments_start_another_rather_than_queueing(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=4)
    results: dict = {}
    threads = [_post_in_thread(gateway.port, {"sleep": 3}, results, i) for i in range(3)]
    for thread in threads:
        thread.join(timeout=20)
    answers = [results[i] for i in range(3)]
    assert all(not isinstance(a, Exception) and a[0] == 200 for a in answers), answers
    assert len({json.loads(a[2])["pid"] for a in answers}) == 3, "each concurrent request has its own environment"
    assert max(results[(i, "s")] for i in range(3)) < 3 + 4, "the requests ran one after another"
    assert gateway.pool.count == 3


def test_at_the_maximum_a_request_is_throttled_with_429(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=1, throttle_wait_s=1)
    results: dict = {}
    slow = _post_in_thread(gateway.port, {"sleep": 4}, results, "slow")
    time.sleep(0.5)  # the slow request holds the only environment
    started = time.monotonic()
    status, headers, body = gateway.request(_post('{"sleep": 0}'))
    elapsed = time.monotonic() - started
    assert status == 429, body[:300]
    error = _assert_openai_error(headers, body)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert int(headers["retry-after"]) >= 1
    assert 1 <= elapsed < 3, f"throttled after {elapsed:.2f} s"
    slow.join(timeout=10)
    assert results["slow"][0] == 200


def test_extra_environments_are_stopped_after_idling(make_gateway) -> None:
    gateway = make_gateway(size=1, max_size=3, idle_ttl_s=1)
    results: dict = {}
    threads = [_post_in_thread(gateway.port, {"sleep": 1.5}, results, i) for i in range(2)]
    for thread in threads:
        thread.join(timeout=20)
    assert [results[i][0] for i in range(2)] == [200, 200]
    assert gateway.pool.count == 2
    deadline = time.monotonic() + 10
    while gateway.pool.count > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gateway.pool.count == 1, "the extra environment was not stopped once idle"
    status, _, body = gateway.request(_post('{"sleep": 0}'))  # the warm one still serves
    assert status == 200, body[:300]


def test_the_default_maximum_respects_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from local import environments

    monkeypatch.setattr(environments, "_available_memory_mb", lambda: 2000.0)
    assert environments.default_max_concurrency(2) == 1000 // environments.ENVIRONMENT_MB  # half the memory
    monkeypatch.setattr(environments, "_available_memory_mb", lambda: 100.0)
    assert environments.default_max_concurrency(3) == 3  # never below the warm ones
    monkeypatch.setattr(environments, "_available_memory_mb", lambda: None)
    assert environments.default_max_concurrency(2) == environments.DEFAULT_MAX_CONCURRENCY
    with pytest.raises(ValueError, match="API_MAX_CONCURRENCY"):
        EnvironmentPool({}, "us-east-1", size=4, max_size=2)


def test_a_binary_media_type_reaches_the_function_base64_encoded_as_api_gateway_hands_it():
    """The template declares multipart/form-data binary: even a body that happens to be UTF-8 arrives base64."""
    import base64

    from local import template
    from local.apigateway import Match, proxy_event

    tpl = template.load(Path(__file__).resolve().parents[2])
    assert "multipart/form-data" in tpl.binary_media_types["GatewayApi"]
    route = next(r for r in tpl.api_routes if r.path == "/v1/images/edits")
    body = b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b--\r\n'
    event = proxy_event(Match(route, {}), method="POST", raw_path="/v1/images/edits", body=body,
                        headers=[("Content-Type", "multipart/form-data; boundary=b")], source_ip="127.0.0.1",
                        host="localhost", binary_media_types=tpl.binary_media_types["GatewayApi"])
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == body
    json_event = proxy_event(Match(route, {}), method="POST", raw_path="/v1/images/edits", body=b'{"a": 1}',
                             headers=[("Content-Type", "application/json")], source_ip="127.0.0.1",
                             host="localhost", binary_media_types=tpl.binary_media_types["GatewayApi"])
    assert json_event["isBase64Encoded"] is False and json_event["body"] == '{"a": 1}'
