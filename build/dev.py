"""Developer set-up in one command: `python3 build/dev.py test [pytest args]`.

Creates .venv from the hash-pinned build/dev.lock (reused while the lock is unchanged),
installs tmux when it is missing and this is root on Debian (the dashboard tests drive a
real terminal), then runs the whole test suite. `.ci/run` calls exactly this.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
LOCK = REPO / "build" / "dev.lock"


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / "dev-lock.sha256"
    wanted = hashlib.sha256(LOCK.read_bytes() + sys.version.encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"dev: creating {VENV} from {LOCK.name}", file=sys.stderr)
    venv.EnvBuilder(clear=True, with_pip=True).create(VENV)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "-r", str(LOCK)],
                   check=True, env=env)
    stamp.write_text(wanted + "\n")
    return python


def ensure_tmux() -> None:
    if shutil.which("tmux") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print("dev: installing tmux", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "tmux"], check=False)


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs on whatever python3 a fresh machine has)
        sys.exit("dev: Pilot needs Python 3.11 or newer")
    command, *rest = sys.argv[1:] or ["test"]
    if command != "test":
        sys.exit("usage: python3 build/dev.py test [pytest arguments]")
    python = ensure_venv()
    ensure_tmux()
    return subprocess.run([str(python), "-m", "pytest", *rest], cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
