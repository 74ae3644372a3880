"""HttpFetcher against real servers on 127.0.0.1: plain HTTP, TLS via trustme, and a CONNECT proxy."""

from __future__ import annotations

import email.utils
import socket
import ssl
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest
import trustme

from pilot.errors import DownloadError
from pilot.update.fetch import HttpFetcher, Response
from tests.support.proxy import FakeProxy
from tests.support.server import StaticServer, reply

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch) -> None:
    """The developer's own proxy settings must not leak into these tests."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


class FastServer(StaticServer):
    """StaticServer that shuts down in 50 ms instead of 500: there are dozens of servers in this file."""

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)


@pytest.fixture
def server(site) -> Iterator[StaticServer]:
    with FastServer(site) as running:
        yield running


# ---------------------------------------------------------------------------- helpers


def serve(server: StaticServer, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
    def override(h: BaseHTTPRequestHandler) -> bool:
        answer(h)
        return True

    server.override = override


def by_path(routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> Callable[[BaseHTTPRequestHandler], None]:
    return lambda h: routes.get(h.path, lambda h: reply(h, 404))(h)


def sequence(*answers: Callable[[BaseHTTPRequestHandler], None]) -> Callable[[BaseHTTPRequestHandler], None]:
    """The n-th request gets the n-th answer; the last one repeats."""
    calls = iter(range(10**6))
    return lambda h: answers[min(next(calls), len(answers) - 1)](h)


def failure(excinfo: pytest.ExceptionInfo[DownloadError]) -> str:
    line = excinfo.value.one_line()
    assert "\n" not in line and "Traceback" not in line and "urllib3" not in line
    return line


def collect(chunks: Iterator[bytes], into: list[bytes]) -> None:
    for chunk in chunks:
        into.append(chunk)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetcher(**kw) -> tuple[HttpFetcher, list[float]]:
    """A fetcher whose backoff sleeps are recorded instead of slept."""
    sleeps: list[float] = []
    return HttpFetcher(sleep=sleeps.append, **kw), sleeps


# ---------------------------------------------------------------------------- TLS and proxy fixtures


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_server(site, ca) -> Iterator[StaticServer]:
    """Like `server`, over TLS, with a certificate for 127.0.0.1 and updates.pilot.test (not localhost)."""
    srv = FastServer(site)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "updates.pilot.test").configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with srv:
        yield srv


def https_url(srv: StaticServer, path: str, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{srv.server_address[1]}{path}"


@pytest.fixture
def proxy() -> Iterator[FakeProxy]:
    with FakeProxy() as srv:
        yield srv


# ---------------------------------------------------------------------------- fetch


def test_fetch_returns_body_etag_and_final_url(server) -> None:
    agents: list[str | None] = []

    def answer(h: BaseHTTPRequestHandler) -> None:
        agents.append(h.headers.get("User-Agent"))
        reply(h, body=b"manifest", headers={"ETag": '"v1"'})

    serve(server, answer)
    result = HttpFetcher(user_agent="pilot/1.2").fetch(server.url + "/m.json", max_bytes=100)
    assert result == Response(200, b"manifest", '"v1"', server.url + "/m.json")
    assert agents == ["pilot/1.2"]


def test_etag_is_sent_and_304_comes_back_empty(server) -> None:
    sent: list[str | None] = []

    def answer(h: BaseHTTPRequestHandler) -> None:
        sent.append(h.headers.get("If-None-Match"))
        if h.headers.get("If-None-Match") == '"v1"':
            reply(h, 304, headers={"ETag": '"v1"'}, length=None)
        else:
            reply(h, body=b"fresh", headers={"ETag": '"v1"'})

    serve(server, answer)
    f = HttpFetcher()
    assert f.fetch(server.url + "/m", max_bytes=100).status == 200
    assert f.fetch(server.url + "/m", max_bytes=100, etag='"v1"') == Response(304, b"", '"v1"', server.url + "/m")
    assert sent == [None, '"v1"']


@pytest.mark.parametrize("length", [-1, None], ids=["content-length", "until-close"])
def test_fetch_enforces_the_byte_cap(server, length) -> None:
    serve(server, lambda h: reply(h, body=b"x" * 1000, length=length))
    f, _ = fetcher(retries=0)
    assert f.fetch(server.url + "/m", max_bytes=1000).data == b"x" * 1000
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=999)
    assert failure(excinfo).startswith(f"{server.url}/m is larger than the 999-byte cap")


def test_content_length_over_the_cap_is_refused_before_reading_the_body(server) -> None:
    serve(server, lambda h: reply(h, body=b"x" * 10, length=10**9))  # lies, then hangs up
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher(retries=0).fetch(server.url + "/m", max_bytes=999)
    assert failure(excinfo).startswith(f"{server.url}/m is larger than the 999-byte cap")


# ---------------------------------------------------------------------------- stream


def test_stream_yields_exactly_size_bytes_in_bounded_chunks(server) -> None:
    body = bytes(range(256)) * 40
    serve(server, lambda h: reply(h, body=body))
    chunks = list(HttpFetcher().stream(server.url + "/a.pyz", size=len(body), chunk_size=1000))
    assert b"".join(chunks) == body
    assert max(map(len, chunks)) <= 1000


def test_stream_refuses_a_body_longer_than_size_without_yielding_the_excess(server) -> None:
    serve(server, lambda h: reply(h, body=b"y" * 5000, length=None))
    got: list[bytes] = []
    with pytest.raises(DownloadError) as excinfo:
        collect(HttpFetcher().stream(server.url + "/a.pyz", size=3000, chunk_size=1024), got)
    assert sum(map(len, got)) == 3000
    assert failure(excinfo) == f"{server.url}/a.pyz sent more than the expected 3000 bytes"


@pytest.mark.parametrize("length", [100, None], ids=["content-length", "until-close"])
def test_stream_refuses_a_body_that_ends_short(server, length) -> None:
    serve(server, lambda h: reply(h, body=b"z" * 60, length=length))
    with pytest.raises(DownloadError) as excinfo:
        collect(HttpFetcher(retries=0).stream(server.url + "/a.pyz", size=100), [])
    assert failure(excinfo).startswith(f"{server.url}/a.pyz ended after 60 of 100 bytes")


def test_stream_refuses_a_content_length_other_than_size_before_reading(server) -> None:
    serve(server, lambda h: reply(h, body=b"q" * 100))
    f, sleeps = fetcher()
    with pytest.raises(DownloadError) as excinfo:
        collect(f.stream(server.url + "/a.pyz", size=50), [])
    assert failure(excinfo).startswith(f"{server.url}/a.pyz has Content-Length 100, expected 50 bytes")
    assert server.requests == ["/a.pyz"] and sleeps == []


def test_stream_of_50_mb_holds_one_chunk_at_a_time(server) -> None:
    block, blocks, chunk_size = b"\xab" * (1 << 20), 50, 1 << 16

    def answer(h: BaseHTTPRequestHandler) -> None:
        reply(h, length=len(block) * blocks)
        for _ in range(blocks):
            h.wfile.write(block)

    serve(server, answer)
    total, largest = 0, 0
    tracemalloc.start()
    try:
        for chunk in HttpFetcher().stream(server.url + "/big", size=len(block) * blocks, chunk_size=chunk_size):
            total, largest = total + len(chunk), max(largest, len(chunk))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == len(block) * blocks
    assert largest <= chunk_size
    assert peak < 4 << 20, f"peak {peak} bytes: the body is being buffered"


# ---------------------------------------------------------------------------- deadline


def trickle(h: BaseHTTPRequestHandler) -> None:
    """Headers, then one byte every 50 ms: never idle long enough for a read timeout."""
    h.send_response(200)
    h.send_header("Content-Length", "100000")
    h.end_headers()
    try:
        for _ in range(200):
            h.wfile.write(b"t")
            time.sleep(0.05)
    except OSError:
        pass


def stall(h: BaseHTTPRequestHandler) -> None:
    """A byte every 50 ms for 1.5 s, then silence: only a per-read timeout of what is left ends it on time."""
    h.send_response(200)
    h.send_header("Content-Length", "100000")
    h.end_headers()
    try:
        for _ in range(30):
            h.wfile.write(b"s")
            time.sleep(0.05)
    except OSError:
        return
    time.sleep(5)


@pytest.mark.parametrize("how", ["fetch", "stream"])
@pytest.mark.parametrize("answer", [trickle, stall], ids=["trickle", "stall"])
def test_a_slow_server_is_cut_off_at_the_deadline(server, how, answer) -> None:
    serve(server, answer)
    # A 2 s deadline: a socket timeout fixed when the request started would end the stall at 3.5 s.
    f = HttpFetcher(deadline=2, read_timeout=30)
    got: list[bytes] = []
    start = time.monotonic()
    with pytest.raises(DownloadError) as excinfo:
        if how == "fetch":
            f.fetch(server.url + "/slow", max_bytes=200000)
        else:
            collect(f.stream(server.url + "/slow", size=100000, chunk_size=1024), got)
    elapsed = time.monotonic() - start
    assert failure(excinfo).startswith(f"download of {server.url}/slow took longer than 2 s")
    assert 1.9 < elapsed < 3
    assert how == "fetch" or got, "stream should have yielded the bytes that did arrive"


# ---------------------------------------------------------------------------- retries


def test_5xx_is_retried(server) -> None:
    serve(server, sequence(lambda h: reply(h, 500), lambda h: reply(h, 503), lambda h: reply(h, body=b"ok")))
    f, sleeps = fetcher()
    assert f.fetch(server.url + "/m", max_bytes=10).data == b"ok"
    assert sleeps == [0.5, 1.0]
    assert len(server.requests) == 3


def test_retries_are_bounded_with_exponential_backoff(server) -> None:
    serve(server, lambda h: reply(h, 503))
    f, sleeps = fetcher(retries=3)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=10)
    assert failure(excinfo) == f"HTTP 503 for {server.url}/m (gave up after 4 attempts)"
    assert sleeps == [0.5, 1.0, 2.0] and len(server.requests) == 4


@pytest.mark.parametrize(("header", "cap", "expected"), [
    ("7", 60, 7.0),
    ("Fri, 31 Dec 2099 23:59:59 GMT", 5, 5.0),  # an HTTP-date, capped at max_retry_after
])
def test_429_retry_after_is_honoured(server, header, cap, expected) -> None:
    serve(server, sequence(lambda h: reply(h, 429, headers={"Retry-After": header}), lambda h: reply(h, body=b"ok")))
    f, sleeps = fetcher(max_retry_after=cap)
    assert f.fetch(server.url + "/m", max_bytes=10).data == b"ok"
    assert sleeps == [expected]


def test_no_sleep_reaches_past_the_deadline(server) -> None:
    serve(server, lambda h: reply(h, 503, headers={"Retry-After": "30"}))
    f, sleeps = fetcher(deadline=10)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=10)
    assert failure(excinfo).startswith(f"HTTP 503 for {server.url}/m")
    assert sleeps == [] and len(server.requests) == 1
    assert excinfo.value.retry_after == 30


def test_a_long_retry_after_is_waited_for_up_to_max_retry_after_by_default(server) -> None:
    serve(server, sequence(lambda h: reply(h, 503, headers={"Retry-After": "120"}), lambda h: reply(h, body=b"ok")))
    f, sleeps = fetcher()
    assert f.wait_for_retry_after is True
    assert f.fetch(server.url + "/m", max_bytes=10).data == b"ok"
    assert sleeps == [60.0] and len(server.requests) == 2


def test_the_default_really_sleeps_for_retry_after(server) -> None:
    serve(server, sequence(lambda h: reply(h, 429, headers={"Retry-After": "1"}), lambda h: reply(h, body=b"ok")))
    started = time.monotonic()
    assert HttpFetcher().fetch(server.url + "/m", max_bytes=10).data == b"ok"
    assert time.monotonic() - started >= 1.0
    assert len(server.requests) == 2


@pytest.mark.parametrize("how", ["fetch", "stream"])
@pytest.mark.parametrize("status", [503, 429])
def test_without_waiting_a_retry_after_ends_the_fetch_at_once(server, how, status) -> None:
    serve(server, sequence(lambda h: reply(h, status, headers={"Retry-After": "120"}), lambda h: reply(h, body=b"ok")))
    f, sleeps = fetcher(wait_for_retry_after=False)
    started = time.monotonic()
    with pytest.raises(DownloadError) as excinfo:
        if how == "fetch":
            f.fetch(server.url + "/m", max_bytes=10)
        else:
            collect(f.stream(server.url + "/m", size=2), [])
    assert time.monotonic() - started < 1
    assert failure(excinfo) == f"HTTP {status} for {server.url}/m (the server asks to retry after 120 s)"
    assert excinfo.value.retry_after == 120  # not clamped to max_retry_after (60 s)
    assert sleeps == [] and len(server.requests) == 1


@pytest.mark.parametrize(("header", "low", "high"), [
    ("0", 0, 0),
    ("3600", 3600, 3600),
    ("999999999", 86400, 86400),  # a day at most: no server can silence the checker for ever
    ("Fri, 31 Dec 2099 23:59:59 GMT", 86400, 86400),
    (None, 590, 601),  # an HTTP-date ten minutes from now
])
def test_without_waiting_retry_after_is_bounded_by_a_day(server, header, low, high) -> None:
    value = header or email.utils.formatdate(time.time() + 600, usegmt=True)
    serve(server, lambda h: reply(h, 503, headers={"Retry-After": value}))
    f, sleeps = fetcher(wait_for_retry_after=False)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=10)
    assert low <= excinfo.value.retry_after <= high
    assert sleeps == []


def test_without_waiting_transient_errors_without_retry_after_are_still_retried(server) -> None:
    serve(server, sequence(lambda h: reply(h, 502), lambda h: reply(h, body=b"ok")))
    f, sleeps = fetcher(wait_for_retry_after=False)
    assert f.fetch(server.url + "/m", max_bytes=10).data == b"ok"
    assert sleeps == [0.5]


def test_giving_up_keeps_the_last_retry_after(server) -> None:
    serve(server, sequence(*(lambda h, n=n: reply(h, 503, headers={"Retry-After": str(n)}) for n in (1, 2, 3))))
    f, sleeps = fetcher(retries=2)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=10)
    assert failure(excinfo) == f"HTTP 503 for {server.url}/m (gave up after 3 attempts)"
    assert excinfo.value.retry_after == 3
    assert sleeps == [1.0, 2.0]


def test_giving_up_keeps_a_retry_after_even_when_the_last_answer_had_none(server) -> None:
    serve(server, sequence(lambda h: reply(h, 429, headers={"Retry-After": "5"}), lambda h: reply(h, 500)))
    f, sleeps = fetcher(retries=1)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=10)
    assert failure(excinfo) == f"HTTP 500 for {server.url}/m (gave up after 2 attempts)"
    assert excinfo.value.retry_after == 5 and sleeps == [5.0]


def test_errors_without_retry_after_say_none(server) -> None:
    serve(server, lambda h: reply(h, 503))
    f, _ = fetcher(retries=1)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/m", max_bytes=10)
    assert excinfo.value.retry_after is None
    assert DownloadError("any").retry_after is None


def test_404_is_not_retried(server) -> None:
    serve(server, lambda h: reply(h, 404))
    f, sleeps = fetcher()
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(server.url + "/missing", max_bytes=10)
    assert failure(excinfo) == f"HTTP 404 for {server.url}/missing"
    assert sleeps == [] and server.requests == ["/missing"]


def test_stream_retries_only_before_the_first_byte(server) -> None:
    def drop_midway(h: BaseHTTPRequestHandler) -> None:
        reply(h, body=b"a" * 50, length=100)

    serve(server, sequence(lambda h: reply(h, 502), drop_midway, lambda h: reply(h, body=b"b" * 100)))
    f, sleeps = fetcher()
    got: list[bytes] = []
    with pytest.raises(DownloadError) as excinfo:
        collect(f.stream(server.url + "/a.pyz", size=100), got)
    assert failure(excinfo).startswith(f"{server.url}/a.pyz ended after 50 of 100 bytes")
    assert b"".join(got) == b"a" * 50
    assert sleeps == [0.5] and len(server.requests) == 2


# ---------------------------------------------------------------------------- redirects


def test_redirects_within_the_same_host_are_followed(server) -> None:
    serve(server, by_path({
        "/a": lambda h: reply(h, 302, headers={"Location": "/b"}),
        "/b": lambda h: reply(h, 301, headers={"Location": server.url + "/c"}),
        "/c": lambda h: reply(h, body=b"here"),
    }))
    result = HttpFetcher().fetch(server.url + "/a", max_bytes=10)
    assert (result.data, result.url) == (b"here", server.url + "/c")


def test_redirect_to_another_host_is_refused_unless_allowed(server) -> None:
    other = f"http://localhost:{server.server_address[1]}/b"
    serve(server, by_path({"/a": lambda h: reply(h, 302, headers={"Location": other}),
                           "/b": lambda h: reply(h, body=b"elsewhere")}))
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher().fetch(server.url + "/a", max_bytes=100)
    assert failure(excinfo).startswith("refused redirect from 127.0.0.1 to localhost")
    assert server.requests == ["/a"]
    allowed = HttpFetcher(allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    assert allowed.fetch(server.url + "/a", max_bytes=100).url == other


def test_redirect_from_https_to_http_is_refused(tls_server, server, ca_file) -> None:
    serve(tls_server, lambda h: reply(h, 302, headers={"Location": server.url + "/x"}))
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher(ca_certs=ca_file).fetch(https_url(tls_server, "/a"), max_bytes=100)
    assert failure(excinfo).startswith("refused redirect from https to http")
    assert server.requests == []


def test_more_than_five_redirects_are_refused(server) -> None:
    serve(server, lambda h: reply(h, 307, headers={"Location": "/loop"}))
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher().fetch(server.url + "/loop", max_bytes=100)
    assert failure(excinfo) == f"too many redirects (more than 5) from {server.url}/loop"
    assert len(server.requests) == 6


# ---------------------------------------------------------------------------- schemes and proxies


@pytest.mark.parametrize(("url", "expected"), [
    ("http://example.invalid/m.json", "refused http://example.invalid/m.json: plain http:// to example.invalid is "
                                      "not allowed (update URLs must use https://; plain http is only allowed to "
                                      "this machine)"),
    ("ftp://127.0.0.1/m.json", "refused ftp://127.0.0.1/m.json: ftp:// URLs are not allowed (update URLs must "
                               "use https://; plain http is only allowed to this machine)"),
    ("file:///etc/passwd", "refused URL without a host: file:///etc/passwd"),
])
def test_insecure_schemes_are_refused_before_connecting(proxy, monkeypatch, url, expected) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher().fetch(url, max_bytes=100)
    assert failure(excinfo) == expected  # not "could not resolve": no connection was tried
    assert proxy.connections == 0


def test_a_refused_url_is_shown_without_its_credentials() -> None:
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher().fetch("http://user:s3cret@updates.example.org/m.json", max_bytes=100)
    assert failure(excinfo).startswith("refused http://updates.example.org/m.json: plain http:// to updates")
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher().fetch("https://user:s3cret@[::1/m.json", max_bytes=100)
    assert failure(excinfo).startswith("refused malformed URL https://[::1/m.json: ")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_never_goes_through_a_proxy(server, proxy, monkeypatch, host) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    serve(server, lambda h: reply(h, body=b"direct"))
    url = f"http://{host}:{server.server_address[1]}/m"
    assert HttpFetcher().fetch(url, max_bytes=100).data == b"direct"
    assert proxy.connections == 0


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_https_goes_through_the_proxy_unless_no_proxy(tls_server, proxy, ca_file, monkeypatch, variable) -> None:
    monkeypatch.setenv(variable, proxy.url)
    serve(tls_server, lambda h: reply(h, body=b"via proxy"))
    url = https_url(tls_server, "/m", host="updates.pilot.test")  # resolvable only by the proxy
    assert HttpFetcher(ca_certs=ca_file).fetch(url, max_bytes=100).data == b"via proxy"
    tunnel = f"CONNECT updates.pilot.test:{tls_server.server_address[1]}"
    assert [line.rpartition(" ")[0] for line in proxy.seen] == [tunnel]

    monkeypatch.setenv("NO_PROXY", "localhost,.pilot.test")
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher(ca_certs=ca_file, retries=0).fetch(url, max_bytes=100)
    assert failure(excinfo).startswith("could not resolve updates.pilot.test")
    assert proxy.connections == 1


def test_proxy_credentials_travel_in_a_header_and_never_in_a_message(tls_server, proxy, ca_file,
                                                                      monkeypatch) -> None:
    port = proxy.server_address[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://pilot:s%40cret@127.0.0.1:{port}")
    serve(tls_server, lambda h: reply(h, body=b"via proxy"))
    url = https_url(tls_server, "/m", host="updates.pilot.test")
    assert HttpFetcher(ca_certs=ca_file).fetch(url, max_bytes=100).data == b"via proxy"
    [head] = proxy.heads
    assert "Proxy-Authorization: Basic cGlsb3Q6c0BjcmV0\r\n" in head  # base64 of "pilot:s@cret"

    closed = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://pilot:s%40cret@127.0.0.1:{closed}")
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher(ca_certs=ca_file, retries=0).fetch(url, max_bytes=100)
    line = failure(excinfo)
    assert line.startswith(f"could not use proxy http://127.0.0.1:{closed} to reach updates.pilot.test")
    assert "pilot" not in line.replace("pilot.test", "") and "cret" not in line


# ---------------------------------------------------------------------------- TLS and connection failures


def test_tls_is_verified_against_the_given_ca(tls_server, ca_file, tmp_path) -> None:
    serve(tls_server, lambda h: reply(h, body=b"secure"))
    assert HttpFetcher(ca_certs=ca_file).fetch(https_url(tls_server, "/m"), max_bytes=100).data == b"secure"

    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    f, sleeps = fetcher(ca_certs=str(stranger))
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(https_url(tls_server, "/m"), max_bytes=100)
    assert failure(excinfo).startswith("TLS certificate of 127.0.0.1 did not verify")
    assert sleeps == [] and tls_server.requests == ["/m"]


def test_tls_default_trust_rejects_a_private_ca(tls_server) -> None:
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher().fetch(https_url(tls_server, "/m"), max_bytes=100)
    assert failure(excinfo).startswith("TLS certificate of 127.0.0.1 did not verify")


def test_tls_certificate_for_another_name_is_refused(tls_server, ca_file) -> None:
    with pytest.raises(DownloadError) as excinfo:
        HttpFetcher(ca_certs=ca_file).fetch(https_url(tls_server, "/m", host="localhost"), max_bytes=100)
    assert failure(excinfo).startswith("TLS certificate of localhost did not verify")
    assert tls_server.requests == []


def test_connection_refused_is_one_line_and_retried() -> None:
    port = closed_port()
    f, sleeps = fetcher(retries=1)
    with pytest.raises(DownloadError) as excinfo:
        f.fetch(f"http://127.0.0.1:{port}/m", max_bytes=10)
    assert failure(excinfo) == f"could not connect to 127.0.0.1:{port} (connection refused) (gave up after 2 attempts)"
    assert sleeps == [0.5]


def test_dns_failure_says_could_not_resolve() -> None:
    f, sleeps = fetcher()
    with pytest.raises(DownloadError) as excinfo:
        f.fetch("https://example.invalid/m.json", max_bytes=10)
    assert failure(excinfo).startswith("could not resolve example.invalid")
    assert sleeps == []
