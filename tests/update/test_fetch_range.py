"""HttpFetcher.fetch_range: exactly the bytes asked, by one single-range request, or RangesUnsupported.

Against RangeServer (tests/support/ranges.py: a server that honours, ignores, refuses, drops or corrupts a
range on purpose) and a real nginx, each of which records every answer it sent and how many bytes of body
went with it, so a test can see that a 200 to a Range request was hung up on rather than read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pilot.errors import DownloadError
from pilot.update.fetch import HttpFetcher, RangesUnsupported
from tests.support.nginx import Nginx, needs_nginx
from tests.support.ranges import RangeServer, Served
from tests.support.server import reply

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
SIZE = 300_000
BIG = 64 * 1024 * 1024  # big enough that reading a whole body by mistake shows in the bytes sent


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def blob(site) -> bytes:
    data = os.urandom(SIZE)
    (site / "blob.bin").write_bytes(data)
    return data


@pytest.fixture
def big(site) -> Path:
    path = site / "big.bin"
    with path.open("wb") as stream:  # sparse: 64 MB of zeros without writing them
        stream.truncate(BIG)
    return path


def fetcher(**options) -> HttpFetcher:
    return HttpFetcher(**{"backoff": 0.01, "read_timeout": 10, "deadline": 30, **options})


def settled(server) -> list[Served]:
    """The server's record of its answers once it stopped changing (nginx logs just after answering)."""
    last = None
    for _ in range(100):
        now = server.requests() if isinstance(server, Nginx) else [Served(**vars(s)) for s in server.served]
        seen = [(s.path, s.status, s.body_bytes, s.complete) for s in now]
        if seen == last:
            return now
        last = seen
        time.sleep(0.05)
    return now


@pytest.fixture(params=[pytest.param("nginx", marks=needs_nginx), "honours"])
def honest(request, site):
    """A server that honours single ranges: nginx, and RangeServer("honours")."""
    with (Nginx(site) if request.param == "nginx" else RangeServer(site, "honours")) as running:
        yield running


# --- what is asked, and what comes back -------------------------------------------------------------------


@pytest.mark.parametrize(("start", "length"), [(0, 1), (0, 4096), (123_456, 7_890), (SIZE - 1, 1), (SIZE - 40, 40),
                                               (0, SIZE)])
def test_a_range_comes_back_exactly_by_one_single_range_request(honest, blob, start, length):
    data = fetcher().fetch_range(f"{honest.url}/blob.bin", start=start, length=length)
    assert data == blob[start:start + length]
    [served] = settled(honest)
    assert (served.status, served.range) == (206, f"bytes={start}-{start + length - 1}")
    assert served.content_range == f"bytes {start}-{start + length - 1}/{SIZE}"
    assert served.body_bytes == length


def test_ranges_of_one_file_reuse_the_connection_and_stay_single(honest, blob):
    http = fetcher()
    pieces = [(0, 100), (5_000, 3), (200_000, 99_999), (SIZE - 1, 1)]
    assert [http.fetch_range(f"{honest.url}/blob.bin", start=s, length=n) for s, n in pieces] == \
        [blob[s:s + n] for s, n in pieces]
    assert [s.range for s in settled(honest)] == [f"bytes={s}-{s + n - 1}" for s, n in pieces]


@pytest.mark.parametrize(("start", "length"), [(-1, 10), (0, 0), (5, -3)])
def test_an_impossible_range_is_a_programming_error_before_any_request(blob, site, start, length):
    with RangeServer(site) as server:
        with pytest.raises(ValueError):
            fetcher().fetch_range(f"{server.url}/blob.bin", start=start, length=length)
        assert server.served == []


# --- servers that do not serve the range: RangesUnsupported, asked once -----------------------------------


def test_a_server_that_ignores_ranges_is_hung_up_on_without_reading_the_body(site, big):
    with RangeServer(site, "ignores") as server:
        began = time.monotonic()
        with pytest.raises(RangesUnsupported) as caught:
            fetcher().fetch_range(f"{server.url}/big.bin", start=1000, length=100)
        elapsed = time.monotonic() - began
        [served] = settled(server)
    assert "HTTP 200 to a Range request" in caught.value.one_line()
    assert (served.status, served.range) == (200, "bytes=1000-1099")
    # What the server got into the sockets' buffers before the hang-up arrived, never the whole body.
    assert not served.complete and served.body_bytes < BIG // 4, served
    assert elapsed < 5, elapsed


@needs_nginx
def test_nginx_that_ignores_ranges_is_hung_up_on_too(site, big):
    # nginx then answers any Range with 200. In a location: the server block already says max_ranges.
    with Nginx(site, server_config="location / { max_ranges 0; }") as server:
        with pytest.raises(RangesUnsupported, match="HTTP 200"):
            fetcher().fetch_range(f"{server.url}/big.bin", start=0, length=10)
        [served] = settled(server)
    assert served.status == 200 and not served.complete and served.body_bytes < BIG // 4, served


@pytest.mark.parametrize("status", [416, 501])
def test_a_server_that_refuses_ranges_is_asked_once(site, blob, status):
    with RangeServer(site, "refuses", refuse_status=status) as server:
        with pytest.raises(RangesUnsupported) as caught:
            fetcher(retries=3).fetch_range(f"{server.url}/blob.bin", start=0, length=10)
        served = settled(server)
    assert f"refuses byte ranges (HTTP {status})" in caught.value.one_line()
    assert [(s.status, s.range) for s in served] == [(status, "bytes=0-9")]  # no retry: the answer is the same


def test_a_range_past_the_end_is_refused_by_nginx_and_by_range_server(honest, blob):
    with pytest.raises(RangesUnsupported, match="HTTP 416"):
        fetcher().fetch_range(f"{honest.url}/blob.bin", start=SIZE, length=10)
    assert [s.status for s in settled(honest)] == [416]


def test_a_range_running_past_the_end_is_refused_rather_than_returned_short(honest, blob):
    """The server clips it to the file (206, Content-Range bytes SIZE-5-SIZE-1): not the range asked."""
    with pytest.raises(RangesUnsupported, match="HTTP 206"):
        fetcher().fetch_range(f"{honest.url}/blob.bin", start=SIZE - 5, length=10)
    [served] = settled(honest)
    assert served.content_range == f"bytes {SIZE - 5}-{SIZE - 1}/{SIZE}"


def wrong_206(content_range: str | None, body: bytes, length: int | None = None):
    """An override answering any Range with a 206 of this body and Content-Range."""
    def answer(handler) -> bool:
        handler.send_response(206)
        if content_range is not None:
            handler.send_header("Content-Range", content_range)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)
        return True

    return answer


@pytest.mark.parametrize("content_range", [
    f"bytes 0-9/{SIZE}",  # another range of the same length
    f"bytes 100-119/{SIZE}",  # the right start, another end
    f"bytes 10-109/{SIZE}",
    "bytes */300000",
    None,  # none at all
], ids=["another-range", "another-end", "longer", "unsatisfied", "missing"])
def test_a_206_for_another_range_is_refused(site, blob, content_range):
    with RangeServer(site) as server:
        server.override = wrong_206(content_range, blob[100:110])
        with pytest.raises(RangesUnsupported, match="does not serve byte ranges") as caught:
            fetcher(retries=3).fetch_range(f"{server.url}/blob.bin", start=100, length=10)
        assert server.requests == ["/blob.bin"]  # asked once
    assert "HTTP 206" in caught.value.one_line()


def test_a_206_with_the_right_header_but_more_body_is_refused(site, blob):
    with RangeServer(site) as server:
        server.override = wrong_206(f"bytes 100-109/{SIZE}", blob[100:200])
        with pytest.raises(DownloadError, match="larger than the 10-byte cap"):
            fetcher().fetch_range(f"{server.url}/blob.bin", start=100, length=10)


def test_a_206_with_the_right_header_but_less_body_is_refused(site, blob):
    with RangeServer(site) as server:
        server.override = wrong_206(f"bytes 100-109/{SIZE}", blob[100:105])
        with pytest.raises(DownloadError, match="ended after 5 of 10 bytes"):
            fetcher().fetch_range(f"{server.url}/blob.bin", start=100, length=10)


# --- a dropped connection: a DownloadError, retried like any other transient failure ---------------------


def test_a_dropped_connection_is_a_download_error(site, blob):
    with RangeServer(site, "drops", drop_after=1000) as server:
        with pytest.raises(DownloadError) as caught:
            fetcher(retries=0).fetch_range(f"{server.url}/blob.bin", start=0, length=5000)
        served = settled(server)
    assert not isinstance(caught.value, RangesUnsupported)
    assert "ended after 1000 of 5000 bytes" in caught.value.one_line()
    assert [(s.status, s.body_bytes, s.complete) for s in served] == [(206, 1000, False)]


def test_a_dropped_connection_is_retried_and_a_later_answer_counts(site, blob):
    with RangeServer(site, "drops", drop_after=10) as server:
        def once_then_honour(handler) -> bool:
            if len(server.served) == 1:
                server.behaviour = "honours"
            return False

        server.override = once_then_honour
        data = fetcher(retries=2).fetch_range(f"{server.url}/blob.bin", start=50, length=500)
        served = settled(server)
    assert data == blob[50:550]
    assert [(s.status, s.body_bytes) for s in served] == [(206, 10), (206, 500)]


def test_a_dropped_connection_ends_in_a_download_error_once_the_retries_are_spent(site, blob):
    with RangeServer(site, "drops") as server:
        with pytest.raises(DownloadError) as caught:
            fetcher(retries=2).fetch_range(f"{server.url}/blob.bin", start=0, length=100)
        assert len(server.served) == 3
    assert caught.value.one_line().endswith("ended after 50 of 100 bytes (gave up after 3 attempts)")


def test_corrupt_bytes_are_returned_as_they_came(site, blob):
    """fetch_range checks the range and its length, not its content: each piece's sha256 (pilot.update.delta)
    is what catches a wrong byte."""
    with RangeServer(site, "corrupts", flip_at=3) as server:
        data = fetcher().fetch_range(f"{server.url}/blob.bin", start=10, length=8)
    assert len(data) == 8 and data != blob[10:18]
    assert data[:3] + data[4:] == blob[10:13] + blob[14:18]


# --- redirects and transient statuses keep the range -------------------------------------------------------


def test_a_redirect_is_followed_with_the_same_range(site, blob):
    with RangeServer(site) as server:
        def moved(handler) -> bool:
            if handler.path != "/old.bin":
                return False
            reply(handler, 302, headers={"Location": "/blob.bin"})
            return True

        server.override = moved
        assert fetcher().fetch_range(f"{server.url}/old.bin", start=7, length=13) == blob[7:20]
        assert [(s.path, s.range) for s in settled(server)] == [("/blob.bin", "bytes=7-19")]


def test_a_busy_server_is_asked_again_for_the_same_range(site, blob):
    with RangeServer(site) as server:
        busy = [503]

        def unavailable_once(handler) -> bool:
            if not busy:
                return False
            reply(handler, busy.pop())
            return True

        server.override = unavailable_once
        assert fetcher().fetch_range(f"{server.url}/blob.bin", start=1, length=2) == blob[1:3]
        assert server.requests == ["/blob.bin", "/blob.bin"]
