"""The daemon's log, `$PILOT_HOME/logs/pilot.log`: one line per event, rotated by size, no credentials.

Headless, every line also goes to stderr; with the dashboard, to the file only (the terminal is
the dashboard's). Lines are "<time> <LEVEL> <message>". The file is rotated at MAX_BYTES and
BACKUPS older files are kept (pilot.log.1 ... pilot.log.3). Every record that reaches a handler
is redacted first: the userinfo of any URL in it, and the secrets `keep_out_of_logs` was given
(the notifier's bot token, webhook path and proxy password), by pilot.net's rules.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Iterable
from pathlib import Path

from pilot.net import redact, redact_logs

__all__ = ["BACKUPS", "MAX_BYTES", "configure_logging", "keep_out_of_logs", "log_path"]

MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _Redactor(logging.Filter):
    """Redacts records in place before any handler writes them; never drops one."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report
            return True
        clean = redact(message, self.secrets)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_redactor = _Redactor()


def log_path(home: Path) -> Path:
    return Path(home) / "logs" / "pilot.log"


def configure_logging(home: Path, *, to_stderr: bool) -> None:
    """pilot.log (rotated) for every record at INFO and above; stderr too when `to_stderr`."""
    path = log_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.addFilter(_redactor)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True, format=FORMAT)


def keep_out_of_logs(secrets: Iterable[str]) -> None:
    """Redact these from every log line from now on (pilot.log, stderr, and urllib3's own records)."""
    secrets = [secret for secret in secrets if secret]
    _redactor.secrets.update(secrets)
    redact_logs(secrets)
