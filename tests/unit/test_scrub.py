"""`scrub`: what an upstream echoes (credentials, keys, signed URLs, control characters) never leaves the gateway."""

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from imagegw.scrub import MESSAGE_CHARS, REDACTED, fragment, header_secrets, scrub, scrub_url

ROUTE_KEY = "zz9/Plural+Z-alpha=ROUTEKEY"  # a key of no known shape: only the exact match can catch it
BASIC = base64.b64encode(b"relay:hunter2-pass").decode()


@pytest.mark.parametrize("hostile, secret_part", [
    ("Invalid header Authorization: Bearer sk-proj-AbC123def456GhI789jkl", "sk-proj-AbC123"),
    ("{'authorization': 'Bearer opaque-token-1234', 'accept': '*/*'}", "opaque-token-1234"),
    ('{"Authorization":"Token abcdefgh12345678","X-Api-Key":"k-77aa88bb"}', "abcdefgh12345678"),
    ('{"Authorization":"Token abcdefgh12345678","X-Api-Key":"k-77aa88bb"}', "k-77aa88bb"),
    ("auth failed for Basic " + BASIC, BASIC),
    ("bad key sk-ant-api03-Zx9Yw8Vu7Ts6", "sk-ant-api03"),
    ("bad key sk-1234567890abcdef", "sk-1234567890"),
    ("xai-AbCdEf1234567890 is not valid", "xai-AbCdEf1234567890"),
    ("replicate token r8_Ab12cd34ef56gh78 revoked", "r8_Ab12cd34ef56gh78"),
    ("aws key AKIAIOSFODNN7EXAMPLE denied", "AKIAIOSFODNN7EXAMPLE"),
    ("google AIzaSyA-1234567890abcdefghijklmnopqrst", "AIzaSyA-1234567890"),
    ("mailgun key-9a8b7c6d5e4f3a2b", "key-9a8b7c6d5e4f3a2b"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl expired", "eyJzdWIiOiIxIn0"),
    ("could not fetch https://relay:hunter2@upstream.example/v1/x", "hunter2"),
    ("GET https://up.example/v1?model=x&api_key=abcDEF123&n=1 failed", "abcDEF123"),
    ("GET https://up.example/v1?key=plainletters failed", "plainletters"),
    ("https://b.s3.amazonaws.com/i.png?X-Amz-Credential=AK%2F2026&X-Amz-Signature=deadbeef01", "deadbeef01"),
    ("https://b.s3.amazonaws.com/i.png?X-Amz-Credential=AK%2F2026&X-Amz-Signature=deadbeef01", "AK%2F2026"),
    ('config: {"password": "hunter2!", "user": "u"}', "hunter2!"),
    ("access_token=ya29.a0AfH6SM; expired", "ya29.a0AfH6SM"),
])
def test_credentials_in_upstream_text_are_redacted(hostile, secret_part):
    out = scrub(hostile)
    assert secret_part not in out and REDACTED in out


@pytest.mark.parametrize("form", [ROUTE_KEY, quote(ROUTE_KEY, safe=""), quote_plus(ROUTE_KEY),
                                  json.dumps(ROUTE_KEY)[1:-1].replace("/", "\\/")])
def test_the_routes_own_key_is_redacted_in_any_encoding(form):
    out = scrub(f"your key {form} has no quota left", secrets=[ROUTE_KEY])
    assert out == f"your key {REDACTED} has no quota left"


def test_a_truncated_echo_of_the_key_is_redacted():
    out = scrub(f"your key {ROUTE_KEY[:15]}… is invalid; key {ROUTE_KEY[:14]}", secrets=[ROUTE_KEY])
    assert out == f"your key {REDACTED}… is invalid; key {REDACTED}"


def test_a_key_of_no_known_shape_needs_to_be_named():
    assert ROUTE_KEY in scrub(f"key {ROUTE_KEY}")  # why Dialect.submit/check pass the route's key
    assert ROUTE_KEY not in scrub(f"key {ROUTE_KEY}", secrets=[None, "", ROUTE_KEY])


@pytest.mark.parametrize("text", [
    "Invalid size '999x999' for dall-e-3.",
    "Basic authentication is not supported; use a bearer token.",
    "The prompt violates the content policy.",
    "key-value pairs and key-generation; the skeleton of a risk-free task; sk-test",
    "https://img.example/a.png?x-expires=1700000000&format=.png",
    "违规内容，请稍后再试",
    "Rate limit reached for requests (code 429, request_id 5f0c2a)",
    "max_tokens: 4096 is above the limit; total_tokens=5000, token_count: 12",
    "Invalid token: please sign in again",
])
def test_ordinary_text_is_left_alone(text):
    assert scrub(text) == text


def test_control_characters_are_dropped_and_lines_joined():
    out = scrub("first\nsecond\r\n\x1b[2Jthird\x00\u202eexe.txt\tend")
    assert out == "first second [2Jthirdexe.txt end"
    assert all(ch.isprintable() for ch in out)


def test_the_length_is_capped_after_redaction_without_a_half_token():
    out = scrub("word " * 200)
    assert len(out) == MESSAGE_CHARS and out.endswith("…")
    key = "sk-" + "A1b2C3d4" * 10
    long = "x " * 240 + key  # the key straddles the cap
    out = scrub(long)
    assert len(out) <= MESSAGE_CHARS and "A1b2C3d4" not in out
    assert len(fragment("y " * 400)) <= 300


def test_a_huge_text_is_cut_before_scanning_without_leaking_the_cut_token():
    secret = "Q" * 40 + "9"
    out = scrub("z" * 3999 + " " + secret + " tail" * 10_000)  # the scan cut falls inside `secret`
    assert secret[:10] not in out and len(out) <= MESSAGE_CHARS


def test_scrub_is_idempotent():
    once = scrub(f"Authorization: Bearer {ROUTE_KEY}; see https://u:p@h.example/?token=abc1", [ROUTE_KEY])
    assert scrub(once, [ROUTE_KEY]) == once


def test_header_secrets_and_urls_for_logs():
    headers = {"Authorization": "Bearer opaque", "X-Api-Key": "k1", "Content-Type": "application/json"}
    assert set(header_secrets(headers)) == {"Bearer opaque", "opaque", "k1"}
    assert (scrub_url("https://u:pw@h.example/v1/x?api_key=abc&n=2")
            == "https://[redacted]@h.example/v1/x?api_key=[redacted]&n=2")
