"""The build and release tools' own environment, made from build/tools.lock and reused.

build.py and release-tools/release.py need shiv, cryptography and jsonschema; a fresh
machine has only Python and pip. Each script calls `reexec_in_tools_env()` first: it
creates build/.venv-<python tag> from the hash-pinned lock once, then re-runs the script
under it. A stamp holding the lock's hash tells whether the environment can be reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

BUILD_DIR = Path(__file__).resolve().parent
REPO = BUILD_DIR.parent
TOOLS_LOCK = BUILD_DIR / "tools.lock"


def python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def tools_venv() -> Path:
    override = os.environ.get("PILOT_TOOLS_VENV")
    return Path(override) if override else BUILD_DIR / f".venv-{python_tag()}"


def pip_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    return env


def ensure_tools_env() -> Path:
    """Create (or reuse) the tools venv; return its python."""
    home = tools_venv()
    python = home / "bin" / "python"
    stamp = home / "lock.sha256"
    wanted = hashlib.sha256(TOOLS_LOCK.read_bytes() + sys.version.encode()).hexdigest()
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds at once must not both create it
        if stamp.is_file() and stamp.read_text().strip() == wanted and python.exists():
            return python
        print(f"build: creating the tool environment {home} from {TOOLS_LOCK.name}", file=sys.stderr)
        venv.EnvBuilder(clear=True, with_pip=True).create(home)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "--only-binary=:all:",
             "-r", str(TOOLS_LOCK)],
            check=True, env=pip_environment(),
        )
        stamp.write_text(wanted + "\n")
    return python


def reexec_in_tools_env(script: str) -> None:
    """Re-run `script` under the tools venv unless this process already runs there."""
    home = tools_venv().resolve()
    if Path(sys.prefix).resolve() == home:
        return
    python = ensure_tools_env()
    os.execv(str(python), [str(python), script, *sys.argv[1:]])


def run_cli(script: str, build_parser, refusal: type[Exception], prefix) -> int:
    """The shared main of the build and release tools: parse, run, and turn any refusal into one line.

    `prefix(args)` names the tool (and command) at the start of that line; exit status 1.
    """
    reexec_in_tools_env(script)
    sys.path.insert(0, str(REPO))
    args = build_parser().parse_args()
    from pilot.errors import PilotError

    try:
        args.run(args)
    except refusal as error:
        message = str(error)
    except PilotError as error:
        message = error.one_line()
    except OSError as error:
        message = f"{error.strerror}: {error.filename}"
    else:
        return 0
    print(f"{prefix(args)}: {message}", file=sys.stderr)
    return 1
