"""update/state.json and its one application-side owner (pilot.update.state)."""

from __future__ import annotations

import ast
import json
import os
import threading
from pathlib import Path

import pytest

from pilot.launcher import state_path, write_json
from pilot.update import state

REPO = Path(__file__).resolve().parents[2]
TRIAL = {"from_version": "1.0.0", "to_version": "2.0.0", "install_path": "/opt/pilot/pilot",
         "backup_path": "/opt/pilot/pilot.backup"}


def raw() -> dict:
    return json.loads(Path(state_path()).read_text())


def test_no_file_reads_as_a_fresh_install():
    assert state.load() == state.UpdateState()


@pytest.mark.parametrize("content", [b'{"last": ', b"\xff\xfe", b"[1]", b"null"])
def test_a_torn_or_foreign_file_reads_as_a_fresh_install(content):
    os.makedirs(os.path.dirname(state_path()))
    Path(state_path()).write_bytes(content)
    assert state.load() == state.UpdateState()


def test_damaged_fields_read_as_their_defaults_and_good_ones_survive():
    write_json(state_path(), {"highest_serial": "9", "highest_keyset_version": 0, "install_id": 7,
                              "bad_versions": ["2.0.0", 3, None], "user_rollbacks": "1.5.0",
                              "last": {"state": "committed", "from_version": 1, "rollback_pid": "12"},
                              "notice_pending": "yes"})
    known = state.load()
    assert (known.highest_serial, known.highest_keyset_version, known.install_id) == (0, 1, None)
    assert (known.bad_versions, known.user_rollbacks, known.notice_pending) == (("2.0.0",), (), False)
    assert known.last.state == "committed" and known.last.from_version is None and known.last.rollback_pid is None


def test_the_high_water_marks_only_ever_rise():
    state.remember_manifest(5, 1)
    state.remember_manifest(3, 2)
    state.remember_manifest(4, 1)
    known = state.load()
    assert (known.highest_serial, known.highest_keyset_version) == (5, 2)


def test_the_install_id_is_made_once():
    first = state.install_id()
    assert len(first) == 32 and state.install_id() == first == state.load().install_id


def test_a_dashboard_user_is_noted_once_and_the_rest_of_the_state_survives():
    state.remember_manifest(5, 1)
    assert state.load().dashboard_user is False
    state.note_dashboard_user()
    written = os.stat(state_path()).st_mtime_ns
    state.note_dashboard_user()  # every later start of the dashboard: one read, no write
    assert os.stat(state_path()).st_mtime_ns == written
    assert raw()["dashboard_user"] is True and state.load().highest_serial == 5


def test_keys_a_newer_pilot_wrote_are_kept():
    write_json(state_path(), {"highest_serial": 1, "from_the_future": {"x": 1}})
    state.remember_manifest(2, 1)
    state.install_id()
    state.record(TRIAL, "committed")
    assert raw()["from_the_future"] == {"x": 1}


def test_take_notice_returns_the_last_outcome_once_and_keeps_it():
    state.record(TRIAL, "rolled_back", "it hung")
    last = state.load().last
    assert last.state == "rolled_back" and last.reason == "it hung"
    assert state.take_notice() == last
    assert state.take_notice() is None
    assert state.load().last == last  # told, not forgotten


def test_an_outcome_the_user_saw_happen_is_no_notice():
    state.record(TRIAL, "installed", notice=False)
    assert state.take_notice() is None


def test_failed_starts_and_user_rollbacks_are_both_skipped_and_each_listed_once():
    state.record(TRIAL, "rolled_back", "it hung")
    state.record(TRIAL, "rolled_back", "it hung again")
    state.record({**TRIAL, "from_version": "3.0.0", "to_version": "2.5.0"}, "rolled_back_by_user")
    known = state.load()
    assert known.bad_versions == ("2.0.0",) and known.user_rollbacks == ("3.0.0",)
    assert known.skipped_versions == ("2.0.0", "3.0.0")


def test_two_threads_writing_at_once_lose_nothing():
    """The checker thread raises the serial while the main thread records outcomes: no write may be lost."""
    start = threading.Barrier(2)

    def serials():
        start.wait()
        for serial in range(1, 201):
            state.remember_manifest(serial, 1)

    def outcomes():
        start.wait()
        for n in range(200):
            state.record({**TRIAL, "to_version": f"2.0.{n}"}, "rolled_back", "bad")

    threads = [threading.Thread(target=serials), threading.Thread(target=outcomes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    known = state.load()
    assert known.highest_serial == 200
    assert len(known.bad_versions) == 200


# ---------------------------------------------------------------------- one owner


def writers_of_the_state_file() -> set[str]:
    """Modules that name the state file's path, or write through the entry module's JSON helpers to it."""
    found = set()
    for path in sorted((REPO / "pilot").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names}
        texts = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                 and isinstance(node.value, str)}
        if "state_path" in names | imported or "fold_state" in names | imported or \
                any("state.json" in text and "update" in text and "\n" not in text for text in texts):
            found.add(path.relative_to(REPO).as_posix())
    return found


def test_exactly_one_application_module_and_the_entry_module_touch_the_state_file():
    """Every command asks the entry module whether a rollback is untold (launcher.rollback_untold); nothing else
    reads or writes the file."""
    assert writers_of_the_state_file() == {"pilot/launcher.py", "pilot/update/state.py"}
    assert "rollback_untold()" in (REPO / "pilot" / "cli.py").read_text()
