"""A private release host and a second server, for the tests of the update token (PILOT_UPDATE_TOKEN).

`Host` serves BODY for any path on 127.0.0.1 and records every request's headers; given `expected`, it
answers 401 to a request whose `header` is not that value. The fixtures: `private_host` wants
"Bearer TOKEN" in Authorization; `other_host` answers everything (another port: a redirect's target,
an attacker collecting headers). A module uses them by importing private_host_fixture and
other_host_fixture (`# noqa: F401`): the functions' own names differ from the fixtures' so that a test's
parameter does not shadow the import.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tests.support.server import StaticServer, reply

TOKEN = "s3cret-Token_0123456789"
BODY = b'{"manifest": true}'


class Host(StaticServer):
    """Serves BODY for any path, after `answer(handler)` had its say; records each request's headers."""

    def __init__(self, site, *, header: str = "Authorization", expected: str | None = None) -> None:
        super().__init__(site)
        self.seen: list[dict[str, str]] = []
        self.header, self.expected = header, expected
        self.redirects: dict[str, str] = {}
        self.override = self._answer

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)  # shut down in 50 ms, not 500: each test starts one or two

    def _answer(self, h: BaseHTTPRequestHandler) -> bool:
        self.seen.append(dict(h.headers.items()))
        if self.expected is not None and h.headers.get(self.header) != self.expected:
            reply(h, 401, b"token required", headers={"WWW-Authenticate": "Bearer"})
        elif h.path in self.redirects:
            reply(h, 302, headers={"Location": self.redirects[h.path]})
        else:
            reply(h, 200, BODY, headers={"ETag": '"v1"'})
        return True

    def values(self, header: str) -> list[str | None]:
        return [{k.lower(): v for k, v in seen.items()}.get(header.lower()) for seen in self.seen]


def manifest_url(host: Host, name: str = "127.0.0.1") -> str:
    return f"http://{name}:{host.server_address[1]}/stable/manifest.json"


@pytest.fixture(name="private_host")
def private_host_fixture(site) -> Iterator[Host]:
    """The private release host: 401 unless Authorization is "Bearer TOKEN"."""
    with Host(site, expected=f"Bearer {TOKEN}") as running:
        yield running


@pytest.fixture(name="other_host")
def other_host_fixture(site) -> Iterator[Host]:
    """Another server on 127.0.0.1: answers everything, keeps every header."""
    with Host(site) as running:
        yield running
