"""Rollout control end to end: release.py halts, yanks and sets a minimum on a real release tree served on
127.0.0.1, and real installed archives (the CLI and the headless daemon) act on what the signed manifest says."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pilot.update.manifest import format_timestamp
from tests.conftest import run_release_tool
from tests.e2e.conftest import Install, ReleaseSite

pytestmark = pytest.mark.slow

DAEMON = "upgrade:\n  check_interval: 1s\n  auto_upgrade_on_idle: {auto}\ndaemon:\n  idle_upgrade_after: 1s\n"


def release_tool(site: ReleaseSite, command: str, *args: str) -> str:
    result = run_release_tool(command, "--root", str(site.root), "--channel", "stable", "--key", str(site.key),
                              *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def another_install(place: Path, archive: Path, site: ReleaseSite) -> Install:
    """A second machine: its own bin directory and PILOT_HOME."""
    (place / "bin").mkdir(parents=True)
    path = place / "bin" / "pilot"
    path.write_bytes(archive.read_bytes())
    path.chmod(0o755)
    return Install(place / "bin", place / "home", site.manifest_url,
                   env={"PILOT_MANIFEST_URL": site.manifest_url, "PILOT_HOME": str(place / "home")})


def check(pilot: Install) -> dict:
    result = pilot.run("self-update", "--check", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def recorded(pilot: Install) -> dict | None:
    """What the last check left in update/state.json for every command to say about the running version."""
    return json.loads((pilot.home / "update" / "state.json").read_text()).get("standing")


def daemon_version(pilot: Install) -> str | None:
    result = pilot.run("status", "--json")
    return json.loads(result.stdout)["daemon_version"] if result.returncode == 0 else None


def run_daemon_until(pilot: Install, version: str, *, auto: bool) -> None:
    """`pilot start` (headless) until its own process runs `version`, then SIGTERM, as a service manager stops it."""
    pilot.home.mkdir(parents=True, exist_ok=True)
    (pilot.home / "config.yaml").write_text(DAEMON.format(auto="true" if auto else "false"))
    daemon = pilot.popen("start", extra_env={"PILOT_FIRST_CHECK_DELAY": "0.2"})
    try:
        deadline = time.monotonic() + 90
        settled = f"update check: up to date ({version})"  # the new version's loop, its stop handlers, its checker
        while daemon_version(pilot) != version or settled not in log_of(pilot):
            assert daemon.poll() is None and time.monotonic() < deadline, f"the daemon never moved to {version}"
            time.sleep(0.3)
        assert json.loads(pilot.run("status", "--json").stdout)["daemon_pid"] == daemon.pid  # the same process
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0 and "Traceback" not in err, err
    assert f"upgrading to {version}" in log_of(pilot)


def log_of(pilot: Install) -> str:
    path = pilot.home / "logs" / "pilot.log"
    return path.read_text() if path.exists() else ""


def test_a_halted_release_is_not_installed_by_a_fresh_client_and_is_reported_to_one_that_runs_it(
        v1, v2, release_site, install_factory, tmp_path):
    release_site.publish(v1)
    release_site.publish(v2, "--rollout", "40")
    on_v2 = install_factory(v2)
    assert check(on_v2)["halted"] is False

    said = release_tool(release_site, "halt", "2.0.0")
    assert "halted 2.0.0 on stable" in said and "it was at 40%" in said
    assert json.loads((release_site.root / "stable" / "halted.json").read_text()) == {"2.0.0": 40}

    fresh = another_install(tmp_path / "fresh", v1, release_site)
    offered = check(fresh)
    assert (offered["update_available"], offered["latest"], offered["standing"]) == (False, "1.0.0", None)
    result = fresh.run("self-update", "--yes")
    assert result.returncode == 0 and "is up to date" in result.stdout, result.stderr
    assert fresh.version() == "pilot 1.0.0"
    assert not any("/releases/2.0.0/" in path for path in release_site.server.requests)

    told = check(on_v2)  # the install that runs it is told, and offered the newest good release
    assert (told["halted"], told["update_available"], told["version"]) == (True, True, "1.0.0")
    line = "pilot 2.0.0 was halted by its publisher (no new installs): go back to 1.0.0 with `pilot self-update`"
    assert told["standing"] == line
    assert recorded(on_v2) == {"version": "2.0.0", "line": line, "required": False}  # for every command to say
    listing = on_v2.run("task", "list")
    assert listing.returncode == 0 and listing.stderr == f"pilot: {line}\n"  # every command says it, once
    assert f"update: {line}" in on_v2.run("status").stdout  # and the status report has it

    moved = on_v2.run("self-update", "--yes")  # the normal verified path, to an older release
    assert moved.returncode == 0, moved.stderr
    assert on_v2.version() == "pilot 1.0.0"
    assert (on_v2.status()["state"], on_v2.status()["to_version"]) == ("committed", "1.0.0")
    check(on_v2)
    assert recorded(on_v2) is None  # 1.0.0 is in good standing

    release_tool(release_site, "resume", "2.0.0")  # back at 40%: the buckets below it are offered it again
    assert json.loads(release_site.manifest.read_text())["releases"][0]["rollout_percent"] == 40
    assert not (release_site.root / "stable" / "halted.json").exists()


def test_a_client_below_the_minimum_says_so_and_its_daemon_updates_it_without_auto_upgrade(
        v1, v2, release_site, install_factory):
    release_site.publish(v1)
    release_site.publish(v2)
    release_tool(release_site, "min-supported", "2.0.0")
    pilot = install_factory(v1)

    told = check(pilot)
    assert (told["required"], told["min_supported_version"], told["version"]) == (True, "2.0.0", "2.0.0")
    assert recorded(pilot) == {"version": "1.0.0", "required": True, "line": (
        "pilot 1.0.0 is below 2.0.0, the oldest version the stable channel supports: update to 2.0.0 "
        "with `pilot self-update`")}

    run_daemon_until(pilot, "2.0.0", auto=False)
    assert pilot.version() == "pilot 2.0.0"
    assert check(pilot)["required"] is False
    assert "below the channel's minimum supported version" in log_of(pilot)


def test_a_daemon_on_a_yanked_release_moves_to_the_newest_good_one_when_configured(
        v1, v2, release_site, install_factory):
    release_site.publish(v1)
    release_site.publish(v2)
    release_tool(release_site, "yank", "--reason", "corrupts the task log", "2.0.0")
    pilot = install_factory(v2)
    told = check(pilot)
    assert (told["yanked"], told["yanked_reason"], told["version"]) == (True, "corrupts the task log", "1.0.0")
    note = pilot.run("self-update", "--check")
    assert "pilot 2.0.0 was yanked by its publisher: 'corrupts the task log': go back to 1.0.0" in note.stderr

    run_daemon_until(pilot, "1.0.0", auto=True)
    assert pilot.version() == "pilot 1.0.0" and pilot.status()["state"] == "committed"


def test_an_expired_manifest_names_the_date_and_the_publisher(v1, v2, release_site, install_factory):
    issued = int(time.time()) - 31 * 86400
    release_site.publish(v2, env={**os.environ, "PILOT_RELEASE_NOW": str(issued)})
    pilot = install_factory(v1)
    result = pilot.run("self-update", "--check")
    expiry = format_timestamp(datetime.fromtimestamp(issued + 30 * 86400, UTC))
    assert result.returncode == 3
    (line,) = result.stderr.splitlines()
    assert f"the stable manifest expired at {expiry}: its publisher has not re-signed it in time" in line
    assert "nothing is wrong with this install" in line and "Traceback" not in result.stderr


def test_prune_keeps_what_clients_need_and_they_still_update(v1, v2, archives, release_site, install_factory):
    v15 = archives.build("1.5.0")
    for archive in (v1, v15, v2):
        release_site.publish(archive)
    release_tool(release_site, "prune", "--keep", "1", "--delete-files")  # 1.5.0: the rollback target, kept
    versions = [r["version"] for r in json.loads(release_site.manifest.read_text())["releases"]]
    assert versions == ["2.0.0", "1.5.0"]
    assert not (release_site.root / "releases" / "1.0.0").exists()
    pilot = install_factory(v1)
    assert pilot.run("self-update", "--yes").returncode == 0
    assert pilot.version() == "pilot 2.0.0"
