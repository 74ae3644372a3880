"""The dashboard's terminal driver: Textual's own, made to outlive its terminal.

Closing the terminal (its window, an ssh connection, `tmux kill-server`) sends the dashboard SIGHUP,
and the kernel sends SIGCONT with it. Textual's driver took that SIGCONT as the end of a Ctrl+Z
and started the screen a second time (a second writer and input thread), and its writer thread
died of the first write that failed with EIO, after which its queue filled and the app blocked in a
write: the daemon never took the SIGHUP and lived on with no terminal. Here a SIGCONT resumes only
a screen that Ctrl+Z suspended, and output the terminal can no longer take is dropped.
"""

from __future__ import annotations

from typing import Any, TextIO

from textual.drivers.linux_driver import LinuxDriver

from pilot.launcher import is_unwritable_output


class TerminalOutput:
    """The file the screen is written to: a write or flush the terminal cannot take is dropped, not raised."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except OSError as error:
            if not is_unwritable_output(error):
                raise
            return len(text)

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as error:
            if not is_unwritable_output(error):
                raise

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: the terminal's own
        return getattr(self._file, name)


class DashboardDriver(LinuxDriver):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._file = TerminalOutput(self._file)
        self._suspended = False

    def _sigtstp_application(self, *args: Any) -> None:
        self._suspended = True  # before the SIGSTOP in it: the SIGCONT of `fg` finds it set
        super()._sigtstp_application(*args)

    def _sigcont_application(self, *args: Any) -> None:
        if self._suspended:
            self._suspended = False
            super()._sigcont_application(*args)
