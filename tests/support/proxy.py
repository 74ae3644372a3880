"""A CONNECT proxy on 127.0.0.1 that tunnels every target to 127.0.0.1 (so names need not resolve).

With `credentials` ("user:password") it answers 407 to a CONNECT without that Basic
Proxy-Authorization, as a real authenticating proxy does.
"""

from __future__ import annotations

import base64
import socket
import socketserver
import threading


class FakeProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, credentials: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.credentials = credentials
        self.connections = 0
        self.seen: list[str] = []  # the request line of each request
        self.heads: list[str] = []  # request line and headers of each request
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FakeProxy:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: FakeProxy

    def handle(self) -> None:
        self.server.connections += 1
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        text = head.decode()
        line = text.split("\r\n", 1)[0]
        self.server.seen.append(line)
        self.server.heads.append(text)
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            self.request.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        if self.server.credentials is not None:
            expected = "Proxy-Authorization: Basic " + base64.b64encode(self.server.credentials.encode()).decode()
            if expected not in text.split("\r\n"):
                self.request.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
        with socket.create_connection(("127.0.0.1", int(target.rpartition(":")[2]))) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            back.start()
            _pipe(self.request, upstream)
            back.join(5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
