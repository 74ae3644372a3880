"""A real HTTP server on 127.0.0.1 serving a directory, with a hook to alter responses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def reply(h: BaseHTTPRequestHandler, status: int = 200, body: bytes = b"", *, length: int | None = -1,
          headers: dict[str, str] | None = None) -> None:
    """Answer one request; length=-1 sends the true Content-Length, None sends none (body ends at close)."""
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    if length is not None:
        h.send_header("Content-Length", str(len(body) if length == -1 else length))
    h.end_headers()
    h.wfile.write(body)


class _Handler(SimpleHTTPRequestHandler):
    server: StaticServer

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        self.server.requests.append(self.path)

    def do_GET(self) -> None:
        override = self.server.override
        if override is not None and override(self):
            return
        super().do_GET()


class StaticServer(ThreadingHTTPServer):
    """Serve `root` at http://127.0.0.1:<port>/. `override(handler) -> bool` may answer a request itself."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.root = root
        self.requests: list[str] = []
        self.override: Callable[[SimpleHTTPRequestHandler], bool] | None = None
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> StaticServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def throttle(server: StaticServer, bytes_per_second: int, suffix: str = ".pyz") -> None:
    """Serve the files ending in suffix at a real network's pace (in steps of a twentieth of a second);
    everything else, the manifest first, at full speed."""
    import time

    def override(handler: SimpleHTTPRequestHandler) -> bool:
        if not handler.path.endswith(suffix):
            return False
        data = (server.root / handler.path.lstrip("/")).read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        step = max(1, bytes_per_second // 20)
        for start in range(0, len(data), step):
            handler.wfile.write(data[start:start + step])
            time.sleep(0.05)
        return True

    server.override = override


def serve_chosen(server: StaticServer, choose: Callable[[str], bytes | None]) -> None:
    """Answer every request from `choose(path)` instead of the directory: the bytes of the version of that file
    to serve now, or None for a 404. What a cache or mirror holding any mix of a site's files does: each answer
    has a strong ETag (the bytes' sha256), and a matching If-None-Match is answered 304."""
    import hashlib

    def override(handler: SimpleHTTPRequestHandler) -> bool:
        data = choose(handler.path)
        if data is None:
            handler.send_error(404)
            return True
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        if handler.headers.get("If-None-Match") == etag:
            handler.send_response(304)
            handler.send_header("ETag", etag)
            handler.end_headers()
            return True
        handler.send_response(200)
        handler.send_header("ETag", etag)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return True

    server.override = override
