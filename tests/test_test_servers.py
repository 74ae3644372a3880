"""The servers the range-download (delta update) tests run against: real nginx, and RangeServer's five behaviours.

Each is asked with urllib3 for bytes of a real file, and what it answers, and records, is checked."""

from __future__ import annotations

import os
import random
import time

import pytest
import urllib3

from tests.support.nginx import Nginx, NginxError, needs_nginx
from tests.support.ranges import BEHAVIOURS, RangeServer, parse_range

SIZE = 300_000


@pytest.fixture
def blob(site) -> bytes:
    data = random.Random(7).randbytes(SIZE)
    (site / "pilot.pyz").write_bytes(data)
    (site / "manifest.json").write_text('{"version": "2.0.0"}\n')
    return data


@pytest.fixture
def http():
    with urllib3.PoolManager(retries=False, timeout=10) as pool:
        yield pool


def get(http, url: str, **headers: str) -> urllib3.BaseHTTPResponse:
    return http.request("GET", url, headers={key.replace("_", "-"): value for key, value in headers.items()})


# -- nginx -----------------------------------------------------------------------------------------------


@needs_nginx
def test_nginx_answers_one_range_with_206_and_exactly_those_bytes(site, blob, http):
    with Nginx(site) as server:
        whole = get(http, server.url + "/pilot.pyz")
        part = get(http, server.url + "/pilot.pyz", Range="bytes=1000-1999")
        tail = get(http, server.url + "/pilot.pyz", Range="bytes=-500")
        log = server.requests(at_least=3)
    assert (whole.status, whole.headers["Accept-Ranges"], whole.data) == (200, "bytes", blob)
    assert (part.status, part.headers["Content-Range"], part.data) == (206, f"bytes 1000-1999/{SIZE}", blob[1000:2000])
    assert (tail.status, tail.headers["Content-Range"], tail.data) == (206, f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}",
                                                                       blob[-500:])
    assert part.headers["ETag"] == whole.headers["ETag"]
    assert [(r.method, r.path, r.status, r.range, r.body_bytes) for r in log] == [
        ("GET", "/pilot.pyz", 200, None, SIZE),
        ("GET", "/pilot.pyz", 206, "bytes=1000-1999", 1000),
        ("GET", "/pilot.pyz", 206, "bytes=-500", 500)]
    assert log[1].content_range == f"bytes 1000-1999/{SIZE}" and log[1].complete
    assert log[1].bytes_sent > log[1].body_bytes  # headers count too


@needs_nginx
def test_nginx_answers_several_ranges_with_a_multipart_206(site, blob, http):
    """nginx (unlike GitHub Releases, which answers 501) sends multipart/byteranges: the updater asks for one
    range a request, so it never has to parse one."""
    with Nginx(site) as server:
        answer = get(http, server.url + "/pilot.pyz", Range="bytes=0-9,100-109")
    assert answer.status == 206
    assert answer.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert "Content-Range" not in answer.headers
    assert blob[0:10] in answer.data and blob[100:110] in answer.data
    assert f"Content-Range: bytes 100-109/{SIZE}".encode() in answer.data


@needs_nginx
def test_nginx_answers_if_none_match_with_304_and_bad_ranges_with_416(site, blob, http):
    with Nginx(site) as server:
        etag = get(http, server.url + "/manifest.json").headers["ETag"]
        same = get(http, server.url + "/manifest.json", If_None_Match=etag)
        weak = get(http, server.url + "/manifest.json", If_None_Match=f'"other", W/{etag}')
        changed = get(http, server.url + "/manifest.json", If_None_Match='"0-0"')
        past_end = get(http, server.url + "/pilot.pyz", Range=f"bytes={SIZE}-")
        backwards = get(http, server.url + "/pilot.pyz", Range="bytes=9-0")
        stale = get(http, server.url + "/pilot.pyz", Range="bytes=0-9", If_Range='"0-0"')
        log = server.requests(at_least=7)
    assert (same.status, same.data, same.headers["ETag"]) == (304, b"", etag)
    assert (weak.status, changed.status) == (304, 200)
    assert [r.body_bytes for r in log[1:3]] == [0, 0] and log[1].if_none_match == etag
    assert (past_end.status, past_end.headers["Content-Range"]) == (416, f"bytes */{SIZE}")
    assert backwards.status == 416
    assert (stale.status, stale.data) == (200, blob)  # If-Range names another version: the whole file


@needs_nginx
def test_nginx_is_stopped_when_the_test_fails(site, blob, http):
    server = Nginx(site)
    with pytest.raises(RuntimeError, match="the test failed"), server:
        pid, directory = server.pid, server.dir
        assert get(http, server.url + "/manifest.json").status == 200
        raise RuntimeError("the test failed")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not directory.exists()
    assert [r.status for r in server.requests()] == [200]  # the log outlives the server


@needs_nginx
def test_nginx_starts_quickly_and_says_why_it_does_not(site, tmp_path):
    with Nginx(site) as server:
        assert server.startup_seconds < 1.0
    with pytest.raises(NginxError, match="unknown directive"), Nginx(site, server_config="no_such_directive on;"):
        pass
    with pytest.raises(NginxError, match="not installed"), Nginx(site, binary=tmp_path / "nginx"):
        pass


# -- RangeServer -----------------------------------------------------------------------------------------


def test_honours_answers_one_range_like_nginx_and_refuses_several_like_github(site, blob, http):
    with RangeServer(site, "honours") as server:
        whole = get(http, server.url + "/pilot.pyz")
        part = get(http, server.url + "/pilot.pyz", Range="bytes=1000-1999")
        open_ended = get(http, server.url + "/pilot.pyz", Range=f"bytes={SIZE - 10}-")
        clipped = get(http, server.url + "/pilot.pyz", Range=f"bytes={SIZE - 10}-{SIZE * 2}")
        several = get(http, server.url + "/pilot.pyz", Range="bytes=0-9,100-109")
        past_end = get(http, server.url + "/pilot.pyz", Range=f"bytes={SIZE}-")
        malformed = get(http, server.url + "/pilot.pyz", Range="bytes=x-y")
        other_unit = get(http, server.url + "/pilot.pyz", Range="pages=1-2")
        if_range = get(http, server.url + "/pilot.pyz", Range="bytes=0-9", If_Range=whole.headers["ETag"])
        stale = get(http, server.url + "/pilot.pyz", Range="bytes=0-9", If_Range='"0-0"')
    assert (whole.status, whole.headers["Accept-Ranges"], whole.data) == (200, "bytes", blob)
    assert (part.status, part.headers["Content-Range"], part.data) == (206, f"bytes 1000-1999/{SIZE}", blob[1000:2000])
    assert (open_ended.status, open_ended.data) == (206, blob[-10:])
    assert (clipped.headers["Content-Range"], clipped.data) == (f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}", blob[-10:])
    assert several.status == 501
    assert (past_end.status, past_end.headers["Content-Range"], malformed.status) == (416, f"bytes */{SIZE}", 416)
    assert (other_unit.status, other_unit.data) == (200, blob)
    assert (if_range.status, if_range.data) == (206, blob[:10])
    assert (stale.status, stale.data) == (200, blob)
    assert [(s.status, s.range, s.body_bytes) for s in server.served[:2]] == [
        (200, None, SIZE), (206, "bytes=1000-1999", 1000)]
    assert server.served[1].content_range == f"bytes 1000-1999/{SIZE}"
    assert server.requests[:2] == ["/pilot.pyz", "/pilot.pyz"]


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_every_behaviour_serves_whole_files_with_an_etag_and_304(site, blob, http, behaviour):
    """The manifest and a fallback full download work whatever a server does with Range."""
    with RangeServer(site, behaviour) as server:
        whole = get(http, server.url + "/pilot.pyz")
        again = get(http, server.url + "/pilot.pyz", If_None_Match=whole.headers["ETag"])
        head = http.request("HEAD", server.url + "/manifest.json")
        missing = get(http, server.url + "/nope")
    assert (whole.status, whole.data) == (200, blob)
    assert (again.status, again.data) == (304, b"")
    assert (head.status, head.data, head.headers["Content-Length"]) == (200, b"", "21")
    assert missing.status == 404
    assert [(s.method, s.status, s.body_bytes) for s in server.served] == [
        ("GET", 200, SIZE), ("GET", 304, 0), ("HEAD", 200, 0), ("GET", 404, len(missing.data))]
    assert server.body_bytes("/pilot.pyz") == SIZE


def test_ignores_sends_the_whole_file_for_a_range(site, blob, http):
    with RangeServer(site, "ignores") as server:
        answer = get(http, server.url + "/pilot.pyz", Range="bytes=0-9")
    assert (answer.status, answer.data) == (200, blob)
    assert "Accept-Ranges" not in answer.headers and "Content-Range" not in answer.headers
    assert (server.served[0].range, server.served[0].body_bytes) == ("bytes=0-9", SIZE)


@pytest.mark.parametrize("status", [416, 501])
def test_refuses_answers_any_range_with_an_error(site, blob, http, status):
    with RangeServer(site, "refuses", refuse_status=status) as server:
        answer = get(http, server.url + "/pilot.pyz", Range="bytes=0-9")
    assert answer.status == status and blob[:10] not in answer.data
    assert ("Content-Range" in answer.headers) == (status == 416)
    assert server.served[0].status == status


def test_drops_the_connection_part_way_through_a_range(site, blob, http):
    with RangeServer(site, "drops", drop_after=300) as server:
        answer = http.request("GET", server.url + "/pilot.pyz", headers={"Range": "bytes=1000-1999"},
                              preload_content=False)
        assert (answer.status, answer.headers["Content-Length"]) == (206, "1000")
        with pytest.raises(urllib3.exceptions.ProtocolError, match="IncompleteRead"):
            answer.read()
        assert get(http, server.url + "/pilot.pyz").data == blob  # the fallback: a whole, intact file
    dropped = server.served[0]
    assert (dropped.status, dropped.body_bytes, dropped.complete) == (206, 300, False)
    assert server.body_bytes() == 300 + SIZE


def test_drops_by_default_half_way(site, blob, http):
    with RangeServer(site, "drops") as server:
        answer = http.request("GET", server.url + "/pilot.pyz", headers={"Range": "bytes=0-99"},
                              preload_content=False)
        with pytest.raises(urllib3.exceptions.ProtocolError):
            answer.read()
    assert server.served[0].body_bytes == 50


def test_corrupts_flips_one_byte_of_a_range(site, blob, http):
    with RangeServer(site, "corrupts") as server:
        answer = get(http, server.url + "/pilot.pyz", Range="bytes=1000-1999")
        server.flip_at = 0
        first = get(http, server.url + "/pilot.pyz", Range="bytes=1000-1999")
    assert (answer.status, answer.headers["Content-Range"], len(answer.data)) == (206, f"bytes 1000-1999/{SIZE}", 1000)
    differ = [i for i, (got, wanted) in enumerate(zip(answer.data, blob[1000:2000], strict=True)) if got != wanted]
    assert differ == [500] and answer.data[500] == blob[1500] ^ 0xFF
    assert first.data[0] != blob[1000] and first.data[1:] == blob[1001:2000]
    assert server.served[0].complete


def test_a_behaviour_can_change_between_requests(site, blob, http):
    with RangeServer(site, "ignores") as server:
        assert get(http, server.url + "/pilot.pyz", Range="bytes=0-9").status == 200
        server.behaviour = "honours"
        assert get(http, server.url + "/pilot.pyz", Range="bytes=0-9").data == blob[:10]
    with pytest.raises(ValueError, match="behaviour"):
        RangeServer(site, "sometimes")  # type: ignore[arg-type]


@needs_nginx
def test_honours_agrees_with_nginx_except_on_several_ranges(site, blob, http):
    """RangeServer("honours") stands in for nginx: same status, ETag, Content-Range and bytes."""
    asks = [{}, {"Range": "bytes=5-14"}, {"Range": "bytes=-7"}, {"Range": f"bytes={SIZE - 3}-"},
            {"Range": f"bytes={SIZE}-"}, {"Range": "bytes=9-0"}, {"Range": "items=0-1"}, {"Range": "bytes=0-9, 20-29"}]
    answers = {}
    with Nginx(site) as nginx, RangeServer(site, "honours") as ours:
        for name, server in (("nginx", nginx), ("ours", ours)):
            replies = [http.request("GET", server.url + "/pilot.pyz", headers=ask) for ask in asks]
            etag = replies[0].headers["ETag"]
            replies.append(get(http, server.url + "/pilot.pyz", If_None_Match=etag))
            answers[name] = [(r.status, r.headers.get("ETag"), r.headers.get("Content-Range"),
                              r.data if r.status in (200, 206) else None) for r in replies]
    nginx_several, ours_several = answers["nginx"].pop(len(asks) - 1), answers["ours"].pop(len(asks) - 1)
    assert answers["ours"] == answers["nginx"]
    assert (nginx_several[0], ours_several[0]) == (206, 501)


def test_parse_range():
    assert parse_range("bytes=0-9", 100) == [(0, 9)]
    assert parse_range("bytes=90-", 100) == [(90, 99)]
    assert parse_range("bytes=-10", 100) == [(90, 99)]
    assert parse_range("bytes=-1000", 100) == [(0, 99)]
    assert parse_range("bytes=0-9, 20-29", 100) == [(0, 9), (20, 29)]
    assert parse_range("bytes=100-", 100) == []
    assert parse_range("bytes=-0", 100) == []
    assert parse_range("bytes=9-0", 100) == []
    assert parse_range("bytes=a-b", 100) == []
    assert parse_range("bytes=1-2-3", 100) == []
    assert parse_range("bytes=-", 100) == []
    assert parse_range("items=0-9", 100) is None
    assert parse_range("0-9", 100) is None


def test_range_server_closes_its_keep_alive_connections(site, blob, http):
    with RangeServer(site) as server:
        assert get(http, server.url + "/manifest.json").status == 200
        assert len(server._connections) == 1  # kept alive
    deadline = time.monotonic() + 5
    while server._connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not server._connections
    with pytest.raises(urllib3.exceptions.HTTPError):
        get(http, server.url + "/manifest.json")

