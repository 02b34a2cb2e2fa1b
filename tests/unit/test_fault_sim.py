"""The fault upstream (tests/simulators/fault_sim.py) does what its table says, seen on the raw HTTP."""

from __future__ import annotations

import base64
import socket
import struct
import time

import pytest
import requests

from tests.simulators.fault_sim import FAULTS, METADATA_URL, FaultSimulator

BODY = {"model": "dall-e-3", "prompt": "a lighthouse", "response_format": "url"}
SECRET = "sk-do-not-echo-me"


def declared_png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (read here by hand: the gateway's own parser is what it tests)."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def generate(sim: FaultSimulator, **kwargs) -> requests.Response:
    return requests.post(f"{sim.base_url}/v1/images/generations", json=BODY,
                         headers={"Authorization": f"Bearer {SECRET}"}, timeout=kwargs.pop("timeout", 5), **kwargs)


def result_url(sim: FaultSimulator) -> str:
    answer = generate(sim)
    assert answer.status_code == 200
    return answer.json()["data"][0]["url"]


def test_unknown_fault_or_variant_is_refused() -> None:
    with pytest.raises(ValueError):
        FaultSimulator("melt")
    with pytest.raises(ValueError):
        FaultSimulator("garbage_200", variant="soup")
    assert len(FAULTS) == len(set(FAULTS))


@pytest.mark.parametrize("status", [400, 429, 500])
def test_echo_headers_leaks_the_key_in_the_error(status: int) -> None:
    with FaultSimulator("echo_headers", status=status) as sim:
        answer = generate(sim)
    assert answer.status_code == status
    message = answer.json()["error"]["message"]
    assert f"authorization: Bearer {SECRET}" in message
    assert "content-type: application/json" in message
    assert sim.generations[0].body == BODY


def test_drip_sends_the_answer_byte_by_byte() -> None:
    with FaultSimulator("drip", drip_s=0.05) as sim:
        with socket.create_connection(("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1])), timeout=5) as conn:
            conn.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            started = time.monotonic()
            received = b""
            for _ in range(100):  # bounded
                received += conn.recv(8 - len(received))
                if len(received) == 8:
                    break
            elapsed = time.monotonic() - started
    assert received == b"HTTP/1.1"
    assert elapsed >= 7 * 0.05 * 0.8  # the status line itself drips: eight bytes cannot come faster


def test_drip_headers_false_sends_the_head_at_once() -> None:
    with FaultSimulator("drip_image", drip_s=0.05, drip_headers=False) as sim:
        started = time.monotonic()
        with requests.get(result_url(sim), stream=True, timeout=5) as answer:
            head_after = time.monotonic() - started
            assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
            first = answer.raw.read(1)
    assert first == b"\x89"
    assert head_after < 0.5


@pytest.mark.parametrize("fault", ["hang", "hang_image"])
def test_hang_never_answers_and_ends_with_the_simulator(fault: str) -> None:
    with FaultSimulator(fault, hang_s=30) as sim:
        with pytest.raises(requests.exceptions.ReadTimeout):
            if fault == "hang":
                generate(sim, timeout=(2, 0.3))
            else:
                requests.get(result_url(sim), timeout=(2, 0.3))
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 2  # the hanging handler was released


def test_bomb_url_serves_a_48_kb_png_declaring_20000_squared() -> None:
    with FaultSimulator("bomb_url") as sim:
        image = requests.get(result_url(sim), timeout=5)
    assert image.headers["Content-Type"] == "image/png"
    assert len(image.content) < 64 * 1024
    assert declared_png_size(image.content) == (20000, 20000)


def test_bomb_b64_answers_the_same_png_inline() -> None:
    with FaultSimulator("bomb_b64", bomb_size=(30000, 100)) as sim:
        item = generate(sim).json()["data"][0]
    assert "url" not in item
    assert declared_png_size(base64.b64decode(item["b64_json"])) == (30000, 100)


@pytest.mark.parametrize("target", [METADATA_URL, "http://10.0.0.1/"])
def test_redirect_unsafe_points_at_the_target_without_going_there(target: str) -> None:
    with FaultSimulator("redirect_unsafe", unsafe_target=target) as sim:
        url = result_url(sim)
        assert url.startswith(sim.base_url)  # the result URL itself is on loopback
        hop = requests.get(url, allow_redirects=False, timeout=5)  # never followed here
    assert hop.status_code == 302 and hop.headers["Location"] == target


def test_unsafe_url_is_the_result_url() -> None:
    with FaultSimulator("unsafe_url") as sim:
        assert result_url(sim) == METADATA_URL


def test_garbage_200_not_json() -> None:
    with FaultSimulator("garbage_200", variant="not_json") as sim:
        answer = generate(sim)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        answer.json()


@pytest.mark.parametrize(
    ("variant", "check"),
    [
        ("wrong_shape", lambda body: isinstance(body, dict) and "data" not in body),
        ("data_not_dicts", lambda body: body["data"] and not any(isinstance(x, dict) for x in body["data"])),
        ("url_not_string", lambda body: not isinstance(body["data"][0]["url"], str)),
    ],
)
def test_garbage_200_json_of_the_wrong_shape(variant: str, check) -> None:
    with FaultSimulator("garbage_200", variant=variant) as sim:
        answer = generate(sim)
    assert answer.status_code == 200
    assert check(answer.json())


def test_not_an_image_serves_html_labelled_png() -> None:
    with FaultSimulator("not_an_image") as sim:
        page = requests.get(result_url(sim), timeout=5)
    assert page.headers["Content-Type"] == "image/png"
    assert page.content.startswith(b"<!doctype html>")


def test_other_paths_are_404_and_every_request_is_recorded() -> None:
    with FaultSimulator("bomb_url") as sim:
        assert requests.get(f"{sim.base_url}/v1/models", timeout=5).status_code == 404
        generate(sim)
    assert [r.path for r in sim.requests] == ["/v1/models", "/v1/images/generations"]
    assert len(sim.generations) == 1
