"""The task supervisor and the reaper, with real processes: a task dies with its daemon, leftovers are stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pilot.daemon import process, supervisor
from pilot.daemon.process import group_alive, process_start_time, reap_group, spawn

REPO = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")


def python(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether the process ends (or is a zombie waiting for init) within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def kill_quietly(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


SLEEPER_WITH_CHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(os.getpid(), child.pid, flush=True)
time.sleep(60)
"""


def test_the_command_runs_under_the_supervisor_in_its_own_group():
    task = spawn(python("import os; print(os.getppid(), os.getpgid(0), os.getsid(0), flush=True)"))
    parent, group, session = (int(word) for word in task.stdout.readline().split())
    assert task.wait(timeout=10) == 0
    assert parent == group == session == task.pid  # the supervisor leads the session and the group
    assert task.args[:5] == [sys.executable, "-I", "-S", str(supervisor.__file__), str(os.getpid())]


@pytest.mark.parametrize(("source", "code"), [
    ("import sys; sys.exit(3)", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", -signal.SIGSEGV),
])
def test_the_exit_status_is_the_commands(source, code):
    assert subprocess.run(python(source), timeout=10).returncode == code  # what it does unsupervised
    supervised = spawn(python(source))
    supervised.stdout.read()
    assert supervised.wait(timeout=10) == code


def test_a_command_that_cannot_start_raises_what_popen_would(tmp_path):
    with pytest.raises(FileNotFoundError):
        spawn(["pilot-test-no-such-program"])
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(PermissionError):
        spawn([str(script)])


def test_a_group_sigterm_while_the_daemon_lives_is_a_cancel_the_command_answers():
    """The supervisor gets the cancel's SIGTERM too; it keeps waiting and reports how the command ended."""
    task = spawn(python("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        print("ready", flush=True)
        time.sleep(60)
        """))
    assert task.stdout.readline() == "ready\n"
    os.killpg(task.pid, signal.SIGTERM)
    assert task.wait(timeout=10) == 7


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_the_supervisor_asks_the_kernel_for_sigterm_when_the_daemon_dies():
    probe = f"""
    import ctypes, sys
    sys.path.insert(0, {str(Path(supervisor.__file__).parent)!r})
    import supervisor
    supervisor.ask_for_death_signal()
    value = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    print(value.value)
    """
    result = subprocess.run(python(probe), capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == str(int(signal.SIGTERM)), result.stderr


def start_daemon_with_a_task(command_source: str) -> tuple[subprocess.Popen, list[int]]:
    """A stand-in daemon (spawn from its main thread, as a task thread does) running one task; the task's pids."""
    daemon = subprocess.Popen(python(f"""
        import sys, time
        from pilot.daemon.process import spawn
        task = spawn([sys.executable, "-c", {textwrap.dedent(command_source)!r}])
        print(task.pid, task.stdout.readline(), end="", flush=True)
        time.sleep(60)
        """), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    return daemon, [int(word) for word in daemon.stdout.readline().split()]


def test_sigkill_of_the_daemon_ends_the_whole_task_group_at_once():
    daemon, (supervisor_pid, task_pid, grandchild_pid) = start_daemon_with_a_task(SLEEPER_WITH_CHILD)
    try:
        daemon.kill()
        daemon.wait(timeout=10)
        killed_at = time.monotonic()
        assert gone(task_pid) and gone(grandchild_pid) and gone(supervisor_pid)
        if LINUX:  # the death signal, not the once-a-second parent check
            assert time.monotonic() - killed_at < supervisor.POLL_SECONDS
    finally:
        kill_quietly(task_pid, grandchild_pid, supervisor_pid)


def test_a_task_that_ignores_sigterm_is_killed_after_the_grace_when_the_daemon_dies():
    stubborn = """
    import os, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(os.getpid(), flush=True)
    time.sleep(60)
    """
    daemon, (supervisor_pid, task_pid) = start_daemon_with_a_task(stubborn)
    try:
        daemon.kill()
        daemon.wait(timeout=10)
        assert not gone(task_pid, timeout=supervisor.GRACE_SECONDS - 1.5)  # SIGTERM first, and time to obey it
        assert gone(task_pid, timeout=5) and gone(supervisor_pid)
    finally:
        kill_quietly(task_pid, supervisor_pid)


def test_a_supervisor_whose_daemon_is_already_gone_starts_nothing(tmp_path):
    marker = tmp_path / "ran"
    read_end, write_end = os.pipe()
    not_the_parent = os.getppid()
    result = subprocess.run([sys.executable, "-I", "-S", str(process.SUPERVISOR), str(not_the_parent),
                             str(write_end), "--", "touch", str(marker)], pass_fds=(write_end,), timeout=30)
    os.close(write_end)
    os.close(read_end)
    assert result.returncode == 128 + signal.SIGTERM
    assert not marker.exists()


# --- the reaper -------------------------------------------------------------------------------


LEADER = """
import subprocess, sys, time
member = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(member.pid, flush=True)
time.sleep(60)
"""
STARTER = f"""
import subprocess, sys
leader = subprocess.Popen([sys.executable, "-c", {LEADER!r}], start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
print(leader.pid, leader.stdout.readline(), end="", flush=True)
"""


def leftover_group() -> tuple[int, int]:
    """A process group whose parent is gone, as a dead daemon leaves one: (group id, a member's pid)."""
    starter = subprocess.run([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True, timeout=30)
    leader, member = (int(word) for word in starter.stdout.split())
    return leader, member


def test_the_reaper_stops_a_leftover_group_members_included():
    started = datetime.now(UTC)
    pgid, member = leftover_group()
    try:
        assert group_alive(pgid)
        assert reap_group(pgid, started) == "killed"
        assert gone(pgid) and gone(member)
        assert reap_group(pgid, started) == "gone"
    finally:
        kill_quietly(pgid, member)


def test_the_reaper_leaves_a_group_whose_leader_is_younger_than_the_task_alone():
    pgid, member = leftover_group()
    try:
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)  # the task started long before this "leader"
        assert reap_group(pgid, an_hour_ago) == "reused"
        assert group_alive(pgid) and not gone(member, timeout=0.2)
    finally:
        os.killpg(pgid, signal.SIGKILL)


def test_the_reaper_ignores_groups_that_are_not_there():
    assert reap_group(2**22 + 12345, datetime.now(UTC)) == "gone"
    assert reap_group(0, None) == "gone" and reap_group(1, None) == "gone"


def test_a_process_start_time_is_read_and_ps_agrees():
    mine = process_start_time(os.getpid())
    assert time.time() - 24 * 3600 < mine <= time.time()
    assert process_start_time(2**22 + 12345) is None
    if LINUX:
        assert abs(process._ps_start_time(os.getpid()) - mine) < 2.5  # the macOS path, checked here too
