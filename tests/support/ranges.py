"""Servers that get HTTP Range right or wrong on purpose, for the updater's delta (byte-range) downloads.

`RangeServer(root, behaviour)` is a StaticServer (tests/support/server.py) whose answer to a GET with
`Range: bytes=...` is one of BEHAVIOURS:

    honours   one range -> 206 with the exact bytes and Content-Range; more than one range -> 501 (as GitHub
              Releases answers); unsatisfiable or malformed -> 416 with `Content-Range: bytes */SIZE`;
              a unit other than bytes, or an If-Range that no longer matches -> 200 and the whole file
    ignores   200 and the whole file, no Accept-Ranges (what SimpleHTTPRequestHandler does)
    refuses   `refuse_status` (416, or 501) for any Range
    drops     206 and honest headers (Content-Length of the whole range), then only `drop_after` bytes of
              the body (default: half) and the connection is closed
    corrupts  206 with the right length and Content-Range, one byte (`flip_at`, default: the middle) inverted

A GET without Range is served whole by every behaviour, with nginx's ETag (`"<mtime hex>-<size hex>"`, so
the same file has the same ETag here and in tests/support/nginx.py) and Last-Modified, and a matching
If-None-Match (weak comparison, or `*`) or an exact If-Modified-Since gets 304, as nginx does. The
connection is HTTP/1.1 keep-alive. `behaviour` may be changed between requests.

Every answer is recorded in `server.served` (a list of Served, shared with nginx.py) before its body is
sent, with the bytes of body it sent, so a test can assert what went over the wire:

    with RangeServer(site, "drops", drop_after=100) as server:
        ...  # point the updater at server.url
        assert [s.status for s in server.served] == [200, 206, 200]   # manifest, a range, the fallback
        assert server.body_bytes("/pilot-2.0.0.pyz") == 100 + size

`server.requests` (the paths, from StaticServer) and `server.override` work as in StaticServer; an override
that answers a request should send Content-Length (its connection is closed afterwards either way).
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO, Literal

from tests.support.server import StaticServer, _Handler

Behaviour = Literal["honours", "ignores", "refuses", "drops", "corrupts"]
BEHAVIOURS: tuple[Behaviour, ...] = ("honours", "ignores", "refuses", "drops", "corrupts")

CHUNK = 64 * 1024


@dataclass
class Served:
    """One answered request, as nginx's access log or RangeServer records it."""

    method: str
    path: str  # as requested, with any query string
    status: int
    range: str | None = None  # the request's Range header
    if_none_match: str | None = None
    content_range: str | None = None  # the response's Content-Range
    body_bytes: int = 0  # bytes of body sent (for a failed send: at most this many)
    bytes_sent: int = 0  # status line, headers and body
    complete: bool = True  # the whole body announced was sent


def etag_of(stat: os.stat_result) -> str:
    """nginx's strong ETag for a static file: last-modified time and size in hex."""
    return f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'


def parse_range(header: str, size: int) -> list[tuple[int, int]] | None:
    """The inclusive byte ranges a Range header asks of `size` bytes, as nginx reads it.

    None: not a bytes range (serve the whole file). []: malformed or unsatisfiable (416). Ranges past the
    end are clipped; a suffix range `-N` is the last N bytes."""
    unit, sep, specs = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges = []
    for spec in specs.split(","):
        spec = spec.strip()
        if not spec:
            continue
        first, dash, last = (part.strip() for part in spec.partition("-"))
        if not dash or not (first or last) or any(part and not (part.isascii() and part.isdigit())
                                                  for part in (first, last)):
            return []
        if not first:  # the last N bytes
            if int(last) == 0 or size == 0:
                continue
            ranges.append((max(0, size - int(last)), size - 1))
            continue
        start = int(first)
        end = int(last) if last else size - 1
        if end < start:
            return []
        if start < size:
            ranges.append((start, min(end, size - 1)))
    return ranges


class _RangeHandler(_Handler):
    server: RangeServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and a small body go in two writes: no 40 ms delayed-ACK stall
    timeout = 30  # an idle keep-alive connection does not hold its thread forever
    _record: Served | None = None  # the answer being sent, which flush_headers adds the headers' bytes to

    def setup(self) -> None:
        super().setup()
        self.server._connections.add(self.connection)

    def finish(self) -> None:
        self.server._connections.discard(self.connection)
        super().finish()

    def log_request(self, code="-", size="-") -> None:
        self.server.requests.append(self.path)

    def log_message(self, format: str, *args) -> None:  # errors and timeouts: not requests, and quiet
        pass

    def do_GET(self) -> None:
        self._record = None
        override = self.server.override
        if override is not None and override(self):
            self.close_connection = True
            return
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._record = None
        self._serve(head=True)

    def flush_headers(self) -> None:
        if self._record is not None:
            self._record.bytes_sent += sum(map(len, getattr(self, "_headers_buffer", [])))
        super().flush_headers()

    def _begin(self, status: int, headers: dict[str, str], length: int) -> Served:
        """Record the answer, then send its status line and headers."""
        record = Served(self.command, self.path, int(status), self.headers.get("Range"),
                        self.headers.get("If-None-Match"), headers.get("Content-Range"))
        self.server.served.append(record)
        self._record = record
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        return record

    def _send_body(self, record: Served, chunks: Iterable[bytes], *, stop_after: int | None = None) -> None:
        """Write the body, counting each chunk before it goes out (so the record is final by the time the client
        has read it); with stop_after, only that many bytes, then close the connection."""
        record.complete = stop_after is None
        try:
            for chunk in chunks:
                if stop_after is not None:
                    chunk = chunk[:stop_after - record.body_bytes]
                record.body_bytes += len(chunk)
                record.bytes_sent += len(chunk)
                if chunk:
                    self.wfile.write(chunk)
                if stop_after is not None and record.body_bytes >= stop_after:
                    break
        except (BrokenPipeError, ConnectionResetError):
            record.complete = False
        if not record.complete:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _error(self, status: int, headers: dict[str, str] | None = None, *, head: bool) -> None:
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        record = self._begin(status, {"Content-Type": "text/plain", **(headers or {})}, len(body))
        if not head:
            self._send_body(record, [body])

    def _serve(self, *, head: bool) -> None:
        path = self.translate_path(self.path)
        if os.path.isdir(path):  # a listing or a redirect: SimpleHTTPRequestHandler's, unrecorded
            self.close_connection = True
            super().do_HEAD() if head else super().do_GET()
            return
        try:
            file = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, head=head)
            return
        with file:
            self._serve_file(file, os.fstat(file.fileno()), self.guess_type(path), head=head)

    def _serve_file(self, file: BinaryIO, stat: os.stat_result, content_type: str, *, head: bool) -> None:
        server, size = self.server, stat.st_size
        etag = etag_of(stat)
        modified = email.utils.formatdate(int(stat.st_mtime), usegmt=True)
        validators = {"Content-Type": content_type, "ETag": etag, "Last-Modified": modified}
        if _not_modified(self.headers, etag, int(stat.st_mtime)):
            self._begin(HTTPStatus.NOT_MODIFIED, validators, 0)
            return
        behaviour = server.behaviour
        header = self.headers.get("Range") if self.command == "GET" else None
        if header is not None and behaviour == "refuses":
            extra = {"Content-Range": f"bytes */{size}"} if server.refuse_status == 416 else {}
            self._error(server.refuse_status, extra, head=head)
            return
        ranges = None
        if header is not None and behaviour != "ignores" and _if_range_holds(self.headers, etag, modified):
            ranges = parse_range(header, size)
        if ranges is None:
            accepts = {"Accept-Ranges": "bytes"} if behaviour in ("honours", "drops", "corrupts") else {}
            record = self._begin(HTTPStatus.OK, {**validators, **accepts}, size)
            if not head:
                self._send_body(record, iter(lambda: file.read(CHUNK), b""))
            return
        if not ranges:
            self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"}, head=head)
            return
        if len(ranges) > 1:
            self._error(HTTPStatus.NOT_IMPLEMENTED, head=head)
            return
        start, end = ranges[0]
        length = end - start + 1
        record = self._begin(HTTPStatus.PARTIAL_CONTENT, {**validators, "Content-Range": f"bytes {start}-{end}/{size}"},
                             length)
        file.seek(start)
        body = file.read(length)
        if behaviour == "corrupts":
            at = min(length // 2 if server.flip_at is None else server.flip_at, length - 1)
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
        stop = None
        if behaviour == "drops":
            stop = length // 2 if server.drop_after is None else min(server.drop_after, length - 1)
        self._send_body(record, [body], stop_after=stop)


def _etags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _not_modified(headers, etag: str, mtime: int) -> bool:
    """nginx's rule: If-None-Match (weak comparison) if present, else an If-Modified-Since equal to the mtime."""
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _etags(if_none_match))
    since = headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        return int(email.utils.parsedate_to_datetime(since).timestamp()) == mtime
    except (TypeError, ValueError):
        return False


def _if_range_holds(headers, etag: str, modified: str) -> bool:
    """No If-Range, or one naming this very version (strong ETag, or the exact Last-Modified date)."""
    value = headers.get("If-Range")
    return value is None or value.strip() in (etag, modified)


class RangeServer(StaticServer):
    """Serve `root` at http://127.0.0.1:<port>/, answering Range requests the way `behaviour` says."""

    def __init__(self, root: Path, behaviour: Behaviour = "honours", *, refuse_status: int = 416,
                 drop_after: int | None = None, flip_at: int | None = None) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour {behaviour!r} is not one of {BEHAVIOURS}")
        if refuse_status not in (416, 501):
            raise ValueError("refuse_status is 416 or 501")
        super().__init__(root)
        self.RequestHandlerClass = lambda *args: _RangeHandler(*args, directory=str(root))
        self.behaviour: Behaviour = behaviour
        self.refuse_status = refuse_status
        self.drop_after = drop_after  # bytes of a range body "drops" sends; default half
        self.flip_at = flip_at  # offset in a range body of the byte "corrupts" inverts; default the middle
        self.served: list[Served] = []
        self._connections: set[socket.socket] = set()
        # serve_forever's default poll interval makes every shutdown (the end of each test) take 0.5 s
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up on a keep-alive connection (a fallback does) is no error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)

    def body_bytes(self, path: str | None = None) -> int:
        """Bytes of body sent in all answers so far, or in those to `path` (as requested)."""
        return sum(s.body_bytes for s in self.served if path is None or s.path == path)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for connection in list(self._connections):  # keep-alive connections would outlive the server
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
