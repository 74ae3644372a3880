"""A private release host, through the real CLI: the token opens it, and nothing else learns the token."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.conftest import sha256
from tests.support.server import reply

pytestmark = pytest.mark.slow
TOKEN = "s3cr3t-release-token"


def require_token(server) -> None:
    """The release host answers 401 to every request without the token, and records who sent what."""
    server.authorizations = []

    def gate(handler) -> bool:
        sent = handler.headers.get("Authorization")
        server.authorizations.append(sent)
        if sent == f"Bearer {TOKEN}":
            return False  # served as usual
        reply(handler, 401, headers={"WWW-Authenticate": "Bearer"})
        return True

    server.override = gate


def test_self_update_from_a_private_host_sends_the_token_and_never_shows_it(v1, v2, release_site, install_factory,
                                                                           tmp_path):
    release_site.publish(v2)
    require_token(release_site.server)
    pilot = install_factory(v1)

    without = pilot.run("self-update", "--check")
    assert without.returncode == 3 and without.stderr.count("\n") == 1
    assert "401" in without.stderr and "PILOT_UPDATE_TOKEN" in without.stderr  # it says how to give one

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    too_open = pilot.run("self-update", "--check", extra_env={"PILOT_UPDATE_TOKEN_FILE": str(token_file)})
    assert too_open.returncode == 4 and "chmod 600" in too_open.stderr and TOKEN not in too_open.stderr
    token_file.chmod(0o600)

    env = {"PILOT_UPDATE_TOKEN_FILE": str(token_file)}
    result = pilot.run("self-update", "--yes", extra_env=env)
    assert result.returncode == 0, result.stderr
    assert sha256(pilot.path) == sha256(v2) and pilot.version() == "pilot 2.0.0"
    assert release_site.server.authorizations.count(f"Bearer {TOKEN}") >= 3  # manifest, signatures, archive
    shown = pilot.run("config", "show", extra_env=env)
    assert shown.returncode == 0 and str(token_file) in shown.stdout  # where it comes from, not what it is
    given = pilot.run("config", "show", extra_env={"PILOT_UPDATE_TOKEN": TOKEN})
    assert given.returncode == 0 and "(set, hidden)" in given.stdout and TOKEN not in given.stdout
    for output in (result.stdout, result.stderr, shown.stdout, shown.stderr):
        assert TOKEN not in output

    # The daemon checks the private host with the token too, and its log never shows it.
    log = pilot.home / "logs" / "pilot.log"
    sent = release_site.server.authorizations.count(f"Bearer {TOKEN}")
    daemon = pilot.popen("start", extra_env={**env, "PILOT_FIRST_CHECK_DELAY": "0.2"})
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "update check: up to date (2.0.0)" in log.read_text()):
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon's check never ended"
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert release_site.server.authorizations.count(f"Bearer {TOKEN}") > sent
    assert TOKEN not in log.read_text() and TOKEN not in err
