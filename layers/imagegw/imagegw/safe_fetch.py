"""SSRF-guarded download of images from URLs we do not control (provider result URLs, user inputs).

The guard lives at the socket level, not in URL parsing: every new TCP connection resolves the host,
refuses the whole connection if *any* resolved address is not public, and then connects to one of the
addresses it just validated. Because the socket is opened to a pinned IP, a DNS answer that changes
between check and connect (DNS rebinding) cannot slip through, and parser differentials between our URL
checks and urllib3's cannot either (the check applies to whatever host urllib3 actually connects to).
The hostname is kept for the Host header, TLS SNI and certificate verification.

Redirects are followed by hand so that every hop goes through the same checks, and bodies are streamed
with a hard byte cap so that a hostile server cannot exhaust memory. A total time budget (`Deadline`) covers
the whole download, so a server that drips one byte at a time cannot hold a worker either.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from . import settings
from .deadline import Deadline
from .errors import BadRequest, UpstreamFailed, UpstreamTimeout

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> IP address strings. Injectable so tests never touch real DNS."""

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_TIMEOUT: tuple[float, float] = (5, 60)
DEFAULT_MAX_DOWNLOAD_S = 120.0  # total, redirects and body included; the fetch function may run 600 s
HEAD_BYTES = 64 * 1024  # first read: enough for any magic number, small enough to stay cheap
_ALLOWED_SCHEMES = frozenset({"http", "https"})


class UnsafeURL(BadRequest):
    default_code = "unsafe_url"


# --- address policy ---------------------------------------------------------------------------------

# `is_global` already excludes most of these, but its tables differ between Python patch releases, so the
# ranges we care about are listed explicitly as well (belt and braces).
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", incl. 0.0.0.0 which Linux routes to localhost
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, incl. the 169.254.169.254 metadata service
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast
    )
)
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and deprecated IPv4-compatible addresses
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: the real endpoint is hidden behind the relay
        "2001:2::/48",  # benchmarking
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_V4_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 address really reaches (mapped, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(ip: IPAddress, allow_loopback: bool = False) -> bool:
    """Whether the gateway may connect to `ip`: globally routable unicast only.

    `allow_loopback` admits 127.0.0.0/8 and ::1 (and nothing else); it exists for the docker-free local
    stack and the tests, which talk to simulators on this machine.
    """
    if isinstance(ip, str):  # convenience for callers holding strings
        ip = ipaddress.ip_address(ip)
    if allow_loopback and (
        (ip.version == 4 and ip in _V4_LOOPBACK) or (ip.version == 6 and ip == _IPV6_LOOPBACK)
    ):
        return True
    if ip.version == 6:
        if ip.scope_id:  # zone-scoped addresses are link-local by definition
            return False
        v4 = _embedded_ipv4(ip)
        if v4 is not None:
            # Judge what the packet really reaches; never through the loopback exception.
            return is_public_address(v4, allow_loopback=False)
        blocked: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _BLOCKED_V6
    else:
        blocked = _BLOCKED_V4
    if any(ip in net for net in blocked):
        return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback or ip.is_link_local
        or ip.is_unspecified
    )


def _parse_ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


def default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(host: str, port: int, resolver: Resolver, allow_loopback: bool) -> list[IPAddress]:
    """Resolve `host` and return its addresses only if every one of them is public.

    All-or-nothing: a name answering [public, private] is refused, otherwise an attacker could race the
    connection order or rely on fallback to the private one.
    """
    literal = _parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            raw = resolver(host.rstrip("."), port)
        except UnsafeURL:
            raise
        except OSError as e:
            raise socket.gaierror(f"could not resolve {host!r}: {e}") from e
        if not raw:
            raise socket.gaierror(f"{host!r} resolved to no address")
        addresses = []
        for value in raw:
            ip = _parse_ip(str(value).split("%", 1)[0])  # drop any zone id; scoped addresses are link-local
            if ip is None:
                raise UnsafeURL(f"The image host {host!r} resolved to an invalid address.", param="url")
            addresses.append(ip)
    for ip in addresses:
        if not is_public_address(ip, allow_loopback=allow_loopback):
            log.warning("refused connection to %s: resolves to non-public address %s", host, ip)
            raise UnsafeURL(f"The image host {host!r} resolves to a non-public address.", param="url")
    return addresses


# --- pinned connections -----------------------------------------------------------------------------


class _PinnedMixin:
    """Replaces urllib3's connect step: resolve, validate all addresses, connect to a validated IP."""

    resolver: Resolver = staticmethod(default_resolver)
    allow_loopback: bool = False
    deadline: Deadline | None = None

    # Provided by HTTPConnection.
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            addresses = resolve_checked(self.host, self.port, type(self).resolver, type(self).allow_loopback)
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
        timeout = self.timeout if self.timeout is None or isinstance(self.timeout, (int, float)) else None
        if timeout is None:
            timeout = socket.getdefaulttimeout()
        deadline = type(self).deadline
        if deadline is not None:
            deadline.check()
            timeout = deadline.capped(timeout)
        last_error: OSError | None = None
        for ip in addresses:  # every address was validated above; try them in resolver order
            try:
                sock = socket.create_connection(
                    (str(ip), self.port), timeout=timeout, source_address=self.source_address
                )
            except TimeoutError as e:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={timeout})"
                ) from e
            except OSError as e:
                last_error = e
                continue
            for opt in self.socket_options or ():
                sock.setsockopt(*opt)
            if deadline is not None:
                deadline.watch(sock)
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {last_error}")  # type: ignore[arg-type]


class PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    pass


class PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    pass


class GuardedAdapter(HTTPAdapter):
    """An adapter whose pools only open pinned, validated connections (and never use proxies)."""

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        allow_loopback: bool = False,
        deadline: Deadline | None = None,
        **kwargs: Any,
    ):
        # Per-adapter subclasses carry the policy into every connection urllib3 creates; set before
        # super().__init__ because that calls init_poolmanager.
        policy = {"resolver": staticmethod(resolver or default_resolver), "allow_loopback": allow_loopback,
                  "deadline": deadline}
        http_conn = type("GuardedHTTPConnection", (PinnedHTTPConnection,), policy)
        https_conn = type("GuardedHTTPSConnection", (PinnedHTTPSConnection,), policy)
        self._pool_classes = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        # A fresh dict: never mutate urllib3's module-level default mapping.
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A proxy would connect on our behalf and bypass the address check.
        raise UnsafeURL("Proxies are not allowed for image downloads.", param="url")


def guarded_session(
    *, resolver: Resolver | None = None, allow_loopback: bool = False, deadline: Deadline | None = None
) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies / netrc credentials from the environment
    session.max_redirects = MAX_REDIRECTS
    adapter = GuardedAdapter(resolver=resolver, allow_loopback=allow_loopback, deadline=deadline)
    session.adapters.clear()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def loopback_allowed() -> bool:
    """Whether this process may fetch from loopback: only the local stack and tests set ALLOW_LOOPBACK_FETCH."""
    return settings.current().allow_loopback_fetch


def check_url(url: str, *, allow_loopback: bool = False) -> str:
    """Cheap early refusal of URLs we would never fetch. The address check itself happens at connect."""
    if not isinstance(url, str) or not url or len(url) > 8192:
        raise UnsafeURL("The image URL is invalid.", param="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeURL("The image URL is invalid.", param="url") from e
    if parts.scheme.lower() not in _ALLOWED_SCHEMES:
        raise UnsafeURL("Only http and https image URLs are allowed.", param="url")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        # userinfo is the classic `http://trusted@evil/` confusion and we never send credentials anyway
        raise UnsafeURL("Image URLs must not contain credentials.", param="url")
    if "\\" in parts.netloc or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UnsafeURL("The image URL is invalid.", param="url")
    host = parts.hostname
    if not host:
        raise UnsafeURL("The image URL has no host.", param="url")
    if port == 0:
        raise UnsafeURL("The image URL is invalid.", param="url")
    literal = _parse_ip(host)
    if literal is not None and not is_public_address(literal, allow_loopback=allow_loopback):
        raise UnsafeURL("The image URL points to a non-public address.", param="url")
    return url


# --- image sniffing -----------------------------------------------------------------------------------


def detect_image_type(head: bytes) -> tuple[str, str] | None:
    """(content_type, extension) from magic bytes, or None. We trust bytes, never upstream headers."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif", "gif"
    return None


# --- streamed body ------------------------------------------------------------------------------------


class CappedReader:
    """File-like view of the body: first the sniffed head, then the rest, never more than `max_bytes`.

    Non-seekable on purpose, so boto3 streams it in parts instead of trying to size it.
    """

    def __init__(self, response: requests.Response, max_bytes: int, deadline: Deadline | None = None):
        self._response = response
        self._head = b""
        self._max_bytes = max_bytes
        self._deadline = deadline
        self.on_chunk: Callable[[bytes], None] | None = None  # sees every later chunk; may raise to refuse
        self.bytes_read = 0  # bytes taken from upstream so far (head included)
        self._eof = False
        self.closed = False

    def prime(self, n: int) -> bytes:
        """Read the first chunk (for sniffing) and keep it to be served again by `read`."""
        self._head = self._upstream(n)
        return self._head

    @property
    def head(self) -> bytes:
        return self._head

    @property
    def at_eof(self) -> bool:
        return self._eof

    def extend_head(self, n: int) -> bytes:
        """Grow the kept head by up to `n` more bytes (e.g. to reach a JPEG frame header); the whole head."""
        if self.bytes_read > len(self._head):
            raise ValueError("the head was already handed out")
        parts = [self._head]
        missing = n
        while missing > 0 and (chunk := self._upstream(missing)):
            parts.append(chunk)
            missing -= len(chunk)
        self._head = b"".join(parts)
        return self._head

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def _upstream(self, n: int) -> bytes:
        if self._eof:
            return b""
        # Ask for at most one byte past the cap: enough to know it was exceeded, never more.
        want = min(n, self._max_bytes - self.bytes_read + 1)
        deadline = self._deadline
        if deadline is not None:
            deadline.check()
        try:
            chunk = self._response.raw.read(want, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as e:
            raise UpstreamTimeout("The image download timed out.") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if deadline is not None:
                deadline.check()  # the budget ran out and the watchdog cut the connection
            raise UpstreamFailed(f"The image download failed: {type(e).__name__}", retriable=True) from e
        if deadline is not None:
            deadline.check()  # a cut connection can look like a clean end of a close-delimited body
        if not chunk:
            self._eof = True
            return b""
        self.bytes_read += len(chunk)
        if self.bytes_read > self._max_bytes:
            raise UpstreamFailed(
                f"The image is larger than {self._max_bytes} bytes.", code="image_too_large", retriable=False
            )
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        return chunk

    def read(self, n: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from closed image stream")
        if n is None or n < 0:
            # Still bounded by the cap: at most max_bytes + 1 bytes are ever pulled.
            everything = [self._head]
            self._head = b""
            while chunk := self._upstream(HEAD_BYTES):
                everything.append(chunk)
            return b"".join(everything)
        # Full reads like a regular file: s3transfer takes a short read for end-of-stream (it would then
        # put the object in one go, or upload undersized parts).
        parts: list[bytes] = []
        if self._head:
            parts.append(self._head[:n])
            self._head = self._head[n:]
        missing = n - len(parts[0]) if parts else n
        while missing > 0 and (chunk := self._upstream(missing)):
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.closed = True


class FetchedImage:
    """A downloaded image whose body has not been read yet (beyond its first chunk)."""

    def __init__(
        self,
        *,
        url: str,
        content_type: str,
        extension: str,
        content_length: int | None,
        raw: CappedReader,
        response: requests.Response,
        session: requests.Session,
        deadline: Deadline | None = None,
    ):
        self.url = url  # final URL after redirects
        self.content_type = content_type
        self.extension = extension
        self.content_length = content_length
        self.raw = raw
        self._response = response
        self._session = session
        self._deadline = deadline

    def close(self) -> None:
        self.raw.close()
        self._response.close()
        self._session.close()
        if self._deadline is not None:
            self._deadline.close()

    def __enter__(self) -> FetchedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(session: requests.Session, url: str, timeout: Any, deadline: Deadline) -> requests.Response:
    deadline.check()  # a redirect hop may reuse a kept-alive connection: no connect step checks then
    timeout = tuple(map(deadline.capped, timeout)) if isinstance(timeout, tuple) else deadline.capped(timeout)
    try:
        return session.get(url, allow_redirects=False, stream=True, timeout=timeout, headers={"Accept": "image/*"})
    except UnsafeURL:
        raise
    except requests.exceptions.Timeout as e:
        raise UpstreamTimeout("The image download timed out.") from e
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema) as e:
        raise UnsafeURL("The image URL is invalid.", param="url") from e
    except requests.exceptions.RequestException as e:
        deadline.check()  # the budget ran out and the watchdog cut the connection (e.g. dripped headers)
        raise UpstreamFailed(f"The image download failed: {type(e).__name__}", retriable=True) from e


def open_image(
    url: str,
    *,
    max_bytes: int,
    timeout: Any = DEFAULT_TIMEOUT,
    resolver: Resolver | None = None,
    allow_loopback: bool = False,
    max_seconds: float = DEFAULT_MAX_DOWNLOAD_S,
) -> FetchedImage:
    """Open `url` for streaming after the SSRF checks; the caller must close the result (context manager).

    `max_seconds` bounds the whole download, from the first connect to the last byte read through `raw`.
    Raises UnsafeURL, UpstreamFailed (codes "not_an_image", "image_too_large", "too_many_redirects"), or
    UpstreamTimeout.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    deadline = Deadline(max_seconds, f"The image download took longer than {max_seconds:g} s.")
    session = guarded_session(resolver=resolver, allow_loopback=allow_loopback, deadline=deadline)
    response: requests.Response | None = None
    try:
        current = check_url(url, allow_loopback=allow_loopback)
        for hop in range(MAX_REDIRECTS + 1):
            response = _get(session, current, timeout, deadline)
            if response.status_code not in REDIRECT_STATUSES:
                break
            location = response.headers.get("Location")
            response.close()
            response = None
            if not location:
                raise UpstreamFailed("The image download was redirected without a Location.", retriable=False)
            current = check_url(urljoin(current, location), allow_loopback=allow_loopback)
            log.debug("image download redirected (hop %d) to host %s", hop + 1, urlsplit(current).hostname)
        else:
            raise UpstreamFailed(
                f"The image download exceeded {MAX_REDIRECTS} redirects.", code="too_many_redirects", retriable=False
            )
        assert response is not None
        status = response.status_code
        if not 200 <= status < 300:
            raise UpstreamFailed(
                f"image download failed with HTTP {status}", retriable=status >= 500 or status == 429
            )
        content_length = _content_length(response)
        if content_length is not None and content_length > max_bytes:
            raise UpstreamFailed(
                f"The image is larger than {max_bytes} bytes.", code="image_too_large", retriable=False
            )
        raw = CappedReader(response, max_bytes, deadline)
        detected = detect_image_type(raw.prime(HEAD_BYTES))
        if detected is None:
            raise UpstreamFailed("The downloaded file is not an image.", code="not_an_image", retriable=False)
        return FetchedImage(
            url=current,
            content_type=detected[0],
            extension=detected[1],
            content_length=content_length,
            raw=raw,
            response=response,
            session=session,
            deadline=deadline,
        )
    except BaseException:
        if response is not None:
            response.close()
        session.close()
        deadline.close()
        raise


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None
