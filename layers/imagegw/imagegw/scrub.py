"""Scrubbing of upstream-supplied text before the gateway stores, returns or logs it.

Upstreams (relays especially) echo what they were sent, the `Authorization` header included, in their error
messages. Every text from an upstream goes through `scrub` where it enters the gateway; `Dialect.submit` and
`Dialect.check` scrub again with the route's own key, so no path can carry the key out.

What is redacted (replaced by `[redacted]`):
- each given secret (the route's key, whatever its shape), also URL-encoded or JSON-escaped, and any token
  that starts like it (an upstream that truncates what it echoes still leaks a prefix);
- the credentials after `Bearer`/`Basic`/`Token` (8+ characters with a digit or symbol, so "Basic
  authentication" stays readable) and the value of an `Authorization`/`X-Api-Key`/`Api-Key` header;
- key-shaped tokens: `sk-` (`sk-proj-`, `sk-ant-`, ...), `key-`, `xai-`, `r8_`, `hf_`, `gh[pousr]_`, `AIza`,
  AWS access key ids (`AKIA`/`ASIA` + 16), JWTs (`eyJ...`); the generic ones need a digit, so words survive;
- `user:password@` in URLs, and the value of a query or `name: value`/`name=value` parameter whose name says
  key, token, secret, password, signature or credential (`?api_key=...`, `X-Amz-Signature=...`); outside a
  URL only a value with a digit or symbol, and not token counts (`max_tokens: 4096` stays).
Control and format characters are dropped (newlines become spaces: one log line stays one line), and the
text is capped, after redaction, at `limit` characters with an ellipsis.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
MESSAGE_CHARS = 500  # a whole error message (what a client, a task and a log line get)
FRAGMENT_CHARS = 300  # an upstream text quoted inside one of the gateway's own messages
PROMPT_CHARS = 4000  # an upstream's revised prompt (dall-e-3 rewrites can run long)
SCAN_CHARS = 8 * MESSAGE_CHARS  # longer input is cut (at a token boundary) before the patterns run
MIN_SECRET_CHARS = 4  # shorter "secrets" are not worth mangling every word that contains them
SECRET_PREFIX_CHARS = 12  # a token starting with this much of a (longer) secret is taken for a truncated echo

_TOKEN = r"[A-Za-z0-9._~+/=-]"
_SECRETISH = r"(?=[^\s\"',;&#}]*[0-9_~+/=-])"  # a value with a digit or symbol: not an ordinary word
_GENERIC = re.compile(
    # credentials after an auth scheme: `Bearer sk-...`, `Basic dXNlcjpwYXNz`
    r"(?P<scheme>\b(?:Bearer|Basic|Token)\s+)(?=" + _TOKEN + r"*[0-9_~+/=-])" + _TOKEN + r"{8,}"
    # header echoes: `Authorization: Bearer abc`, `'x-api-key': 'abc'`, `"authorization":"..."`
    r"|(?P<header>\b(?:proxy-)?(?:authorization|x-api-key|api-key|x-goog-api-key)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\"',;}\r\n]+"
    # user:password@ in a URL
    r"|(?P<userinfo>\b[a-z][a-z0-9+.-]*://)[^/\s:@\"']+:[^/\s@\"']*(?=@)"
    # URL parameters: ?api_key=..., &X-Amz-Signature=..., &key=..., &sig=...
    r"|(?P<param>[?&;][\w.-]*(?:key|token|secret|passw(?:or)?d|signature|sig|credential|auth)[\w.-]*=)"
    r"[^\s&#\"']+"
    # named values in text or JSON: `token: abc123`, `"password": "hunter2!"`, `api_key=k3y`
    r"|(?P<named>\b[\w.-]*(?:api[_-]?key|apikey|access[_-]?key|token(?![_-]?(?:s|count|limit|usage)\b)|secret|"
    r"passw(?:or)?d|signature|credential)[\w.-]*[\"']?\s*[:=]\s*[\"']?)" + _SECRETISH + r"[^\s\"',;&#}]+"
    # key-shaped tokens
    r"|\bsk-[A-Za-z0-9_-]{6,}"
    r"|\b(?:key|xai|pk|rk)-(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{8,}"
    r"|\b(?:r8|hf|gh[pousr]|github_pat)_(?=[A-Za-z_]*[0-9])[A-Za-z0-9_]{8,}"
    r"|\bAIza[0-9A-Za-z_-]{30,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    re.IGNORECASE,  # header and parameter names come in any case; the token shapes only err towards redaction
)
_SPACES = re.compile(r"\s+")
_TOKEN_CHAR = re.compile(r"[A-Za-z0-9._~+/=%-]")
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9._~+/=%-]+$")


def scrub(text: object, secrets: Iterable[str | None] = (), *, limit: int = MESSAGE_CHARS) -> str:
    """`text` with secrets and credential-shaped tokens redacted, control characters dropped, and at most
    `limit` characters long."""
    out = "" if text is None else str(text)
    out = _printable(_cut(out, SCAN_CHARS) if len(out) > SCAN_CHARS else out)
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        for form in _forms(secret):
            out = out.replace(form, REDACTED)
        if len(secret) > SECRET_PREFIX_CHARS:
            out = re.sub(re.escape(secret[:SECRET_PREFIX_CHARS]) + _TOKEN_CHAR.pattern + "*", REDACTED, out)
    out = _GENERIC.sub(_redact, out)
    out = _SPACES.sub(" ", out).strip()
    return out if len(out) <= limit else _cut(out, limit - 1) + "…"


def fragment(text: object, secrets: Iterable[str | None] = ()) -> str:
    """An upstream text to quote inside one of the gateway's messages (shorter cap, so our words survive)."""
    return scrub(text, secrets, limit=FRAGMENT_CHARS)


def scrub_url(url: str) -> str:
    """A URL fit for a log line: credentials and key-like query values redacted (never capped short)."""
    return scrub(url, limit=2 * MESSAGE_CHARS)


def header_secrets(headers: dict[str, str] | None) -> list[str]:
    """The credentials in a call's headers (the token of `Authorization`, any `*key*`/`*token*` header)."""
    found = []
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered in ("authorization", "proxy-authorization"):
            found += [value, value.split(" ", 1)[-1].strip()]
        elif any(word in lowered for word in ("key", "token", "secret")):
            found.append(value)
    return found


def _forms(secret: str) -> list[str]:
    escaped = json.dumps(secret)[1:-1]
    forms = [secret, quote(secret, safe=""), quote_plus(secret), escaped, escaped.replace("/", "\\/")]  # PHP: \/
    return sorted({f for f in forms if f}, key=len, reverse=True)


def _redact(match: re.Match[str]) -> str:
    keep = next((group for group in match.groups() if group is not None), "")
    return keep + REDACTED


def _printable(text: str) -> str:
    """Whitespace controls become spaces; other control/format/unassigned characters are dropped."""
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\t\n\r\v\f\x85\u2028\u2029":
            chars.append(" ")
        elif category[0] != "C":
            chars.append(ch)
    return "".join(chars)


def _cut(text: str, limit: int) -> str:
    """The first `limit` characters, without a token cut in half at the end (it may be part of a secret)."""
    head = text[:limit]
    if len(text) > limit and _TOKEN_CHAR.match(text[limit]):
        head = _TOKEN_TAIL.sub("", head)
    return head.rstrip()
