"""A real nginx (Debian's /usr/sbin/nginx, package nginx-light) serving a directory on 127.0.0.1.

A server we did not write, for the updater's byte-range (delta) downloads: nginx answers one range with
206, several with a multipart/byteranges 206, an unsatisfiable or malformed one with 416, and a matching
If-None-Match with 304; its ETag is `"<mtime hex>-<size hex>"`.

    from tests.support.nginx import Nginx, needs_nginx

    @needs_nginx
    def test_delta(site):
        with Nginx(site) as server:
            ...  # point the updater at server.url
            assert [(r.status, r.range) for r in server.requests(at_least=2)] == [(200, None), (206, "bytes=0-99")]

nginx runs as one process (`daemon off; master_process off;`) with its config, pid file, logs and temp
paths in a temp dir of its own; it is stopped (SIGTERM, then SIGKILL) when the `with` block ends however
it ends, and at interpreter exit should a test leak it. Start-up takes about 5 ms, stopping about 2 ms.

Where nginx is missing, `needs_nginx` skips the test, unless PILOT_REQUIRE_NGINX=1 (build/dev.py sets it
where it installs test tools, as in CI), in which case the test fails on Nginx's error instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.ranges import Served

NGINX = Path("/usr/sbin/nginx")  # Debian's; /usr/sbin is often not on a test runner's PATH
REQUIRE_ENV = "PILOT_REQUIRE_NGINX"
MIME_TYPES = Path("/etc/nginx/mime.types")

# One JSON object a request; escape=json makes an absent header "".
_LOG_FORMAT = (
    '{"method":"$request_method","path":"$request_uri","status":$status,"bytes_sent":$bytes_sent,'
    '"body_bytes":$body_bytes_sent,"range":"$http_range","if_none_match":"$http_if_none_match",'
    '"content_range":"$sent_http_content_range","completion":"$request_completion"}'
)


def nginx_available() -> bool:
    return os.access(NGINX, os.X_OK)


def nginx_required() -> bool:
    """Set where nginx is supposed to be installed (CI): a missing nginx fails the tests instead of skipping."""
    return os.environ.get(REQUIRE_ENV) == "1"


needs_nginx = pytest.mark.skipif(
    not nginx_available() and not nginx_required(),
    reason=f"nginx is not installed ({NGINX}): apt-get install nginx-light, or run `python3 build/dev.py test` "
           "as root on Debian, which installs it")


class NginxError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _quote(path: Path) -> str:
    text = str(path)
    if "$" in text:  # nginx would read a variable there, and has no escape for it
        raise NginxError(f"nginx cannot serve a path with '$' in it: {text}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Nginx:
    """nginx serving `root` as static files at `.url` (http://127.0.0.1:PORT) while the `with` block runs.

    `server_config` is added to the server block as is, e.g. "location / { max_ranges 0; }" or "etag off;"
    (max_ranges itself is set already at the server level)."""

    START_TIMEOUT = 10.0
    PORT_ATTEMPTS = 5  # the port is chosen free, then bound by nginx: someone may take it in between

    def __init__(self, root: Path, *, server_config: str = "", binary: Path = NGINX) -> None:
        self.root = Path(root).resolve()
        self.server_config = server_config
        self.binary = binary
        self.port = 0
        self.dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._final_log: list[Served] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            raise NginxError("nginx is already running")
        if not os.access(self.binary, os.X_OK):
            why = f" ({REQUIRE_ENV}=1: this machine is meant to have it)" if nginx_required() else ""
            raise NginxError(f"nginx is not installed ({self.binary}): apt-get install nginx-light{why}")
        self.dir = Path(tempfile.mkdtemp(prefix="pilot-nginx-"))
        (self.dir / "temp").mkdir()  # nginx makes the temp paths themselves, not their parent
        self._final_log = None
        atexit.register(self._kill)
        try:
            for _ in range(self.PORT_ATTEMPTS):
                if self._try_start(_free_port()):
                    return
            raise NginxError(f"nginx found no free port in {self.PORT_ATTEMPTS} attempts:\n{self.error_log()}")
        except BaseException:
            self.stop()
            raise

    def _try_start(self, port: int) -> bool:
        """Start nginx on `port`: True once it runs, False if the port was taken; raise on any other failure."""
        assert self.dir is not None
        self.port = port
        config, pid_file, error_log = self.dir / "nginx.conf", self.dir / "nginx.pid", self.dir / "error.log"
        config.write_text(self._config())
        pid_file.unlink(missing_ok=True)
        error_log.write_bytes(b"")
        (self.dir / "access.log").write_bytes(b"")
        began = time.monotonic()
        with (self.dir / "stderr.log").open("ab") as stderr:
            self._process = subprocess.Popen(
                [str(self.binary), "-p", f"{self.dir}/", "-c", str(config), "-e", str(error_log)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        deadline = began + self.START_TIMEOUT
        while time.monotonic() < deadline:
            # nginx writes its pid file after it has bound the port, just before it serves.
            with contextlib.suppress(OSError, ValueError, IndexError):  # not written yet, or half
                if int(pid_file.read_text().split()[0]) == self._process.pid:
                    self.startup_seconds = time.monotonic() - began
                    return True
            if self._process.poll() is not None:
                self._process = None
                if "Address already in use" in self.error_log():
                    return False
                raise NginxError(f"nginx did not start:\n{self.error_log()}")
            time.sleep(0.002)
        raise NginxError(f"nginx did not start within {self.START_TIMEOUT} s:\n{self.error_log()}")

    def _config(self) -> str:
        assert self.dir is not None
        d = self.dir
        temp = "\n".join(f"    {kind}_temp_path {_quote(d / 'temp' / kind)};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        types = f"include {_quote(MIME_TYPES)};" if MIME_TYPES.exists() else ""
        return f"""\
# Written by tests/support/nginx.py for one test.
daemon off;
master_process off;
pid {_quote(d / "nginx.pid")};
error_log {_quote(d / "error.log")} notice;
events {{
    worker_connections 256;
}}
http {{
    {types}
    default_type application/octet-stream;
    log_format pilot_test escape=json '{_LOG_FORMAT}';
    access_log {_quote(d / "access.log")} pilot_test;
{temp}
    server {{
        listen 127.0.0.1:{self.port};
        server_name 127.0.0.1;
        root {_quote(self.root)};
        etag on;  # the defaults, stated: ETag, If-None-Match -> 304, Range (any number of ranges)
        if_modified_since exact;
        max_ranges 2147483647;
        {self.server_config}
    }}
}}
"""

    def stop(self) -> None:
        """Stop nginx and remove its temp dir (the access log is kept in memory for requests())."""
        self._kill()
        atexit.unregister(self._kill)
        if self.dir is not None:
            if self._final_log is None:
                self._final_log = self._read_log()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # nginx: fast shutdown
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    # -- what it did ---------------------------------------------------------------------------------

    def error_log(self) -> str:
        if self.dir is None:
            return ""
        parts = [(self.dir / name) for name in ("error.log", "stderr.log")]
        return "".join(part.read_text(errors="replace") for part in parts if part.exists()).strip()

    def requests(self, at_least: int = 0, timeout: float = 5.0) -> list[Served]:
        """The requests answered so far, from the access log, oldest first.

        nginx logs a request just after it has sent the answer, so a client that has read an answer may look
        before the line is written: `at_least` waits (up to `timeout` s) until that many are logged."""
        deadline = time.monotonic() + timeout
        while True:
            log = self._read_log()
            if len(log) >= at_least or time.monotonic() >= deadline or self._process is None:
                return log
            time.sleep(0.005)

    def _read_log(self) -> list[Served]:
        if self.dir is None:
            return list(self._final_log or [])
        try:
            text = (self.dir / "access.log").read_text()
        except FileNotFoundError:
            return []
        return [_served(json.loads(line)) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _served(entry: dict) -> Served:
    return Served(method=entry["method"], path=entry["path"], status=entry["status"],
                  range=entry["range"] or None, if_none_match=entry["if_none_match"] or None,
                  content_range=entry["content_range"] or None, body_bytes=entry["body_bytes"],
                  bytes_sent=entry["bytes_sent"], complete=entry["completion"] == "OK")
