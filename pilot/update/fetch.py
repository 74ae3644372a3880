"""The updater's only network code: small capped fetches and exact-size streams (and FileSource, the same
interface over local files for offline installs).

Policy is enforced here rather than left to urllib3 defaults: TLS is always verified,
the URL and proxy rules of `pilot.net` apply to the first URL and to every redirect hop
(followed by hand so each hop is checked), retries are bounded and never outlive the call's
deadline, and every failure becomes a one-line `DownloadError` without credentials. A private
release host's token (`pilot.net.ReleaseAuth`) is added per hop, so a redirect to another port or
host goes without it (urllib3's own `remove_headers_on_redirect` would keep a custom header and is
not used: redirects are ours). urllib3
is imported lazily so that importing `Response` or `Fetcher` (for type hints or fakes) costs
nothing on non-update paths.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from pilot.errors import DownloadError
from pilot.net import (
    HTTPS_ONLY_HINT,
    TOKEN_HINT,
    ReleaseAuth,
    one_line,
    proxy_for,
    proxy_headers,
    redact,
    redact_logs,
    scheme_problem,
    show_url,
    strip_credentials,
)

if TYPE_CHECKING:
    import urllib3

__all__ = ["MAX_REDIRECTS", "Fetcher", "FileSource", "HttpFetcher", "Response", "check_url"]

MAX_REDIRECTS = 5
DEFAULT_DEADLINE = 300.0
RETRY_AFTER_LIMIT = 24 * 3600.0  # a longer Retry-After counts as a day: no server may silence updates for ever
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_SIZE = 1 << 16
_T = TypeVar("_T")


@dataclass(frozen=True)
class Response:
    """Result of a small fetch."""

    status: int  # 200, or 304 when not modified
    data: bytes  # b"" for 304
    etag: str | None
    url: str  # final URL after redirects


class Fetcher(Protocol):
    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None) -> Response: ...

    def stream(self, url: str, *, size: int, chunk_size: int = 1 << 16) -> Iterator[bytes]: ...


class RangesUnsupported(DownloadError):
    """The server ignores byte ranges (a 200), refuses them (416, 501) or answers another range."""


class _Transient(DownloadError):
    """A failure worth retrying; `retry_after` is the server's requested delay, if any."""


# ---------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # lower-case, IPv6 without brackets
    port: int


def _split(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DownloadError(f"refused malformed URL {show_url(url)}: {one_line(str(exc))}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if not host:
        raise DownloadError(f"refused URL without a host: {show_url(url)}")
    return _Target(url, scheme, host, port or (443 if scheme == "https" else 80))


def _check_scheme(target: _Target) -> _Target:
    """pilot.net's rule, before anything connects: https anywhere, plain http only to loopback."""
    problem = scheme_problem(target.scheme, target.host)
    if problem is not None:
        raise DownloadError(f"refused {show_url(target.url)}: {problem}", hint=f"update URLs must {HTTPS_ONLY_HINT}")
    return target


def _parse(url: str) -> _Target:
    return _check_scheme(_split(url))


def check_url(url: str) -> None:
    """Refuse, as a DownloadError, a URL the fetcher would refuse: checked before anything is fetched."""
    _parse(url)


def _retry_after(value: str | None, cap: float = RETRY_AFTER_LIMIT) -> float | None:
    """Retry-After as seconds (delta or HTTP-date), clamped to [0, cap]; None if absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()  # an HTTP-date is wall-clock time
    return min(max(seconds, 0.0), cap)


# ---------------------------------------------------------------------------- errors


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: urllib3 nests errors in args as well as __cause__."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "original_error", None),
                  *current.args]
        todo.extend(e for e in nested if isinstance(e, BaseException))


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _causes(exc) if isinstance(e, kind)), None)


def _reason(exc: BaseException) -> str:
    """The innermost OS-level explanation, e.g. 'Connection reset by peer'."""
    for inner in reversed(list(_causes(exc))):
        if isinstance(inner, OSError) and inner.strerror:
            return one_line(inner.strerror)
    return one_line(redact(str(exc)) or type(exc).__name__)  # urllib3's text may quote a URL


class _Budget:
    """One call's deadline, shared by its retries, redirects and body reads."""

    def __init__(self, fetcher: HttpFetcher, target: _Target) -> None:
        self.fetcher = fetcher
        self.target = target
        self.deadline_at = fetcher._clock() + fetcher.deadline

    def remaining(self) -> float:
        return self.deadline_at - self.fetcher._clock()

    def expired_error(self) -> DownloadError:
        return DownloadError(f"download of {show_url(self.target.url)} took longer than {self.fetcher.deadline:g} s",
                             hint="the network or the server is too slow; try again later")

    def timeout(self, limit: float) -> float:
        """A socket timeout that never reaches past the deadline."""
        left = self.remaining()
        if left <= 0:
            raise self.expired_error()
        return min(limit, left)


def _describe(exc: BaseException, budget: _Budget, target: _Target, proxy: str | None) -> DownloadError:
    """Turn whatever urllib3, ssl or socket raised into one line for the user."""
    from urllib3 import exceptions as u3

    host, where, url = one_line(target.host), one_line(f"{target.host}:{target.port}"), show_url(target.url)
    timed_out = isinstance(exc, u3.TimeoutError) and not isinstance(exc, u3.NewConnectionError)
    if timed_out and budget.remaining() <= 0:  # the socket timeout was what was left of the deadline
        return budget.expired_error()
    if (gai := _find(exc, socket.gaierror)) is not None and not isinstance(exc, u3.ProxyError):
        error = _Transient if getattr(gai, "errno", None) == socket.EAI_AGAIN else DownloadError
        return error(f"could not resolve {host}", hint="check the network connection and the update URL")
    if (bad_cert := _find(exc, ssl.SSLCertVerificationError)) is not None:
        why = one_line(getattr(bad_cert, "verify_message", None) or str(bad_cert))
        return DownloadError(f"TLS certificate of {host} did not verify: {why}",
                             hint="check the system clock and CA certificates, or whether a proxy intercepts TLS")
    if isinstance(exc, u3.ProxyError) or (proxy and isinstance(exc, u3.NewConnectionError)):
        return _Transient(f"could not use proxy {show_url(proxy or '')} to reach {host}: {_reason(exc)}",
                          hint="check HTTPS_PROXY/ALL_PROXY/NO_PROXY")
    if isinstance(exc, u3.NewConnectionError):
        if _find(exc, ConnectionRefusedError) is not None:
            return _Transient(f"could not connect to {where} (connection refused)")
        return _Transient(f"could not connect to {where} ({_reason(exc)})")
    if isinstance(exc, u3.ConnectTimeoutError):
        return _Transient(f"connecting to {where} timed out after {budget.fetcher.connect_timeout:g} s")
    if isinstance(exc, u3.ReadTimeoutError):
        return _Transient(f"{host} sent nothing for {budget.fetcher.read_timeout:g} s while serving {url}")
    if isinstance(incomplete := _find(exc, u3.IncompleteRead), u3.IncompleteRead):
        got, missing = incomplete.partial, incomplete.expected
        return _Transient(f"{url} ended after {got} of {got + missing} bytes")
    if _find(exc, ssl.SSLError) is not None:
        return DownloadError(f"TLS connection to {host} failed: {_reason(exc)}")
    return _Transient(f"connection to {host} failed while fetching {url}: {_reason(exc)}")


# ---------------------------------------------------------------------------- fetcher


class HttpFetcher:
    """`Fetcher` over urllib3 with verified TLS, manual redirects, bounded retries and a deadline.

    A 429 or 5xx with Retry-After is waited for (at most `max_retry_after`, within the deadline)
    and retried. With `wait_for_retry_after=False` (the background checker, which schedules its
    own next try) such an answer ends the fetch at once instead: the `DownloadError` carries the
    server's delay as `retry_after`, bounded by a day rather than by `max_retry_after`. Whenever
    the fetcher gives up, the error carries the last Retry-After the server sent, if any.

    `auth` adds a private release host's header to the requests that go to that host only.
    """

    def __init__(self, *, connect_timeout: float = 10, read_timeout: float = 30, deadline: float | None = None,
                 retries: int = 3, backoff: float = 0.5, max_retry_after: float = 60,
                 wait_for_retry_after: bool = True,
                 ca_certs: str | None = None, allowed_hosts: frozenset[str] | None = None,
                 user_agent: str = "pilot-updater", auth: ReleaseAuth | None = None,
                 sleep: Callable[[float], object] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = DEFAULT_DEADLINE if deadline is None else deadline  # PILOT_UPDATE_DEADLINE: see updater
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.wait_for_retry_after = wait_for_retry_after
        self.ca_certs = ca_certs
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.user_agent = user_agent
        self.auth = auth
        if auth is not None:  # urllib3 logs no headers today; should a line ever quote one, not this one
            redact_logs(auth.secrets)
        self._sleep = sleep
        self._clock = clock
        self._managers: dict[str | None, urllib3.PoolManager] = {}  # keyed by proxy URL, None = direct

    # -- public API

    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None) -> Response:
        """GET a small document, at most `max_bytes`; with `etag`, a 304 comes back as status 304."""
        with self._scrubbing():
            return self._fetch(url, max_bytes, etag)

    def _fetch(self, url: str, max_bytes: int, etag: str | None) -> Response:
        target = _parse(url)
        budget = _Budget(self, target)
        extra = {"If-None-Match": etag} if etag else {}

        def attempt() -> Response:
            resp, final = self._open(budget, target, extra, allow_304=etag is not None)
            try:
                if resp.status == 304:
                    return Response(304, b"", resp.headers.get("ETag") or etag, final.url)
                data = self._read_capped(budget, resp, final, max_bytes)
                return Response(200, data, resp.headers.get("ETag"), final.url)
            finally:
                _dispose(resp)

        return self._retrying(budget, attempt)

    def fetch_range(self, url: str, *, start: int, length: int) -> bytes:
        """Exactly the bytes [start, start + length) of url, by one single-range request.

        RangesUnsupported when the server answers anything but that range (a 200 is closed unread)."""
        if start < 0 or length <= 0:
            raise ValueError("start must be >= 0 and length > 0")
        with self._scrubbing():
            return self._fetch_range(url, start, length)

    def _fetch_range(self, url: str, start: int, length: int) -> bytes:
        target = _parse(url)
        budget = _Budget(self, target)
        wanted = f"bytes {start}-{start + length - 1}/"

        def attempt() -> bytes:
            resp, final = self._open(budget, target, {"Range": f"bytes={start}-{start + length - 1}"},
                                     allow_304=False, ranged=True)
            try:
                if resp.status != 206 or not (resp.headers.get("Content-Range") or "").startswith(wanted):
                    raise RangesUnsupported(f"{show_url(final.url)} does not serve byte ranges "
                                            f"(HTTP {resp.status} to a Range request)")
                data = self._read_capped(budget, resp, final, length)
                if len(data) != length:
                    raise DownloadError(f"{show_url(final.url)} ended after {len(data)} of {length} bytes of a range")
                return data
            finally:
                _dispose(resp)

        return self._retrying(budget, attempt)

    def stream(self, url: str, *, size: int, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """Yield exactly `size` bytes in chunks of at most `chunk_size`, or raise DownloadError."""
        if size < 0 or chunk_size <= 0:
            raise ValueError("size must be >= 0 and chunk_size > 0")
        with self._scrubbing():
            yield from self._stream(url, size, chunk_size)

    def _stream(self, url: str, size: int, chunk_size: int) -> Iterator[bytes]:
        target = _parse(url)
        budget = _Budget(self, target)

        def first() -> tuple[urllib3.BaseHTTPResponse, _Target, bytes]:
            # Retrying is safe only until a byte has reached the caller, so the first read is part of it.
            resp, final = self._open(budget, target, {}, allow_304=False)
            try:
                announced = resp.length_remaining
                if announced is not None and announced != size:
                    raise DownloadError(f"{show_url(final.url)} has Content-Length {announced}, expected {size} bytes",
                                        hint="the server is not serving the release the manifest describes")
                return resp, final, self._read(budget, resp, final, min(chunk_size, size)) if size else b""
            except BaseException:
                _dispose(resp)
                raise

        resp, final, chunk = self._retrying(budget, first)
        try:
            yield from self._rest(budget, resp, final, chunk, size, chunk_size)
        finally:
            _dispose(resp)

    @contextlib.contextmanager
    def _scrubbing(self) -> Iterator[None]:
        """No token in any error: a hostile release host could echo it into a redirect's URL, which a
        refusal quotes. The error keeps its class (RangesUnsupported matters to the delta updater)."""
        try:
            yield
        except DownloadError as error:
            if self.auth is not None:
                error.message = redact(error.message, self.auth.secrets)
                error.hint = error.hint and redact(error.hint, self.auth.secrets)
                error.args = (error.message,)
            raise

    # -- body reading

    def _rest(self, budget: _Budget, resp: urllib3.BaseHTTPResponse, final: _Target, chunk: bytes,
              size: int, chunk_size: int) -> Iterator[bytes]:
        got = 0
        while chunk:
            got += len(chunk)
            yield chunk
            if got == size:
                break
            chunk = self._read(budget, resp, final, min(chunk_size, size - got))
        if got < size:
            raise DownloadError(f"{show_url(final.url)} ended after {got} of {size} bytes")
        if self._read(budget, resp, final, 1):  # one byte is enough to know the server sends too much
            raise DownloadError(f"{show_url(final.url)} sent more than the expected {size} bytes")

    def _read_capped(self, budget: _Budget, resp: urllib3.BaseHTTPResponse, final: _Target, cap: int) -> bytes:
        announced = resp.length_remaining
        too_big = DownloadError(f"{show_url(final.url)} is larger than the {cap}-byte cap",
                                hint="the server is not serving what the updater expects")
        if announced is not None and announced > cap:
            raise too_big
        body = bytearray()
        while chunk := self._read(budget, resp, final, min(_READ_SIZE, cap + 1 - len(body))):
            body += chunk
            if len(body) > cap:
                raise too_big
        return bytes(body)

    def _read(self, budget: _Budget, resp: urllib3.BaseHTTPResponse, final: _Target, amount: int) -> bytes:
        """At most `amount` bytes from a single socket read, whose timeout is what is left of the deadline."""
        import urllib3

        timeout = budget.timeout(self.read_timeout)
        sock = _socket_of(resp)
        if sock is not None:  # else the timeout urllib3 set at request time (also deadline-capped) applies
            sock.settimeout(timeout)
        try:
            # read1, unlike read, returns after one recv: a trickle cannot keep a read alive forever.
            return resp.read1(amount)
        except (urllib3.exceptions.HTTPError, OSError, HTTPException) as exc:
            raise _describe(exc, budget, final, None) from None

    # -- requests, redirects, retries

    def _retrying(self, budget: _Budget, attempt: Callable[[], _T]) -> _T:
        tries = 0
        retry_after: float | None = None  # the last delay the server asked for, kept on the final error
        while True:
            try:
                return attempt()
            except _Transient as exc:
                tries += 1
                if exc.retry_after is not None:
                    retry_after = exc.retry_after
                    if not self.wait_for_retry_after:
                        hint = f"the server asks to retry after {math.ceil(retry_after)} s"
                        raise DownloadError(exc.message, hint=hint, retry_after=retry_after) from None
                    delay = min(exc.retry_after, self.max_retry_after)
                else:
                    delay = self.backoff * 2 ** (tries - 1)
                if tries > self.retries:
                    raise DownloadError(exc.message, hint=f"gave up after {tries} attempts",
                                        retry_after=retry_after) from None
                if delay >= budget.remaining():
                    raise DownloadError(exc.message, hint=f"no time left to retry within {self.deadline:g} s",
                                        retry_after=retry_after) from None
                self._sleep(delay)

    def _open(self, budget: _Budget, target: _Target, extra: dict[str, str],
              *, allow_304: bool, ranged: bool = False) -> tuple[urllib3.BaseHTTPResponse, _Target]:
        """Follow up to MAX_REDIRECTS checked redirects; return a 200 (or 304) response and its URL."""
        allowed = self.allowed_hosts if self.allowed_hosts is not None else frozenset({target.host})
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._request(budget, target, extra)
            if resp.status not in _REDIRECT_STATUSES:
                return self._check_status(resp, target, allow_304, ranged), target
            location = resp.headers.get("Location")
            _dispose(resp)
            target = _redirect(target, location, resp.status, allowed)
        raise DownloadError(f"too many redirects (more than {MAX_REDIRECTS}) from {show_url(budget.target.url)}")

    def _check_status(self, resp: urllib3.BaseHTTPResponse, target: _Target,
                      allow_304: bool, ranged: bool = False) -> urllib3.BaseHTTPResponse:
        status = resp.status
        if status == 200 or (status == 304 and allow_304) or (status == 206 and ranged):
            return resp
        if ranged and status in (416, 501):  # no retry: the answer would be the same
            _dispose(resp)
            raise RangesUnsupported(f"{show_url(target.url)} refuses byte ranges (HTTP {status})")
        retry_after = _retry_after(resp.headers.get("Retry-After"))  # capped at a day, not at max_retry_after
        _dispose(resp)
        message = f"HTTP {status} for {show_url(target.url)}"
        if status == 429 or 500 <= status <= 599:
            raise _Transient(message, retry_after=retry_after)
        if status in (401, 403):
            raise DownloadError(message, hint=self._auth_hint(target))
        raise DownloadError(message)

    def _auth_headers(self, target: _Target) -> dict[str, str]:
        return self.auth.headers_for(target.scheme, target.host, target.port) if self.auth is not None else {}

    def _auth_hint(self, target: _Target) -> str:
        if self.auth is not None and self._auth_headers(target):
            return f"the release host refused the token sent in {self.auth.header}: check it"
        return f"if the release host is private, {TOKEN_HINT}"

    def _request(self, budget: _Budget, target: _Target, extra: dict[str, str]) -> urllib3.BaseHTTPResponse:
        import urllib3

        proxy = proxy_for(target.scheme, target.host)
        timeout = urllib3.Timeout(connect=budget.timeout(self.connect_timeout), read=budget.timeout(self.read_timeout))
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity", **self._auth_headers(target), **extra}
        try:
            return self._manager(proxy).urlopen(
                "GET", target.url, headers=headers, timeout=timeout, retries=False, redirect=False,
                preload_content=False, decode_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError, HTTPException) as exc:
            raise _describe(exc, budget, target, proxy) from None

    def _manager(self, proxy: str | None) -> urllib3.PoolManager:
        import urllib3

        if proxy not in self._managers:
            # cert_reqs is urllib3's default already; spelled out because it is the point.
            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": self.ca_certs, "retries": False}
            if proxy is None:
                self._managers[proxy] = urllib3.PoolManager(num_pools=4, **tls)
            else:
                # The password goes in a header, not in a URL urllib3 might quote in an error.
                try:
                    self._managers[proxy] = urllib3.ProxyManager(strip_credentials(proxy), num_pools=4,
                                                                 proxy_headers=proxy_headers(proxy), **tls)
                except (urllib3.exceptions.HTTPError, ValueError):
                    raise DownloadError(f"proxy {show_url(proxy)} is not supported",
                                        hint="use an http:// or https:// proxy, or set NO_PROXY") from None
        return self._managers[proxy]


def _redirect(current: _Target, location: str | None, status: int, allowed: frozenset[str]) -> _Target:
    """The next hop, if policy allows it: same scheme strength and an allowed host."""
    where = show_url(current.url)
    if not location:
        raise DownloadError(f"HTTP {status} redirect without a Location from {where}")
    nxt = _split(urllib.parse.urljoin(current.url, location))
    if current.scheme == "https" and nxt.scheme == "http":
        raise DownloadError(f"refused redirect from https to http ({where} -> {show_url(nxt.url)})")
    if nxt.host not in allowed:
        raise DownloadError(f"refused redirect from {one_line(current.host)} to {one_line(nxt.host)}, "
                            "which is not an allowed update host", hint=f"{where} -> {show_url(nxt.url)}")
    return _check_scheme(nxt)


def _socket_of(resp: urllib3.BaseHTTPResponse) -> socket.socket | None:
    """The socket the body is read from.

    http.client drops the connection's `sock` as soon as a response is marked to close
    (HTTP/1.0, `Connection: close`), so fall back to the socket behind the response's
    file object; test_a_slow_server_is_cut_off_at_the_deadline[stall-*] notices if this breaks.
    """
    sock = getattr(resp.connection, "sock", None) if hasattr(resp, "connection") else None
    if sock is None:
        raw = getattr(getattr(getattr(resp, "_fp", None), "fp", None), "raw", None)
        sock = getattr(raw, "_sock", None)
    return sock if hasattr(sock, "settimeout") else None


def _dispose(resp: urllib3.BaseHTTPResponse) -> None:
    """Close and return the connection: a half-read body must never be reused for the next request."""
    resp.close()
    resp.release_conn()


class FileSource:
    """A Fetcher over local files, for `--from-file PYZ --manifest DIR_OR_FILE`: the same checks, no network.

    Every URL is a path (the manifest's, a key set's beside it); any artifact URL streams the given archive."""

    def __init__(self, manifest: Path, archive: Path) -> None:
        self.manifest = manifest
        self.archive = archive

    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None) -> Response:
        path = Path(url)
        try:
            with path.open("rb") as stream:
                data = stream.read(max_bytes + 1)
        except OSError as error:
            raise DownloadError(f"cannot read {path}: {error.strerror}") from None
        if len(data) > max_bytes:
            raise DownloadError(f"{path} is larger than the {max_bytes}-byte cap")
        return Response(status=200, data=data, etag=None, url=url)

    def stream(self, url: str, *, size: int, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        try:
            with self.archive.open("rb") as stream:
                while chunk := stream.read(chunk_size):
                    yield chunk
        except OSError as error:
            raise DownloadError(f"cannot read {self.archive}: {error.strerror}") from None
