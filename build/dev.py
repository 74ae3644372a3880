"""Developer set-up in one command: `python3 build/dev.py test [pytest args]`.

Creates .venv from the hash-pinned build/dev.lock (reused while the lock is unchanged),
installs the programs the tests drive for real when they are missing and this is root on
Debian (tmux: the dashboard tests drive a real terminal; nginx-light: the range-download
tests need a server we did not write; shellcheck: the published install.sh must pass it),
then runs the whole test suite. `.ci/run` calls
exactly this. Where it could install them (root with apt-get, as in CI) it sets
PILOT_REQUIRE_NGINX=1, so a failed install fails the nginx tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
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


# Debian package -> the program that shows it is installed (nginx's is in /usr/sbin, often not on PATH).
TEST_TOOLS = {"tmux": "tmux", "nginx-light": "/usr/sbin/nginx", "shellcheck": "shellcheck"}
NGINX_PID_FILE = Path("/run/nginx.pid")  # where Debian's nginx.service / init script keeps the daemon's pid


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def installed(program: str) -> bool:
    return os.access(program, os.X_OK) if "/" in program else shutil.which(program) is not None


def ensure_test_tools() -> None:
    """One apt-get update and one install of whichever of TEST_TOOLS are missing. A failure is reported, not
    fatal: the tests that need a missing program skip (or, with PILOT_REQUIRE_NGINX, fail and say why)."""
    missing = [package for package, program in TEST_TOOLS.items() if not installed(program)]
    if not missing or not can_install():
        return
    print(f"dev: installing {' '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    nginx_before = packaged_nginx_pid()  # some other nginx that uses the same pid file: not ours to stop
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                            check=False, env=env)
    if "nginx-light" in missing and (started := packaged_nginx_pid()) not in (None, nginx_before):
        stop_nginx(started)
    if result.returncode != 0:
        print(f"dev: apt-get install {' '.join(missing)} failed ({result.returncode})", file=sys.stderr)
    for package, program in TEST_TOOLS.items():
        if package in missing and not installed(program):
            print(f"dev: {program} is still missing; the tests that use it will not pass", file=sys.stderr)


def packaged_nginx_pid() -> int | None:
    """The pid of the nginx daemon that Debian's service runs, if one runs."""
    try:
        pid = int(NGINX_PID_FILE.read_text().split()[0])
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "nginx" else None  # else a stale file
    except (OSError, ValueError, IndexError):
        return None


def stop_nginx(pid: int) -> None:
    """nginx's postinst starts the system service (on port 80) where policy-rc.d allows it; the tests start
    their own nginx, so stop that daemon rather than leave it behind."""
    print(f"dev: stopping the nginx service the package started (pid {pid})", file=sys.stderr)
    workers = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(child) for child in workers.read_text().split()] if workers.exists() else []
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "stop", "nginx.service"], check=False, capture_output=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # the master: fast shutdown, its workers with it
    for _ in range(50):
        if not any(map(alive, [pid, *children])):
            return
        time.sleep(0.1)
    for process in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running, or stopped, but not a zombie (which a container's init may never reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs on whatever python3 a fresh machine has)
        sys.exit("dev: Pilot needs Python 3.11 or newer")
    command, *rest = sys.argv[1:] or ["test"]
    if command != "test":
        sys.exit("usage: python3 build/dev.py test [pytest arguments]")
    python = ensure_venv()
    ensure_test_tools()
    env = {**os.environ, "PILOT_REQUIRE_NGINX": "1"} if can_install() else None
    return subprocess.run([str(python), "-m", "pytest", *rest], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
