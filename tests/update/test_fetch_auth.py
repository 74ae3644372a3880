"""A private release host: HttpFetcher sends its token to that host's scheme://host:port only.

Real servers on 127.0.0.1: a release host that answers 401 without the token, and a second server on
another port (or under another name) that records every header it is sent. urllib3's own
`remove_headers_on_redirect` would strip only Authorization, Cookie and Proxy-Authorization, and only
when scheme, host or port change; Pilot follows redirects itself and adds the header per hop, so these
tests hold for a custom header too.
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler

import pytest

from pilot.errors import DownloadError
from pilot.net import TOKEN_HINT, ReleaseAuth
from pilot.update.fetch import HttpFetcher
from tests.support.auth_host import (  # noqa: F401 (the fixtures)
    BODY,
    TOKEN,
    Host,
    manifest_url,
    other_host_fixture,
    private_host_fixture,
)
from tests.support.server import reply
from tests.update.test_fetch import failure


def fetcher(auth: ReleaseAuth | None, **kw) -> HttpFetcher:
    return HttpFetcher(auth=auth, retries=0, sleep=lambda s: None, **kw)


def test_the_token_opens_the_private_release_host(private_host) -> None:
    url = manifest_url(private_host)
    response = fetcher(ReleaseAuth(url, TOKEN)).fetch(url, max_bytes=1000)
    assert (response.status, response.data) == (200, BODY)
    assert private_host.values("Authorization") == [f"Bearer {TOKEN}"]


def test_without_the_token_a_401_says_how_to_give_one(private_host) -> None:
    with pytest.raises(DownloadError) as raised:
        fetcher(None).fetch(manifest_url(private_host), max_bytes=1000)
    line = failure(raised)
    assert "HTTP 401" in line and TOKEN_HINT in line


def test_a_wrong_token_is_refused_without_being_shown(private_host) -> None:
    url = manifest_url(private_host)
    with pytest.raises(DownloadError) as raised:
        fetcher(ReleaseAuth(url, "wrong-token")).fetch(url, max_bytes=1000)
    line = failure(raised)
    assert "HTTP 401" in line and "refused the token sent in Authorization" in line
    assert "wrong-token" not in line


def test_a_custom_header_carries_the_bare_token(site) -> None:
    with Host(site, header="X-Pilot-Token", expected=TOKEN) as host:
        url = manifest_url(host)
        assert fetcher(ReleaseAuth(url, TOKEN, "X-Pilot-Token")).fetch(url, max_bytes=1000).data == BODY
        assert host.values("X-Pilot-Token") == [TOKEN] and host.values("Authorization") == [None]


def test_the_conditional_request_and_the_stream_carry_the_token(private_host) -> None:
    url = manifest_url(private_host)
    client = fetcher(ReleaseAuth(url, TOKEN))
    assert client.fetch(url, max_bytes=1000, etag='"v0"').status == 200
    assert b"".join(client.stream(url, size=len(BODY))) == BODY
    assert private_host.values("Authorization") == [f"Bearer {TOKEN}"] * 2


@pytest.mark.parametrize("header", ["Authorization", "X-Pilot-Token"])
def test_a_redirect_to_another_port_of_the_same_host_goes_without_the_token(site, other_host, header) -> None:
    expected = f"Bearer {TOKEN}" if header == "Authorization" else TOKEN
    with Host(site, header=header, expected=expected) as release:
        url = manifest_url(release)
        release.redirects["/stable/manifest.json"] = manifest_url(other_host)  # same 127.0.0.1: the host rule allows it
        response = fetcher(ReleaseAuth(url, TOKEN, header)).fetch(url, max_bytes=1000)
        assert response.url == manifest_url(other_host) and response.data == BODY
        assert release.values(header) == [expected]
        assert other_host.values(header) == [None]
        assert all(TOKEN not in value for seen in other_host.seen for value in seen.values())


def test_a_redirect_to_another_allowed_host_goes_without_the_token(private_host, other_host) -> None:
    url = manifest_url(private_host)
    private_host.redirects["/stable/manifest.json"] = manifest_url(other_host, "localhost")
    client = fetcher(ReleaseAuth(url, TOKEN), allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    assert client.fetch(url, max_bytes=1000).data == BODY
    assert other_host.values("Authorization") == [None]


def test_the_same_server_under_another_name_is_another_host(private_host) -> None:
    """localhost and 127.0.0.1 reach one socket, but only the name in the manifest URL gets the token."""
    url = manifest_url(private_host)
    private_host.redirects["/stable/manifest.json"] = manifest_url(private_host, "localhost")
    client = fetcher(ReleaseAuth(url, TOKEN), allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    with pytest.raises(DownloadError, match="HTTP 401"):
        client.fetch(url, max_bytes=1000)
    assert private_host.values("Authorization") == [f"Bearer {TOKEN}", None]


def test_a_redirect_within_the_release_host_keeps_the_token(private_host) -> None:
    url = manifest_url(private_host)
    private_host.redirects["/stable/manifest.json"] = "/stable/v2/manifest.json"
    assert fetcher(ReleaseAuth(url, TOKEN)).fetch(url, max_bytes=1000).data == BODY
    assert private_host.values("Authorization") == [f"Bearer {TOKEN}"] * 2


def test_a_token_for_another_release_host_is_not_sent(private_host, other_host) -> None:
    client = fetcher(ReleaseAuth(manifest_url(other_host), TOKEN))
    with pytest.raises(DownloadError, match="HTTP 401"):
        client.fetch(manifest_url(private_host), max_bytes=1000)
    assert private_host.values("Authorization") == [None]


def test_the_token_is_in_no_error_line_and_no_log_record(private_host, caplog) -> None:
    url = manifest_url(private_host)
    private_host.expected = None
    private_host.redirects["/stable/manifest.json"] = "/down"

    def down(h: BaseHTTPRequestHandler) -> bool:
        if h.path != "/down":
            return private_host._answer(h)
        private_host.seen.append(dict(h.headers.items()))
        reply(h, 503)
        return True

    private_host.override = down
    client = HttpFetcher(auth=ReleaseAuth(url, TOKEN), retries=2, backoff=0, sleep=lambda s: None)
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as raised:
        client.fetch(url, max_bytes=1000)
    assert "HTTP 503" in failure(raised) and TOKEN not in failure(raised)
    assert private_host.values("Authorization") == [f"Bearer {TOKEN}"] * 6  # three tries of two hops
    assert caplog.records and all(TOKEN not in record.getMessage() for record in caplog.records)
    assert TOKEN not in repr(client.auth) and TOKEN not in repr(vars(client))
