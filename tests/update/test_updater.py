"""The update engine (pilot.update.updater) driven through its front door with an in-memory repository.

The repository is python-tuf's RepositorySimulator in spirit: manifests are signed in the test
and served through the Fetcher interface, and every request is recorded. Archives are small
zip files with real build metadata; the self-test and the exec are stand-ins, so each guard and
each step can be examined without building a real archive (tests/e2e does that).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from packaging.version import Version

from pilot import launcher
from pilot.buildinfo import BuildInfo, TrustedKey
from pilot.config import load_config
from pilot.errors import ConfigError, DownloadError, InstallError, StateError, UpdateCancelled, UpdateError
from pilot.launcher import Interrupted, read_json, state_path, trial_path, write_json
from pilot.update import install, state
from pilot.update.fetch import Response
from pilot.update.manifest import format_timestamp
from pilot.update.signing import encode_signatures, public_key_of, sign
from pilot.update.updater import Settings, Updater, open_updater, roll_back
from tests.support.keys import make_key

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("alarm_guard")  # the engine arms SIGALRM before its exec
BASE = "https://releases.example.org/pilot/"
MANIFEST_URL = BASE + "stable/manifest.json"
PY, PLATFORM = "cp311", "linux_x86_64"


def fake_archive(version: str, *, build_id: str | None = None, protocol: int = 2) -> bytes:
    """A zip with real build metadata: what the engine reads of an archive without running it."""
    metadata = {"product": "pilot", "version": version, "python_tag": PY, "platform_tag": PLATFORM,
                "build_id": build_id or hashlib.sha256(version.encode()).hexdigest(), "boot_protocol": protocol}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pilot-build.json", json.dumps(metadata))
        zf.writestr("__main__.py", f"print('pilot {version}')\n")
    return buffer.getvalue()


class MemoryRepo:
    """A signed release tree in memory, served as a Fetcher."""

    def __init__(self, key) -> None:
        self.key = key
        self.files: dict[str, bytes] = {}
        self.releases: list[dict] = []
        self.serial = 0
        self.requests: list[str] = []
        self.chunk_hook = None  # called with each chunk index while an artifact streams

    def add(self, version: str, **fields) -> bytes:
        data = fake_archive(version, protocol=fields.pop("protocol", 2))
        url = f"{BASE}releases/{version}/pilot-{version}-{PY}-{PLATFORM}.pyz"
        self.files[url] = data
        artifact = {"python_tag": PY, "platform_tag": PLATFORM, "url": url, "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "build_id": json.loads(
                        zipfile.ZipFile(io.BytesIO(data)).read("pilot-build.json"))["build_id"]}
        self.releases.insert(0, {"version": version, "released_at": format_timestamp(datetime.now(UTC)),
                                 "artifacts": [artifact], **fields})
        self.publish()
        return data

    def publish(self) -> None:
        self.serial += 1
        now = datetime.now(UTC)
        document = {"schema_version": 1, "product": "pilot", "channel": "stable", "serial": self.serial,
                    "keyset_version": 1, "issued_at": format_timestamp(now - timedelta(minutes=5)),
                    "expires_at": format_timestamp(now + timedelta(days=30)), "releases": self.releases}
        data = (json.dumps(document, indent=2) + "\n").encode()
        self.files[MANIFEST_URL] = data
        self.files[MANIFEST_URL + ".sig"] = encode_signatures([sign(self.key.private, data)])

    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None) -> Response:
        self.requests.append(url)
        if url not in self.files:
            raise DownloadError(f"HTTP 404 for {url}")
        return Response(200, self.files[url], None, url)

    def stream(self, url: str, *, size: int, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        self.requests.append(url)
        data = self.files[url]
        for index, start in enumerate(range(0, len(data), 64)):
            if self.chunk_hook:
                self.chunk_hook(index)
            yield data[start:start + 64]


class Execed(BaseException):
    """The stand-in exec: like the real one, nothing after it runs (no finally of the engine swallows it)."""


class World:
    """One install (bin/pilot running as `version`), its repository, and the stand-ins' records."""

    def __init__(self, tmp_path: Path, key) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.install = self.bin / "pilot"
        self.backup = self.bin / "pilot.backup"
        self.key = key
        self.repo = MemoryRepo(key)
        self.self_tests: list[tuple[str, str]] = []
        self.dashboard_self_tests: list[bool] = []
        self.execs: list[dict] = []
        self.self_test_error: Exception | None = None

    def installed(self, version: str) -> None:
        self.install.write_bytes(fake_archive(version))
        self.install.chmod(0o755)

    def build(self, version: str) -> BuildInfo:
        key = public_key_of(self.key.private)
        return BuildInfo(version=version, python_tag=PY, platform_tag=PLATFORM,
                         build_id=hashlib.sha256(version.encode()).hexdigest(), archive=self.install,
                         trusted_keys=(TrustedKey(key.keyid, key.raw),), threshold=1, source_commit=None,
                         manifest_url=None)

    def updater(self, version: str, **settings) -> Updater:
        values = {"manifest_url": MANIFEST_URL, "channel": "stable", "boot_timeout": 60.0, "fetch_deadline": 300.0,
                  "first_check_delay": None, **settings}
        return Updater(build=self.build(version), settings=Settings(**values), fetcher=self.repo,
                       self_test=self.self_test, execute=self.execute)

    def self_test(self, candidate: Path, *, version: str, build_id: str, cancelled, dashboard: bool) -> None:
        assert candidate.parent == self.bin and candidate.exists()
        self.self_tests.append((version, build_id))
        self.dashboard_self_tests.append(dashboard)
        if self.self_test_error:
            raise self.self_test_error

    def execute(self, archive: Path, argv: list[str], *, stop_requested, keep_stop_signals_blocked: bool) -> None:
        if stop_requested():
            return
        self.execs.append({"archive": archive, "argv": argv, "blocked": keep_stop_signals_blocked,
                           "trial": read_json(trial_path())})
        raise Execed()

    def version_at(self, path: Path) -> str:
        return launcher.archive_version(str(path))

    def stray(self) -> list[str]:
        return sorted(p.name for p in self.bin.iterdir() if p.name not in ("pilot", "pilot.backup"))


@pytest.fixture
def world(tmp_path, session_dir) -> World:
    world = World(tmp_path, make_key("updater-test", session_dir / "keys"))
    world.installed("1.0.0")
    return world


def update(world: World, version: str = "1.0.0", target: str | None = None, **options):
    return world.updater(version).update(Version(target) if target else None, **options)


# ------------------------------------------------------------------------------ check


def test_check_offers_the_newest_release_and_says_which_newer_ones_it_skips(world):
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        world.repo.add(version)
    state.record({"from_version": "1.2.0", "to_version": "1.3.0", "install_path": "", "backup_path": ""},
                 "rolled_back", "it hung")
    state.record({"from_version": "1.2.0", "to_version": "1.1.0", "install_path": "", "backup_path": ""},
                 "rolled_back_by_user")
    result = world.updater("1.0.0").check()
    assert result.version == Version("1.1.0")
    assert result.skipped == ((Version("1.2.0"), "was rolled back on request"),
                              (Version("1.3.0"), "failed to start here before"))
    assert world.updater("1.0.0").check(Version("1.3.0")).version == Version("1.3.0")  # --to still can


def test_a_check_raises_the_serial_high_water_mark(world):
    world.repo.add("1.1.0")
    world.updater("1.0.0").check()
    assert state.load().highest_serial == world.repo.serial


# ------------------------------------------------------------------------------ update


def test_the_self_test_imports_the_dashboard_only_for_an_install_whose_dashboard_has_run(world):
    from pilot.update import note_dashboard_user

    world.repo.add("2.0.0")
    world.repo.add("3.0.0")
    with pytest.raises(Execed):
        update(world, "1.0.0", "2.0.0")
    note_dashboard_user()
    Path(trial_path()).unlink()  # as if 2.0.0 had started and committed
    world.installed("2.0.0")
    with pytest.raises(Execed):
        update(world, "2.0.0")
    assert world.dashboard_self_tests == [False, True]


def test_an_update_swaps_in_the_new_version_keeps_the_old_as_backup_and_execs_it_as_its_trial(world):
    world.repo.add("2.0.0")
    with pytest.raises(Execed):
        update(world)
    assert world.version_at(world.install) == "2.0.0"
    assert world.version_at(world.backup) == "1.0.0"
    assert world.self_tests == [("2.0.0", world.build("2.0.0").build_id)]
    [call] = world.execs
    assert (call["archive"], call["argv"], call["blocked"]) == (world.install, ["self-update", "--after-restart"], True)
    trial = call["trial"]
    assert (trial["pid"], trial["from_version"], trial["to_version"]) == (os.getpid(), "1.0.0", "2.0.0")
    assert world.stray() == []


def test_a_new_version_of_the_old_boot_protocol_is_exec_d_with_the_stop_signals_free(world):
    """An entry module that does not unblock them would leave the new daemon deaf to SIGTERM."""
    world.repo.add("2.0.0", protocol=1)
    with pytest.raises(Execed):
        update(world)
    assert world.execs[0]["blocked"] is False


def test_installing_the_installed_version_is_a_no_op_that_says_so(world):
    """--to the installed version (--from-file of it: tests/security/test_invariants.py, on real archives)."""
    world.repo.add("1.0.0")
    world.repo.add("2.0.0")
    before = world.install.read_bytes()
    outcome = update(world, target="1.0.0")
    assert outcome.done == "already_installed"
    assert world.install.read_bytes() == before and not world.backup.exists()
    assert not [r for r in world.repo.requests if "/releases/" in r]  # nothing was downloaded


def test_no_restart_leaves_a_pending_trial_for_the_next_start(world):
    world.repo.add("2.0.0")
    outcome = update(world, restart=False)
    assert outcome.done == "installed" and world.execs == []
    trial = read_json(trial_path())
    assert (trial["pid"], trial["booted"], trial["to_version"]) == (None, False, "2.0.0")
    assert state.load().last.state == "installed"
    assert world.version_at(world.install) == "2.0.0" and world.version_at(world.backup) == "1.0.0"


def test_a_stop_that_came_before_the_exec_leaves_the_new_version_to_start_next_time(world):
    world.repo.add("2.0.0")
    swapped = lambda: os.path.exists(trial_path())  # noqa: E731 (the stop arrives once the swap has begun)
    outcome = update(world, cancelled=swapped)
    assert outcome.done == "stopped" and world.execs == []
    trial = read_json(trial_path())
    assert (trial["pid"], trial["booted"]) == (None, False)  # pending: the next start claims it
    assert world.version_at(world.install) == "2.0.0"


def test_a_signal_during_the_swap_waits_until_the_install_is_whole(world, monkeypatch):
    world.repo.add("2.0.0")
    real_swap = install.swap_in

    def swap_with_a_sigterm(candidate, paths):
        launcher.raise_interrupted(signal.SIGTERM, None)  # the handler self-update installs, mid-swap
        real_swap(candidate, paths)

    monkeypatch.setattr(install, "swap_in", swap_with_a_sigterm)
    with pytest.raises(Interrupted) as raised:
        update(world)
    assert raised.value.signum == signal.SIGTERM
    assert world.version_at(world.install) == "2.0.0" and world.version_at(world.backup) == "1.0.0"
    assert read_json(trial_path())["pid"] is None  # handed on to the next start
    assert world.execs == [] and world.stray() == []


def test_a_cancel_during_the_download_removes_it_and_changes_nothing(world):
    world.repo.add("2.0.0")
    before = world.install.read_bytes()
    cancel = threading.Event()
    world.repo.chunk_hook = lambda index: index == 3 and cancel.set()
    with pytest.raises(UpdateCancelled):
        update(world, cancelled=cancel.is_set)
    assert world.install.read_bytes() == before and not world.backup.exists()
    assert world.stray() == [] and not os.path.exists(trial_path())


def test_a_failed_self_test_removes_the_download_and_changes_nothing(world):
    world.repo.add("2.0.0")
    world.self_test_error = InstallError("the new version 2.0.0 failed its self-test: ImportError")
    before = world.install.read_bytes()
    with pytest.raises(InstallError, match="failed its self-test"):
        update(world)
    assert world.install.read_bytes() == before and world.stray() == [] and not os.path.exists(trial_path())


def test_a_tampered_artifact_is_refused_before_the_self_test(world):
    world.repo.add("2.0.0")
    url = next(u for u in world.repo.files if u.endswith(".pyz"))
    world.repo.files[url] = world.repo.files[url][:-1] + b"!"
    with pytest.raises(UpdateError, match="sha256"):
        update(world)
    assert world.self_tests == [] and world.stray() == []


# ------------------------------------------------------------------------------ guards


def test_no_update_while_a_new_version_s_trial_is_open(world):
    world.repo.add("2.0.0")
    write_json(trial_path(), {"to_version": "1.5.0", "started_at": 1.0, "pid": None})
    with pytest.raises(UpdateError, match="still starting"):
        update(world)
    assert world.repo.requests == []


def test_no_update_over_an_archive_another_process_replaced(world):
    """A daemon that still runs 1.0.0 after the user installed 2.0.0 by hand must not reinstall 2.0.0 over it."""
    world.repo.add("2.0.0")
    world.installed("2.0.0")
    with pytest.raises(UpdateError, match="installed by another process"):
        update(world, version="1.0.0")
    assert world.repo.requests == [] and not world.backup.exists()


def test_one_update_at_a_time_across_threads(world):
    held = world.updater("1.0.0").begin()
    try:
        errors = []

        def second():
            try:
                world.updater("1.0.0").begin()
            except UpdateError as error:
                errors.append(error.message)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
        assert errors == ["another update is running"]
    finally:
        held.close()
    world.updater("1.0.0").begin().close()  # free again


def test_one_update_at_a_time_across_processes(world):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pilot.launcher import UpdateInProgress\nlock = UpdateInProgress()\n"
                               "print(lock.acquire(), flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "True"
        with pytest.raises(UpdateError, match="another update is running"):
            world.updater("1.0.0").begin()
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_an_unusable_pilot_home_is_found_before_anything_is_fetched(world, monkeypatch, tmp_path):
    world.repo.add("2.0.0")
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("PILOT_HOME", str(home))
    with pytest.raises(StateError) as raised:
        update(world)
    assert raised.value.exit_code == 4 and world.repo.requests == []


def test_an_unwritable_install_directory_is_found_before_anything_is_fetched(world, monkeypatch):
    world.repo.add("2.0.0")
    real_access = os.access
    monkeypatch.setattr(install.os, "access", lambda path, mode: False if Path(path) == world.bin
                        else real_access(path, mode))
    with pytest.raises(InstallError) as raised:
        update(world)
    assert raised.value.exit_code == 3 and world.repo.requests == []


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("name", ["PILOT_BOOT_TIMEOUT", "PILOT_UPDATE_DEADLINE", "PILOT_FIRST_CHECK_DELAY"])
@pytest.mark.parametrize("value", ["soon", "-5", "0", "1e9x", "nan"])
def test_a_bad_setting_is_one_line_before_any_download(name, value):
    with pytest.raises(ConfigError) as raised:
        Settings.read(load_config(), {name: value})
    assert name in raised.value.one_line() and "\n" not in raised.value.one_line()
    assert raised.value.exit_code == 4


def test_durations_take_the_forms_people_write():
    settings = Settings.read(load_config(), {"PILOT_BOOT_TIMEOUT": "90s", "PILOT_UPDATE_DEADLINE": "2m",
                                             "PILOT_FIRST_CHECK_DELAY": "0.5"})
    assert (settings.boot_timeout, settings.fetch_deadline, settings.first_check_delay) == (90, 120, 0.5)


@pytest.mark.parametrize("url", ["http://releases.example.org/stable/manifest.json", "ftp://x/stable/manifest.json",
                                 "https:///stable/manifest.json"])
def test_a_manifest_url_the_fetcher_would_refuse_is_a_configuration_error(url):
    with pytest.raises(ConfigError, match="the manifest URL"):
        Settings.read(load_config(), {}, manifest_url=url)


def test_open_updater_refuses_outside_an_archive():
    with pytest.raises(UpdateError, match="runs from a source checkout"):
        open_updater(manifest_url=MANIFEST_URL)


# ------------------------------------------------------------------------------ the backup rule


def test_the_backup_is_always_the_last_good_version_that_differs_from_the_installed_one(world, monkeypatch):
    """v1 -> v2 -> v3, --rollback, then a newer release: never are install and backup the same version."""
    monkeypatch.setattr("pilot.update.updater.updatable_build", lambda: world.build(world.version_at(world.install)))
    world.repo.add("2.0.0")
    with pytest.raises(Execed):
        update(world, "1.0.0")
    os.unlink(trial_path())  # 2.0.0 committed its boot
    world.repo.add("3.0.0")
    with pytest.raises(Execed):
        update(world, "2.0.0")
    os.unlink(trial_path())
    assert (world.version_at(world.install), world.version_at(world.backup)) == ("3.0.0", "2.0.0")

    assert roll_back() == ("2.0.0", "3.0.0")
    assert (world.version_at(world.install), world.version_at(world.backup)) == ("2.0.0", "3.0.0")
    assert update(world, "2.0.0").done == "up_to_date"  # 3.0.0 was rolled back on request
    assert state.load().user_rollbacks == ("3.0.0",)

    world.repo.add("4.0.0")
    with pytest.raises(Execed):
        update(world, "2.0.0")
    assert (world.version_at(world.install), world.version_at(world.backup)) == ("4.0.0", "2.0.0")


def test_a_rollback_to_a_backup_of_the_installed_version_is_refused(world, monkeypatch):
    monkeypatch.setattr("pilot.update.updater.updatable_build", lambda: world.build("1.0.0"))
    world.backup.write_bytes(fake_archive("1.0.0"))
    before = world.install.read_bytes()
    with pytest.raises(UpdateError, match="nothing to roll back to"):
        roll_back()
    assert world.install.read_bytes() == before


def test_no_rollback_while_an_update_runs_or_a_trial_is_open(world, monkeypatch):
    monkeypatch.setattr("pilot.update.updater.updatable_build", lambda: world.build("1.0.0"))
    world.backup.write_bytes(fake_archive("0.9.0"))
    with world.updater("1.0.0").begin(), pytest.raises(UpdateError, match="another update is running"):
        roll_back()
    write_json(trial_path(), {"to_version": "1.5.0", "started_at": 1.0, "pid": None, "booted": True})
    with pytest.raises(UpdateError, match="still starting"):
        roll_back()
    assert world.version_at(world.install) == "1.0.0"


def test_a_rollback_before_a_no_restart_install_ever_started_undoes_it(world, monkeypatch):
    """The backup may only hold a version that proved it starts: the unstarted one is removed, not kept."""
    world.repo.add("2.0.0")
    update(world, restart=False)
    monkeypatch.setattr("pilot.update.updater.updatable_build", lambda: world.build("2.0.0"))
    assert roll_back() == ("1.0.0", None)
    assert world.version_at(world.install) == "1.0.0" and not world.backup.exists()
    assert not os.path.exists(trial_path())
    assert state.load().user_rollbacks == ("2.0.0",)
    assert update(world, "1.0.0").done == "up_to_date"  # not offered again by itself


# ------------------------------------------------------------------------------ one owner of state.json


def test_every_write_of_the_state_file_during_an_update_comes_from_its_owner(world, monkeypatch):
    """At run time too: whoever calls write_json on state.json is pilot.update.state or the entry module's fold."""
    import inspect

    writers = set()
    original = launcher.atomic_write

    def spy(path, data, mode=0o644):
        if os.path.abspath(path) == os.path.abspath(state_path()):
            caller = inspect.stack()[2]  # [0] spy, [1] write_json, [2] who wrote
            writers.add((caller.frame.f_globals["__name__"], caller.function))
        return original(path, data, mode)

    monkeypatch.setattr(launcher, "atomic_write", spy)
    world.repo.add("2.0.0")
    update(world, restart=False)
    os.unlink(trial_path())  # as if 2.0.0 had started and committed
    monkeypatch.setattr("pilot.update.updater.updatable_build", lambda: world.build("2.0.0"))
    roll_back()
    assert writers == {("pilot.update.state", "_change"), ("pilot.launcher", "fold_state")}


# ------------------------------------------------------------------------------ the daemon's way


def test_a_daemon_older_than_the_install_execs_the_installed_archive(world):
    world.installed("2.0.0")
    updater = world.updater("1.0.0")
    assert updater.installed_version() == "2.0.0"
    with pytest.raises(Execed):
        updater.restart_into_installed(("start",))
    assert world.execs[0]["archive"] == world.install and world.execs[0]["argv"] == ["start"]
    assert world.repo.requests == []
