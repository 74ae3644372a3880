"""Replace this process with an archive: same PID, same terminal.

exec runs no `finally` blocks or atexit handlers and drops Python's buffers, so callers
commit and close their state first; this module flushes the standard streams.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def exec_archive(archive: Path, argv: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, str(archive), *argv])
