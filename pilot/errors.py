"""One exception hierarchy. Each error carries the one line the user sees and its exit code.

Exit codes (documented in the README):
  0  success
  1  a Pilot error that fits no narrower code
  2  usage error (bad arguments)
  3  an update was refused or failed; nothing was changed
  4  the local state or configuration is unusable
  5  this archive cannot run on this interpreter or platform
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UPDATE = 3
EXIT_STATE = 4
EXIT_INCOMPATIBLE = 5


class PilotError(Exception):
    """An error with a message fit for the user; the CLI prints it as one line."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(PilotError):
    exit_code = EXIT_USAGE


class UpdateError(PilotError):
    exit_code = EXIT_UPDATE


class ManifestError(UpdateError):
    """The manifest is malformed, stale, for another product or channel, or offers nothing."""


class VerificationError(UpdateError):
    """A signature, size or hash did not match what the trusted keys vouch for."""


class DownloadError(UpdateError):
    """The network failed us: timeout, refused connection, bad status, byte cap.

    `retry_after` is the delay in seconds the server asked for (Retry-After), if it sent one:
    the background checker waits at least that long before it tries again.
    """

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class InstallError(UpdateError):
    """The new archive could not be put in place; the old one still is."""


class UpdateCancelled(UpdateError):
    """The update was asked to stop (a daemon told to stop, a cancelled upgrade) before anything changed."""


class StateError(PilotError):
    exit_code = EXIT_STATE


class ConfigError(StateError):
    """config.yaml or an environment override is invalid."""
