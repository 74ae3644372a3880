"""pilot.dashboard.driver: a terminal that went away, and a SIGCONT nobody asked for."""

from __future__ import annotations

import io
import os

import pytest
from textual.drivers import linux_driver

from pilot.dashboard.driver import DashboardDriver, TerminalOutput


def hung_up_terminal() -> io.TextIOWrapper:
    """The terminal side of a pty whose other side has closed: a window or ssh connection gone (EIO)."""
    controller, terminal = os.openpty()
    os.close(controller)
    return os.fdopen(terminal, "w")


def test_output_to_a_terminal_that_went_away_is_dropped():
    terminal = hung_up_terminal()
    output = TerminalOutput(terminal)
    for _ in range(100):  # more than the writer thread's queue holds
        assert output.write("\x1b[2J" + "frame " * 50) == len("\x1b[2J" + "frame " * 50)
        output.flush()
    assert output.fileno() == terminal.fileno()  # the rest is the terminal's own
    with pytest.raises(OSError):
        terminal.flush()  # what Textual's writer thread died of


def test_another_error_is_not_hidden():
    class Refusing(io.StringIO):
        def write(self, text: str) -> int:
            raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError):
        TerminalOutput(Refusing()).write("x")


@pytest.fixture
def handlers_restored():
    """The driver installs SIGTSTP and SIGCONT handlers, as in the dashboard; pytest's come back after."""
    import signal

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTSTP, signal.SIGCONT)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def recording_driver(monkeypatch) -> tuple[DashboardDriver, list[str]]:
    """A DashboardDriver (it needs a running event loop) whose screen work is recorded instead of done."""
    driver = DashboardDriver(app=object())
    steps: list[str] = []
    monkeypatch.setattr(driver, "suspend_application_mode", lambda: steps.append("suspend"))
    monkeypatch.setattr(driver, "resume_application_mode", lambda: steps.append("resume"))
    monkeypatch.setattr(linux_driver.os, "kill", lambda pid, signum: steps.append(f"kill {signum.name}"))
    return driver, steps


async def test_a_sigcont_without_a_suspend_changes_nothing(monkeypatch, handlers_restored):
    """The kernel sends SIGCONT with SIGHUP when the terminal hangs up; `kill -CONT` does it by hand."""
    import signal

    driver, steps = recording_driver(monkeypatch)
    # The handlers Textual installs are the methods overridden here (a Textual that renamed them fails this).
    assert signal.getsignal(signal.SIGCONT) == driver._sigcont_application
    assert signal.getsignal(signal.SIGTSTP) == driver._sigtstp_application
    assert isinstance(driver._file, TerminalOutput)  # what its WriterThread is given
    driver._sigcont_application()
    driver._sigcont_application()
    assert steps == []


async def test_ctrl_z_then_fg_suspends_and_resumes_the_screen_once(monkeypatch, handlers_restored):
    driver, steps = recording_driver(monkeypatch)
    driver._sigtstp_application()
    driver._sigcont_application()  # fg
    driver._sigcont_application()  # a stray one afterwards
    assert steps == ["suspend", "kill SIGSTOP", "resume"]
