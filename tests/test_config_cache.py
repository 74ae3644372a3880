"""The validated-config cache of the hot-path commands: it spares them yaml, and never vouches for a
config.yaml it did not read, however the file changed (same size, same mtime, another Pilot)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pilot.config
from pilot import cli
from pilot.commands import config_cache
from pilot.commands.config_cache import CACHE_NAME, checked_home
from pilot.errors import EXIT_STATE, ConfigError

VALID = "daemon:\n  concurrency: 2\n"
INVALID = "daemon:\n  concurrency: X\n"  # the same size: an edit that keeps size and mtime
assert len(VALID) == len(INVALID)


@pytest.fixture
def readings(monkeypatch) -> list[int]:
    """One entry per full reading of the configuration (the one that imports yaml)."""
    made: list[int] = []
    real = pilot.config.read_config

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pilot.config, "read_config", counting)
    return made


def write_keeping_mtime(path: Path, text: str) -> None:
    """Rewrite the file as an editor might within the clock's granularity: same size, same mtime_ns."""
    before = path.stat()
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_valid_config_is_read_in_full_once_and_then_from_the_cache(isolated_home, readings):
    isolated_home.mkdir()
    (isolated_home / "config.yaml").write_text(VALID)
    assert checked_home() == str(isolated_home)
    assert checked_home() == str(isolated_home)
    assert len(readings) == 1
    assert (isolated_home / CACHE_NAME).stat().st_mode & 0o777 == 0o600
    assert VALID not in (isolated_home / CACHE_NAME).read_text()  # a digest, never the file (it may hold tokens)


def test_an_edit_that_keeps_size_and_mtime_is_read_again_and_refused(isolated_home, readings):
    isolated_home.mkdir()
    config = isolated_home / "config.yaml"
    config.write_text(VALID)
    checked_home()
    write_keeping_mtime(config, INVALID)
    with pytest.raises(ConfigError, match=r"daemon\.concurrency"):
        checked_home()
    write_keeping_mtime(config, VALID)  # and back: the very bytes the record vouches for
    assert checked_home() == str(isolated_home)
    assert len(readings) == 2


def test_an_invalid_config_is_never_cached(isolated_home, readings):
    isolated_home.mkdir()
    (isolated_home / "config.yaml").write_text(INVALID)
    for _ in range(2):
        with pytest.raises(ConfigError):
            checked_home()
    assert len(readings) == 2
    assert not (isolated_home / CACHE_NAME).exists()


def test_another_pilot_or_other_rules_read_the_file_again(isolated_home, readings, monkeypatch, tmp_path):
    """A record made by another version, or by other code for the checks, vouches for nothing here."""
    package = tmp_path / "pilot"  # a copy of the files that hold the rules, to edit
    package.mkdir()
    for name in config_cache.RULE_FILES:
        (package / name).write_bytes((Path(config_cache._PACKAGE) / name).read_bytes())
    monkeypatch.setattr(config_cache, "_PACKAGE", str(package))
    isolated_home.mkdir()
    (isolated_home / "config.yaml").write_text(VALID)
    checked_home()
    checked_home()
    monkeypatch.setattr(config_cache, "current_version", lambda: "9.9.9")
    checked_home()
    rules = package / "config.py"
    rules.write_text(rules.read_text() + "\n# a changed check\n")
    checked_home()
    checked_home()
    (package / "launcher.py").unlink()  # the rules cannot be told apart: no cache at all
    checked_home()
    checked_home()
    assert len(readings) == 5


def test_a_damaged_cache_is_no_record(isolated_home, readings):
    isolated_home.mkdir()
    (isolated_home / "config.yaml").write_text(VALID)
    checked_home()
    (isolated_home / CACHE_NAME).write_text('{"config_yaml_blake2b": "0')
    checked_home()
    assert len(readings) == 2


def test_without_config_yaml_nothing_is_read_or_written(isolated_home, readings):
    assert checked_home() == str(isolated_home)  # made when missing, as before
    assert isolated_home.is_dir() and len(readings) == 0 and not (isolated_home / CACHE_NAME).exists()


def test_an_unusable_home_is_refused_as_before(isolated_home):
    isolated_home.parent.mkdir(parents=True, exist_ok=True)
    isolated_home.write_text("a file, not a directory")
    with pytest.raises(ConfigError, match="not a directory") as refused:
        checked_home()
    assert refused.value.exit_code == EXIT_STATE


def test_the_commands_refuse_a_config_edited_after_a_good_run(isolated_home, capsys):
    """End to end through the CLI: `pilot task list` works, then the file breaks in the same instant."""
    isolated_home.mkdir()
    config = isolated_home / "config.yaml"
    config.write_text(VALID)
    assert cli.main(["task", "list"]) == 0
    write_keeping_mtime(config, INVALID)
    assert cli.main(["task", "list"]) == EXIT_STATE
    assert cli.main(["status"]) == EXIT_STATE
    assert "daemon.concurrency" in capsys.readouterr().err
