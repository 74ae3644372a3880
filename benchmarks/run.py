#!/usr/bin/env python3
"""Pilot's start-up, update and memory figures: every figure a ratio measured side by side in one run.

    python benchmarks/run.py [--quick] [--cache DIR]

Run it with the Python the archives are for (the header names it); it builds what it needs with
build/build.py, and the wheel of the package with pip, cached in DIR (default .pytest_cache/pilot-bench,
keyed by the sources like the tests' archive cache), and does everything else in one temp dir:
PILOT_HOME, SHIV_ROOT, HOME, the installs, the release trees it serves on 127.0.0.1, and two venvs:
the baseline (below) and the pip-installed Pilot (the wheel and build/requirements.lock, installed with
the running interpreter's pip). --quick does fewer repetitions (each row says how many). Needs curl and
sha256sum for the download baseline and tmux for the dashboard rows (a row says n/a when its tool is
missing), and the package index for the pip-installed Pilot (its rows say n/a without it).

The baseline is a clean interpreter: a venv made with `-m venv --without-pip` from the interpreter running
the benchmark, so no .pth file of the machine's site-packages runs at its start. Every Pilot command runs
under it: `python3 pilot.pyz ...` names it, and `./pilot ...` (the archive executed directly, as installed)
finds it first on PATH and in PILOT_PYTHON. The header prints its path and version and says which modules
it, the running interpreter and that one's base import at start beyond site's own; a baseline that imports
more (a .pth file) makes every ratio against it look better than it is, and the run says so.

How each figure is taken (docs/PERFORMANCE.md has the latest results):

* start-up: wall time of whole processes, the commands interleaved round by round, medians: `./pilot`,
  `python3 pilot.pyz`, the pip-installed `pilot`, a stdlib zipapp whose __main__ is `pass`, and
  `python -c pass` of the baseline and of the machine's own interpreters;
* first start after a hot swap: `self-update --no-restart` from 1.0.0 to 2.0.0 (another build
  id, its extraction removed first, so the pre-flight really unpacks), then the first
  `pilot status` against the median of three warm ones right after it, run directly and through python;
* self-update: the whole command (manifest, download, verify, pre-flight, swap) of a release
  carrying 100 MB of incompressible data, against `curl -o` + `sha256sum` + `cp` of the same
  file from the same server;
* peak RSS: VmHWM of the self-update process (polled from /proc until it exits), 10 MB vs 100 MB
  of ballast; os.wait4's ru_maxrss (which also covers the pre-flight child) is shown beside it;
* dashboard: a tmux pane polled with capture-pane; the downtime of a hot upgrade runs from the
  last sample showing the old version's dashboard to the first showing the new one's, and a cold
  start from the moment the shell execs python to the first sample showing the dashboard.
  Resolution: one sampling period, printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipapp
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.dont_write_bytecode = True  # nothing written outside the temp dir and the cache
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pilot.launcher import read_build_metadata  # noqa: E402 (the entry module: standard library only)
from pilot.update import early  # noqa: E402 (its threshold, for a note)
from tests.support.archives import run_build, source_fingerprint  # noqa: E402 (stdlib-only helpers)
from tests.support.nginx import Nginx, nginx_available  # noqa: E402
from tests.support.ranges import RangeServer  # noqa: E402
from tests.support.server import StaticServer, throttle  # noqa: E402
from tests.support.tmux import Tmux  # noqa: E402

RELEASE_TOOL = REPO / "release-tools" / "release.py"
DEFAULT_CACHE = REPO / ".pytest_cache" / "pilot-bench"
RUNTIME_LOCK = REPO / "build" / "requirements.lock"
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "manifest.schema.json")  # what the wheel's build reads
SCHEMA_COPY = Path("pilot", "update", "manifest.schema.json")  # made by setup.py's build_py; a checkout may hold one
MB = 1024 * 1024
PY = sys.executable


# ----------------------------------------------------------------------------- output


@dataclass
class Row:
    name: str
    value: str = ""
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def machine() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    if model == "unknown" and sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   check=True).stdout.strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"CPU:      {model}",
        f"cores:    {os.cpu_count()} ({usable} usable by this process)",
        f"Python:   {platform.python_implementation()} {platform.python_version()} ({PY}: runs the benchmark, "
        "the builds and pip)",
        f"OS:       {platform.platform()}",
        f"load:     {load} (1/5/15 min averages when the run began)",
    ]


def print_table(rows: list[Row]) -> None:
    head = ("measurement", "value", "baseline", "ratio", "goal", "met")
    cells = [head] + [(r.name, r.value, r.baseline, "" if r.ratio is None else f"{r.ratio:.2f}", r.goal,
                       {True: "yes", False: "NO", None: ""}[r.met]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for index, cell in enumerate(cells):
        print("  ".join(text.ljust(width) for text, width in zip(cell, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    notes = [(r.name, r.note) for r in rows if r.note]
    if notes:
        print()
        for name, note in notes:
            print(f"* {name}: {note}")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- building


def tool_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "SHIV_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def release_tool(*args: str) -> None:
    result = subprocess.run([PY, str(RELEASE_TOOL), *args], capture_output=True, text=True, env=tool_env(),
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"release.py {args[0]} failed: {result.stderr.strip()[-2000:]}")


class Archives:
    """The builds the benchmark needs, cached by the sources, the version, the key and the overlay."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.fingerprint = source_fingerprint()
        keys = cache / "keys"
        if not (keys / "bench.key").exists():
            shutil.rmtree(keys, ignore_errors=True)
            release_tool("keygen", "--out", str(keys), "--name", "bench")
        self.private, self.public = keys / "bench.key", keys / "bench.pub"

    def slot(self, version: str, overlay: dict) -> Path:
        recipe = {"source": self.fingerprint, "version": version, "overlay": overlay,
                  "key": hashlib.sha256(self.public.read_bytes()).hexdigest()}
        return self.cache / "archives" / hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]

    def build(self, version: str, *, ballast_mb: int = 0, probe: str = "", compresslevel: int = 6) -> Path:
        """probe: a small module that changes the build id; ballast_mb: incompressible data laid over site-packages;
        compresslevel: another deflate level than 6 changes every member (a release sharing nothing)."""
        overlay = {"ballast_mb": ballast_mb, "probe": probe, **({"level": compresslevel} if compresslevel != 6 else {})}
        slot = self.slot(version, overlay)
        done = slot / "archive.txt"
        if done.exists() and Path(done.read_text().strip()).exists():
            return Path(done.read_text().strip())
        shutil.rmtree(slot, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="pilot-bench-overlay-") as staging:
            overlay_dir = None
            if ballast_mb or probe:
                overlay_dir = Path(staging)
                (overlay_dir / "pilot").mkdir()
                if probe:
                    (overlay_dir / "pilot" / "_bench_probe.py").write_text(f"# {probe}\n")
                if ballast_mb:  # random.Random(0): the same bytes every run, so the build is reproducible
                    (overlay_dir / "pilot" / "_ballast.bin").write_bytes(random.Random(0).randbytes(ballast_mb * MB))
            say(f"building {version}" + (f" with {ballast_mb} MB of ballast" if ballast_mb else ""))
            path = run_build(version, slot / "dist", trusted_keys=[self.public], overlay=overlay_dir, env=tool_env(),
                             compresslevel=compresslevel)
        done.write_text(str(path))
        return path

    def prune(self, keep: set[Path]) -> None:
        """Drop cached builds of other sources: each ballast build is 25-120 MB."""
        for slot in (self.cache / "archives").glob("*"):
            if slot not in keep:
                shutil.rmtree(slot, ignore_errors=True)

    def wheel(self) -> Path:
        """The package's wheel, built by pip as tests/build/test_wheel.py builds it: from a copy of pilot/ (without
        the schema copy a checkout may hold: the build makes its own) and the files the build reads."""
        digest = hashlib.sha256(self.fingerprint.encode())
        for name in WHEEL_SOURCES:
            digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
        slot = self.cache / "wheel" / digest.hexdigest()[:24]
        found = sorted(slot.glob("pilot-*.whl"))
        if found:
            return found[0]
        for other in (self.cache / "wheel").glob("*"):
            shutil.rmtree(other, ignore_errors=True)
        say("building the wheel")
        with tempfile.TemporaryDirectory(prefix="pilot-bench-wheel-") as staging:
            source = Path(staging) / "source"
            shutil.copytree(REPO / "pilot", source / "pilot",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".DS_Store"))
            (source / SCHEMA_COPY).unlink(missing_ok=True)
            for name in WHEEL_SOURCES:
                shutil.copy2(REPO / name, source / name)
            pip("wheel", "--no-deps", "--wheel-dir", str(Path(staging) / "dist"), str(source))
            (built,) = (Path(staging) / "dist").glob("pilot-*.whl")
            slot.mkdir(parents=True)
            return Path(shutil.copy2(built, slot / built.name))


def pip(*args: str, python: Path | None = None) -> None:
    """The running interpreter's pip; with python, it installs into that interpreter's environment (pip --python),
    so the target venv needs no pip (nor the setuptools whose .pth a pip-made venv would import at every start)."""
    target = ["--python", str(python)] if python else []
    env = {k: v for k, v in tool_env().items() if k != "PYTHONDONTWRITEBYTECODE"}  # pip compiles what it installs
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    result = subprocess.run([PY, "-m", "pip", *target, *args, "--quiet"], capture_output=True, text=True, env=env,
                            timeout=900, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: ")]
        raise RuntimeError(f"pip {args[0]} failed: {' '.join(lines)[-600:] or result.stderr.strip()[-600:]}")


def build_id(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return read_build_metadata(zf)["build_id"]


# ----------------------------------------------------------------------------- running


class Bench:
    """One temp dir for everything the run writes; fresh homes and installs on demand."""

    def __init__(self, root: Path, archives: Archives) -> None:
        self.root = root
        self.archives = archives
        self.shiv = root / "shiv"
        self.homes = 0
        self.home = self.new_home()
        self.venv = make_venv(root / "baseline")  # the clean interpreter every Pilot command runs under
        self.python = self.venv / "bin" / "python"

    def new_home(self) -> Path:
        self.homes += 1
        self.home = self.root / f"home-{self.homes}"
        (self.home / "pilot").mkdir(parents=True)
        self.bin = self.root / f"bin-{self.homes}"
        self.bin.mkdir()
        return self.home

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "SHIV_"))}
        env.update(PILOT_HOME=str(self.home / "pilot"), SHIV_ROOT=str(self.shiv), HOME=str(self.home),
                   PYTHONDONTWRITEBYTECODE="1", PILOT_PYTHON=str(self.python),
                   PILOT_DELTA="never",  # the rows of whole downloads; delta_updates sets auto
                   PATH=os.pathsep.join([str(self.venv / "bin"), os.environ.get("PATH", os.defpath)]))
        env.update(extra)
        return env

    def pilot(self, pilot: Path, way: str, *args: str) -> list[str]:
        """A Pilot command run `direct` (./pilot: the archive's own head picks the interpreter; PATH and
        PILOT_PYTHON point it at the baseline's) or `pyz` (`python3 pilot.pyz`, the baseline's python named)."""
        return [str(pilot), *args] if way == "direct" else [str(self.python), str(pilot), *args]

    def install(self, archive: Path) -> Path:
        target = self.bin / "pilot"
        shutil.copyfile(archive, target)
        target.chmod(0o755)
        return target

    def forget_extraction(self, archive: Path) -> None:
        shutil.rmtree(self.shiv / f"pilot_{build_id(archive)}", ignore_errors=True)

    def run(self, command: list[str], env: dict | None = None, timeout: float = 300) -> float:
        """Wall time of a command that must succeed."""
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env or self.env(), timeout=timeout, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} exited {result.returncode}: {result.stderr.strip()[-1500:]}")
        return elapsed

    def measured(self, command: list[str], env: dict) -> tuple[float, int, int]:
        """(wall s, VmHWM kB of the process itself, ru_maxrss kB of it and its children) of a command.

        A small wrapper process starts it: a child's ru_maxrss starts from the high-water mark of the
        process that spawned it (vfork + exec), and this one has held 100 MB files in memory."""
        errors = self.root / "measured.stderr"
        result = subprocess.run([PY, "-c", MEASURE, str(errors), *command], capture_output=True, text=True, env=env,
                                timeout=600, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"the measuring wrapper failed: {result.stderr.strip()[-1500:]}")
        answer = json.loads(result.stdout)
        if answer["code"] != 0:
            stderr = errors.read_text(errors="replace")
            raise RuntimeError(f"{shlex.join(command)} exited {answer['code']}: {stderr.strip()[-1500:]}")
        return answer["wall"], answer["hwm"], answer["tree"]


MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[1], "wb") as errors:
    child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=errors, stdin=subprocess.DEVNULL)
    hwm = 0
    while child.poll() is None:  # VmHWM only grows: the last read, at most 10 ms before the exit, is the peak
        try:
            with open("/proc/%d/status" % child.pid) as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
print(json.dumps({"code": child.returncode, "wall": time.perf_counter() - start, "hwm": hwm,
                  "tree": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


class Site:
    """A release tree with one release on channel stable, served on 127.0.0.1. ranges: by a server that
    answers Range requests (nginx when the machine has it), for delta updates; else Python's, which does not."""

    def __init__(self, bench: Bench, name: str, archive: Path, ranges: bool = False) -> None:
        self.root = bench.root / f"site-{name}"
        self.root.mkdir()
        if not ranges:
            self.server = StaticServer(self.root).__enter__()
        else:
            self.server = Nginx(self.root).__enter__() if nginx_available() else RangeServer(self.root).__enter__()
        self.kind = "nginx" if isinstance(self.server, Nginx) else \
            "tests/support/ranges.py" if ranges else "tests/support/server.py"
        release_tool("publish", "--root", str(self.root), "--channel", "stable", "--base-url", self.server.url,
                     "--key", str(bench.archives.private), str(archive))
        self.archive = archive
        self.artifact = next((self.root / "releases").glob("*/*.pyz"))
        self.artifact_url = f"{self.server.url}/{self.artifact.relative_to(self.root).as_posix()}"

    @property
    def manifest_url(self) -> str:
        return f"{self.server.url}/stable/manifest.json"

    def body_bytes(self) -> int:
        """Every body byte the server has sent (a ranges site's: both kinds count what they send)."""
        served = self.server.requests() if isinstance(self.server, Nginx) else self.server.served
        return sum(entry.body_bytes for entry in served)

    def close(self) -> None:
        self.server.__exit__(None, None, None)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------- interpreters


def make_venv(target: Path) -> Path:
    """A venv of the interpreter running the benchmark (the one the archives are built for), with nothing in it."""
    subprocess.run([PY, "-m", "venv", "--without-pip", str(target)], check=True, capture_output=True, timeout=120)
    return target


AT_START = "import sys; print(' '.join(sorted(sys.modules)))"
# Run with -I -S: what site itself imports to do its work, without the .pth files and the customize hooks.
SITE_ONLY = ("import sys, site; site.addpackage = lambda *a, **k: None; "
             "site.execsitecustomize = site.execusercustomize = lambda: None; site.main(); " + AT_START)
ABOUT = r"""
import json, os, platform, site, sys
dirs = list(site.getsitepackages()) + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
pth = []
for folder in dirs:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        continue
    for name in names:
        if name.endswith(".pth"):
            try:
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as lines:
                    if any(line.startswith(("import ", "import\t")) for line in lines):
                        pth.append(os.path.join(folder, name))
            except OSError:
                pass
base = getattr(sys, "_base_executable", "") or sys.executable
print(json.dumps({"version": platform.python_implementation() + " " + platform.python_version(),
                  "executable": sys.executable, "base": os.path.realpath(base), "venv": sys.prefix != sys.base_prefix,
                  "pth": pth}))
"""


@dataclass
class StartupImports:
    """What an interpreter imports when it starts, beyond what site needs for itself."""

    python: str
    version: str
    base: str
    at_start: int
    extras: list[str]
    pth: list[str]  # .pth files of its site dirs with an import line

    def summary(self) -> str:
        if not self.extras:
            return f"imports nothing at start beyond site's own ({self.at_start} modules)"
        tops = sorted({name.partition(".")[0] for name in self.extras},
                      key=lambda top: (top in sys.stdlib_module_names, top.lstrip("_")))
        shown = ", ".join(tops[:8]) + (", ..." if len(tops) > 8 else "")
        where = f"; .pth files with imports: {', '.join(self.pth)}" if self.pth else ""
        many = "module" if len(self.extras) == 1 else "modules"
        return f"imports {len(self.extras)} {many} at start beyond site's own ({shown}){where}"


def startup_imports(python: Path | str, env: dict) -> StartupImports:
    def modules(*flags: str) -> set[str]:
        return set(subprocess.run([str(python), *flags], capture_output=True, text=True, env=env, check=True,
                                  timeout=60).stdout.split())

    about = json.loads(subprocess.run([str(python), "-c", ABOUT], capture_output=True, text=True, env=env,
                                      check=True, timeout=60).stdout)
    at_start = modules("-c", AT_START)
    extras = sorted(at_start - modules("-I", "-S", "-c", SITE_ONLY))
    return StartupImports(str(python), about["version"], about["base"], len(at_start), extras, about["pth"])


def base_interpreter() -> str | None:
    """The interpreter the running one is a venv of (None when it is none): the real file, which starts outside
    any venv (a venv's bin/python is often a symlink to the same file, so paths cannot tell them apart)."""
    if sys.prefix == sys.base_prefix:
        return None
    return os.path.realpath(getattr(sys, "_base_executable", "") or PY)


def interpreters(bench: Bench, pip_python: Path | None) -> tuple[list[str], list[str]]:
    """(header lines naming the baseline and what each interpreter imports at start, warnings)."""
    env = bench.env()
    baseline = startup_imports(bench.python, env)
    lines = [f"baseline: {bench.python} ({baseline.version}): a venv made with `-m venv --without-pip` from {PY} "
             f"(its interpreter: {baseline.base}); every Pilot command below runs under it, `./pilot` through PATH "
             "and PILOT_PYTHON",
             f"  start-up imports: the baseline {baseline.summary()}"]
    warnings = []
    if baseline.extras:
        warnings.append(f"WARNING: the baseline interpreter {baseline.summary()}: it starts slower than a clean "
                        "interpreter, so every ratio against its `python -c pass` looks better than it is")
    others = [(PY, "the interpreter running the benchmark")]
    base = base_interpreter()
    if base is not None:
        others.append((base, "its base interpreter"))
    if pip_python is not None:
        others.append((str(pip_python), "the pip-installed Pilot's venv"))
    for python, role in others:
        try:
            lines.append(f"  for context, {python} ({role}) {startup_imports(python, env).summary()}")
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            lines.append(f"  for context, {python} ({role}): could not be checked ({error})")
    return lines, warnings


class PipPilot:
    """The pip-installed Pilot: the wheel and build/requirements.lock installed into a fresh venv, the way a user
    installs the package (pipx and uv give it a venv of its own the same way)."""

    def __init__(self, bench: Bench) -> None:
        wheel = bench.archives.wheel()
        self.venv = make_venv(bench.root / "pip-venv")
        self.python = self.venv / "bin" / "python"
        say("installing the wheel and build/requirements.lock into a venv")
        pip("install", "--require-hashes", "--only-binary=:all:", "--no-deps", "-r", str(RUNTIME_LOCK),
            python=self.python)
        pip("install", "--no-deps", str(wheel), python=self.python)
        self.script = self.venv / "bin" / "pilot"
        self.home = bench.root / "pip-home"  # its own PILOT_HOME: another version than the archives'
        (self.home / "pilot").mkdir(parents=True)
        self.wheel = wheel

    def env(self, bench: Bench) -> dict:
        return bench.env(PILOT_HOME=str(self.home / "pilot"), HOME=str(self.home))


# ----------------------------------------------------------------------------- measurements


def archive_head(archive: Path) -> str:
    """What comes before the zip: the line `./pilot` starts with and how many bytes precede the first member."""
    with archive.open("rb") as stream:
        first = stream.readline(200).rstrip(b"\n").decode("utf-8", "replace")
    with zipfile.ZipFile(archive) as zf:
        before = min((info.header_offset for info in zf.infolist()), default=0)
    return f"{first!r} ({before} bytes before the zip)"


def interpreter_of(command: list[str], env: dict) -> str:
    """sys.executable of the Pilot a command runs, from `version --json`."""
    result = subprocess.run([*command, "version", "--json"], capture_output=True, text=True, env=env, timeout=120,
                            stdin=subprocess.DEVNULL)
    try:
        return json.loads(result.stdout)["interpreter"]
    except (ValueError, KeyError, TypeError):
        return f"unknown (`version --json` exited {result.returncode})"


def empty_zipapp(bench: Bench) -> Path:
    """The stdlib's own zipapp of one member, a __main__.py that is `pass`."""
    empty = bench.root / "empty.pyz"
    if not empty.exists():
        source = bench.root / "empty-app"
        source.mkdir(exist_ok=True)
        (source / "__main__.py").write_text("pass\n")
        zipapp.create_archive(source, empty)
    return empty


def warm_starts(bench: Bench, v1: Path, rounds: int, pip_pilot: PipPilot | None) -> list[Row]:
    pilot = bench.install(v1)
    empty = empty_zipapp(bench)
    env = bench.env()
    python = str(bench.python)
    commands: dict[str, tuple[list[str], dict]] = {
        "pass": ([python, "-c", "pass"], env),
        "empty": ([python, str(empty)], env),
        "host pass": ([PY, "-c", "pass"], env),
    }
    base_python = base_interpreter()
    if base_python is not None:
        commands["base pass"] = ([base_python, "-c", "pass"], env)
    pilot_args = {"--version": ["--version"], "status": ["status"], "task list": ["task", "list"]}
    for label, args in pilot_args.items():
        for way in ("direct", "pyz"):
            commands[f"{way} {label}"] = (bench.pilot(pilot, way, *args), env)
        if pip_pilot is not None:
            commands[f"pip {label}"] = ([str(pip_pilot.script), *args], pip_pilot.env(bench))
    for command, command_env in commands.values():  # unpack v1, make the databases, warm the page cache
        bench.run(command, command_env)
        bench.run(command, command_env)
    ran_under = {way: interpreter_of(bench.pilot(pilot, way), env) for way in ("direct", "pyz")}
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            times[name].append(bench.run(*commands[name]))
    t = {name: median(values) for name, values in times.items()}
    base = t["pass"]
    counted = f"median of {rounds} interleaved runs each, against the baseline's `python -c pass` ({bench.python})"

    def row(name: str, key: str, goal: float | None = None, label: str = "(report)", note: str = "") -> Row:
        ratio = t[key] / base
        return Row(name, ms(t[key]), ms(base), ratio, f"<= {goal}" if goal is not None else label,
                   None if goal is None else ratio <= goal, note)

    wrong = [f"{way} ran under {seen}" for way, seen in ran_under.items()
             if Path(seen).parent != bench.python.parent]
    direct_note = (f"`./pilot` is the archive executed directly; it starts with {archive_head(pilot)}; "
                   f"`version --json` says it ran under {ran_under['direct']}"
                   + (f". WARNING: not the baseline's interpreter ({'; '.join(wrong)})" if wrong else ""))
    rows = [
        row("warm `./pilot --version` / `python -c pass`", "direct --version", 0.5, note=f"{counted}. {direct_note}"),
        row("warm `python3 pilot.pyz --version` / `python -c pass`", "pyz --version", 1.6,
            note="`python3` is the baseline's interpreter, named on the command line"),
    ]
    anchors = {"--version": None, "status": 3, "task list": 3}
    for label, goal in anchors.items():
        if label != "--version":
            rows.append(row(f"warm `./pilot {label}` / `python -c pass`", f"direct {label}", goal))
            rows.append(row(f"warm `python3 pilot.pyz {label}` / `python -c pass`", f"pyz {label}"))
        if pip_pilot is not None:
            rows.append(row(f"  anchor: pip-installed `pilot {label}` / `python -c pass`", f"pip {label}",
                            label="(anchor)"))
    if pip_pilot is not None:
        rows[-1].note = (f"the wheel ({pip_pilot.wheel.name}) and build/requirements.lock installed with pip into a "
                         f"venv of its own ({pip_pilot.venv}, no pip or setuptools in it): its console script "
                         "starts its venv's python, which imports from an unpacked site-packages; its own "
                         "PILOT_HOME; `task list` on an empty database, like the archive's")
    else:
        rows.append(Row("  anchor: pip-installed `pilot`", note="n/a: it could not be installed (see above)"))
    rows.append(row("floor: `python3 empty.pyz` (stdlib zipapp) / `python -c pass`", "empty", label="(context)",
                    note="made by zipapp.create_archive from a __main__.py that is `pass`: what any zipapp pays "
                         "before its first line runs (runpy, importlib.util, zipimport)"))
    rows.append(row(f"context: `python -c pass` of {PY} / of the baseline", "host pass", label="(context)",
                    note="the interpreter running the benchmark, started the same way: what a baseline with its "
                         "start-up imports would hide"))
    if "base pass" in t:
        rows.append(row(f"context: `python -c pass` of {base_python} / of the baseline", "base pass",
                        label="(context)"))
    return rows


def cold_start(bench: Bench, v1: Path, rounds: int) -> list[Row]:
    """The fallback: `pilot status` on an empty extraction root (unpack, then run) against a warm one."""
    pilot = bench.install(v1)
    colds: dict[str, list[float]] = {"direct": [], "pyz": []}
    warms: dict[str, list[float]] = {"direct": [], "pyz": []}
    for index in range(rounds):
        for way in ("direct", "pyz") if index % 2 == 0 else ("pyz", "direct"):
            bench.forget_extraction(v1)
            colds[way].append(bench.run(bench.pilot(pilot, way, "status")))
            warms[way].append(bench.run(bench.pilot(pilot, way, "status")))
    with zipfile.ZipFile(v1) as zf:
        members = len(zf.namelist())
    rows = []
    for way, shown in (("direct", "./pilot status"), ("pyz", "python3 pilot.pyz status")):
        cold, warm = median(colds[way]), median(warms[way])
        rows.append(Row(f"cold `{shown}` (nothing unpacked yet) / warm", secs(cold), secs(warm), cold / warm,
                        "(report)"))
    rows[-1].note = (f"median of {rounds} each; the cold start unpacks the {v1.stat().st_size / 1e6:.0f} MB archive "
                     f"({members} members in its outer zip) in a few threads")
    return rows


BREAKDOWN = r"""
import io, json, struct, sys, time, zipfile, zipimport
archive = sys.argv[1]
def best(fn, n=20):
    t = []
    for _ in range(n):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return min(t) * 1000
class Window(io.RawIOBase):  # a stored member read in place, as a file of its own
    def __init__(self, stream, start, size):
        self.stream, self.start, self.size, self.pos = stream, start, size, 0
    def readable(self): return True
    def seekable(self): return True
    def tell(self): return self.pos
    def seek(self, offset, whence=0):
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos
    def read(self, n=-1):
        n = self.size - self.pos if n is None or n < 0 else max(0, min(n, self.size - self.pos))
        self.stream.seek(self.start + self.pos)
        data = self.stream.read(n)
        self.pos += len(data)
        return data
out = {"inner": []}
with open(archive, "rb") as stream, zipfile.ZipFile(stream) as zf:
    infos = zf.infolist()
    names = {info.filename for info in infos}
    out["entries"] = len(infos)
    out["main"] = "pyc" if "__main__.pyc" in names else "py" if "__main__.py" in names else None
    source = zf.read("__main__.py") if "__main__.py" in names else b""
    out["source"] = len(source)
    for info in infos:
        if info.filename.endswith(".zip") and info.compress_type == zipfile.ZIP_STORED:
            stream.seek(info.header_offset)
            local = stream.read(30)
            start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
            def inner(start=start, size=info.file_size):
                with zipfile.ZipFile(Window(stream, start, size)) as member:
                    return len(member.infolist())
            out["inner"].append([info.filename, info.file_size, inner(), best(inner)])
def directory():
    zipimport._zip_directory_cache.clear(); zipimport.zipimporter(archive)
try:
    out["zipimport"] = best(directory)
except Exception as error:
    out["zipimport_error"] = "%s: %s" % (type(error).__name__, error)
    out["zipfile"] = best(lambda: zipfile.ZipFile(archive).close())
if out["main"]:
    try:
        z = zipimport.zipimporter(archive)
        load = (lambda: z.get_code("__main__")) if out["main"] == "pyc" else (
            lambda: compile(source, "__main__", "exec"))
        out["load"] = best(load)
    except Exception as error:
        out["load_error"] = "%s: %s" % (type(error).__name__, error)
print(json.dumps(out))
"""


def top_level_imports(importtime: str) -> list[tuple[str, int]]:
    """(module, cumulative us) of the top-level lines of -X importtime's output: the nested ones are indented."""
    found = []
    for line in importtime.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and not fields[2].startswith("  "):
            with contextlib.suppress(ValueError):
                found.append((fields[2].strip(), int(fields[1])))
    return found


def where_the_time_goes(bench: Bench, v1: Path) -> list[str]:
    """In-process costs of starting the archive, best of 20, in a fresh baseline interpreter. Each line stands on
    its own: whatever the archive's layout (a head before the zip, an inner zip, no __main__ at all), the lines that
    apply are printed and a step that fails says so."""
    python = str(bench.python)
    lines = []
    try:
        lines.append(f"the archive starts with {archive_head(v1)}")
        out = json.loads(subprocess.run([python, "-c", BREAKDOWN, str(v1)], capture_output=True, text=True,
                                        check=True, timeout=300).stdout)
        if "zipimport" in out:
            lines.append(f"zipimport reads the archive's central directory ({out['entries']} entries): "
                         f"{out['zipimport']:.2f} ms")
        else:
            lines.append(f"zipimport cannot read the archive ({out['zipimport_error']}); zipfile reads its "
                         f"central directory ({out['entries']} entries) in {out['zipfile']:.1f} ms")
        for name, size, entries, took in out["inner"]:
            lines.append(f"inner stored member {name} ({size / 1e6:.1f} MB): {entries} entries, its directory read "
                         f"in place by zipfile in {took:.1f} ms")
        kib = out["source"] // 1024
        if out["main"] is None:
            lines.append("no __main__ in the archive's zip")
        elif "load_error" in out:
            lines.append(f"loading __main__ through zipimport failed: {out['load_error']}")
        elif out["main"] == "pyc":
            lines.append(f"loading __main__ from its __main__.pyc ({kib} KiB of source beside it): "
                         f"{out['load']:.2f} ms")
        else:
            lines.append(f"compiling __main__.py ({kib} KiB of source, no .pyc in the archive): {out['load']:.2f} ms")
    except (OSError, ValueError, KeyError, subprocess.SubprocessError, zipfile.BadZipFile) as error:
        lines.append(f"reading the archive failed: {str(error).splitlines()[0][:300]}")
    try:  # what the entry module imports at its top level, whatever it is: against the stdlib zipapp's floor
        def top_level(command: list[str]) -> dict[str, int]:
            stderr = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60,
                                    env=bench.env()).stderr
            return dict(top_level_imports(stderr))

        floor = top_level([python, "-X", "importtime", str(empty_zipapp(bench))])
        entry = top_level([python, "-X", "importtime", str(v1), "--version"])
        extra = sorted(((us, name) for name, us in entry.items() if name not in floor), reverse=True)
        listed = ", ".join(f"{name} {us / 1000:.1f}" for us, name in extra[:6]) or "nothing"
        lines.append(f"`python3 pilot.pyz --version` imports beyond what the stdlib zipapp does (ms, cumulative): "
                     f"{listed}; {sum(us for us, _ in extra) / 1000:.1f} ms in all")
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        lines.append(f"-X importtime of `python3 pilot.pyz --version` failed: {str(error).splitlines()[0][:300]}")
    try:  # PYTHONPROFILEIMPORTTIME reaches the interpreter whichever way ./pilot starts it
        bench.new_home()  # a home as the warm rows use it: no config.yaml (the dashboard rows write one)
        pilot = bench.install(v1)
        bench.run(bench.pilot(pilot, "direct", "status"))  # warm: unpacked, its database made
        status = subprocess.run(bench.pilot(pilot, "direct", "status"), capture_output=True, text=True,
                                env=bench.env(PYTHONPROFILEIMPORTTIME="1"), check=True, timeout=120).stderr
        top = [(us, name) for name, us in top_level_imports(status)]
        heaviest = ", ".join(f"{name} {us / 1000:.1f}" for us, name in sorted(top, reverse=True)[:6])
        lines.append(f"`./pilot status`, heaviest top-level imports (ms, cumulative, as -X importtime counts): "
                     f"{heaviest or 'none reported'}")
    except (OSError, subprocess.SubprocessError) as error:
        lines.append(f"-X importtime of `./pilot status` failed: {str(error).splitlines()[0][:300]}")
    return lines


def first_start_after_swap(bench: Bench, v1: Path, v2_site: Site, rounds: int) -> list[Row]:
    """Each round swaps twice, once run directly (./pilot) and once through python, in alternating order."""
    firsts: dict[str, list[float]] = {"direct": [], "pyz": []}
    warms: dict[str, list[float]] = {"direct": [], "pyz": []}
    preextracted = []
    for index in range(rounds):
        for way in ("direct", "pyz") if index % 2 == 0 else ("pyz", "direct"):
            bench.new_home()
            pilot = bench.install(v1)
            env = bench.env(PILOT_MANIFEST_URL=v2_site.manifest_url)
            bench.run(bench.pilot(pilot, way, "status"), env)  # v1 warm, as an installed Pilot is
            bench.forget_extraction(v2_site.archive)  # the pre-flight must unpack, as in a real update
            bench.run(bench.pilot(pilot, way, "self-update", "--no-restart", "--yes"), env)
            preextracted.append((bench.shiv / f"pilot_{build_id(v2_site.archive)}" / ".pilot-complete").exists())
            firsts[way].append(bench.run(bench.pilot(pilot, way, "status"), env))
            warms[way].append(median([bench.run(bench.pilot(pilot, way, "status"), env) for _ in range(3)]))
    rows = []
    for way, shown in (("direct", "./pilot status"), ("pyz", "python3 pilot.pyz status")):
        first, warm = median(firsts[way]), median(warms[way])
        rows.append(Row(f"first `{shown}` after a hot swap / warm", ms(first), ms(warm), first / warm, "<= 1.2",
                        first / warm <= 1.2))
    rows[-1].note = (f"{rounds} swaps 1.0.0 -> 2.0.0 (another build id) each way, the self-update run the same way; "
                     f"the new build's extraction existed before its first start in {sum(preextracted)} of "
                     f"{len(preextracted)} (made by the pre-flight)")
    return rows


def self_update_runs(bench: Bench, v1: Path, site: Site, rounds: int) -> list[tuple[float, int, int]]:
    runs = []
    for _ in range(rounds):
        bench.new_home()
        pilot = bench.install(v1)
        env = bench.env(PILOT_MANIFEST_URL=site.manifest_url)
        bench.run(bench.pilot(pilot, "pyz", "status"), env)
        bench.forget_extraction(site.archive)
        runs.append(bench.measured(bench.pilot(pilot, "pyz", "self-update", "--no-restart", "--yes"), env))
    return runs


DOWNLOAD_ONLY = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from pilot.update.fetch import HttpFetcher
from pilot.update.install import receive
from pilot.update.manifest import Artifact
url, size, sha256, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
receive(HttpFetcher().stream(url, size=size), target, Artifact("", "", url, size, sha256))
"""


def self_update_100(bench: Bench, v1: Path, big: Site, small: Site, rounds: int) -> list[Row]:
    rows = []
    have_curl = bool(shutil.which("curl") and shutil.which("sha256sum"))
    if not have_curl:
        rows.append(Row("`pilot self-update` 100 MB / curl + sha256sum + cp", note="n/a: curl or sha256sum missing"))
    size = big.artifact.stat().st_size
    with big.artifact.open("rb") as stream:  # in blocks: this process's RSS is what a fork starts from
        sha256 = hashlib.file_digest(stream, "sha256").hexdigest()
    scratch = bench.root / "scratch"
    scratch.mkdir(exist_ok=True)
    shell = (f"curl -sS -o {scratch}/dl {shlex.quote(big.artifact_url)} && sha256sum {scratch}/dl >/dev/null "
             f"&& cp {scratch}/dl {scratch}/copy")
    updates, downloads, curls = [], [], []
    site_packages = str(bench.shiv / f"pilot_{build_id(v1)}" / "site-packages")
    for index in range(rounds):
        order = ["update", "baseline", "download"] if index % 2 == 0 else ["baseline", "download", "update"]
        for step in order:
            if step == "update":
                updates.extend(self_update_runs(bench, v1, big, 1))
            elif step == "baseline" and have_curl:
                curls.append(bench.run(["sh", "-c", shell]))
                with contextlib.suppress(FileNotFoundError):
                    (scratch / "dl").unlink()
                    (scratch / "copy").unlink()
            elif step == "download":
                bench.run(bench.pilot(bench.install(v1), "pyz", "status"))  # v1's libraries unpacked
                downloads.append(bench.run([str(bench.python), "-c", DOWNLOAD_ONLY, big.artifact_url, str(size), sha256,
                                            str(scratch / "received"), site_packages]))
                (scratch / "received").unlink()
    update = median([u[0] for u in updates])
    download = median(downloads)
    if curls:
        curl = median(curls)
        rows.append(Row(f"`pilot self-update --no-restart --yes` {size / 1e6:.0f} MB / curl -o + sha256sum + cp",
                        secs(update), secs(curl), update / curl, "<= 1.5", update / curl <= 1.5,
                        f"median of {rounds}; the update includes the pre-flight (unpacks the new archive and "
                        "imports all of it) and fsyncs; the baseline does neither"))
        sha_only = ["sh", "-c", f"curl -sS -o {scratch}/dl {shlex.quote(big.artifact_url)} && "
                                f"sha256sum {scratch}/dl >/dev/null"]
        plain = median([bench.run(sha_only) for _ in range(rounds)])
        (scratch / "dl").unlink()
        rows.append(Row("  of which download + hash + fsync (pilot's fetch.stream + install.receive) / curl + "
                        "sha256sum", secs(download), secs(plain), download / plain, "(context)",
                        note="a fresh interpreter running Pilot's own streaming code (one pass: read, hash, write; "
                             "then fsync) against the same file"))
    preflights = []
    for _ in range(rounds):
        bench.forget_extraction(big.archive)  # cold, as the pre-flight of a real update is
        preflights.append(bench.run(bench.pilot(big.archive, "pyz", "debug", "self-test")))
    preflight = median(preflights)
    rows.append(Row("  of which pre-flight of the 100 MB archive (unpack + self-test) / whole update",
                    secs(preflight), secs(update), preflight / update, "(context)",
                    note=f"median of {rounds} separate runs of `python NEW.pyz debug self-test` on an empty "
                         "extraction root, which is what the updater's pre-flight runs"))

    smalls = self_update_runs(bench, v1, small, max(1, rounds - 1))
    big_hwm, small_hwm = median([u[1] for u in updates]), median([u[1] for u in smalls])
    big_tree, small_tree = median([u[2] for u in updates]), median([u[2] for u in smalls])
    difference = (big_hwm - small_hwm) / 1024
    rows.append(Row("peak RSS of `pilot self-update`: 100 MB minus 10 MB artifact", f"{difference:+.1f} MB",
                    f"{small_hwm / 1024:.1f} MB", None, "< 10 MB", abs(difference) < 10,
                    f"VmHWM of the self-update process: {big_hwm / 1024:.1f} MB (100 MB) vs {small_hwm / 1024:.1f} MB "
                    f"(10 MB); with its children (RUSAGE_CHILDREN ru_maxrss of a small wrapper; the pre-flight "
                    f"child is the largest): {big_tree / 1024:.1f} MB vs {small_tree / 1024:.1f} MB"))
    return rows


def delta_updates(bench: Bench, v1: Path, one_module: Path, everything: Path, rounds: int) -> list[Row]:
    """Bytes on the wire and wall time of an update by delta, against the same update downloading the whole
    archive (PILOT_DELTA=never), for a release adding one module and one whose every member differs."""
    rows = []
    for label, archive in (("adds one module", one_module), ("changes every member", everything)):
        site = Site(bench, label.split()[0], archive, ranges=True)
        size = archive.stat().st_size
        try:
            times: dict[str, list[float]] = {"auto": [], "never": []}
            wire: list[int] = []
            for index in range(rounds):
                for mode in (["auto", "never"] if index % 2 == 0 else ["never", "auto"]):
                    bench.new_home()
                    pilot = bench.install(v1)
                    env = bench.env(PILOT_MANIFEST_URL=site.manifest_url, PILOT_DELTA=mode)
                    bench.run(bench.pilot(pilot, "pyz", "status"), env)
                    bench.forget_extraction(archive)  # as in a real update: the new build is not unpacked yet
                    if isinstance(site.server, Nginx):
                        time.sleep(0.05)  # nginx logs just after it answers
                    before = site.body_bytes()
                    times[mode].append(bench.run(bench.pilot(pilot, "pyz", "self-update", "--no-restart", "--yes"),
                                                 env))
                    if isinstance(site.server, Nginx):
                        time.sleep(0.05)
                    if mode == "auto":
                        wire.append(site.body_bytes() - before)
            sent, auto, never = median(wire), median(times["auto"]), median(times["never"])
            if label == "adds one module":
                rows.append(Row(f"delta update, a release that {label}: bytes on the wire", f"{sent / 1000:.1f} KB",
                                f"{size / 1e6:.1f} MB", sent / size, "<= 32 KB", sent <= 32 * 1024,
                                f"median of {rounds}; every body byte {site.kind} sent for the update: manifest, "
                                "signature, index, listing ranges and the pieces"))
                rows.append(Row("  its wall time / the same update downloading the whole archive", secs(auto),
                                secs(never), auto / never, "<= 1.0", auto / never <= 1.0,
                                f"median of {rounds} each, interleaved, on loopback (PILOT_DELTA=never for the whole "
                                "download); the new build's extraction removed first, so each pre-flight finds it "
                                "missing: the delta makes it from the installed build's files"))
            else:
                rows.append(Row(f"delta update, a release that {label}: bytes on the wire / the archive",
                                f"{sent / 1e6:.2f} MB", f"{size / 1e6:.2f} MB", sent / size, "<= 1.05",
                                sent / size <= 1.05, "it fetches the index, finds more than half to fetch and "
                                "downloads the whole archive (built with another deflate level: no member in common)"))
        finally:
            site.close()
    return rows


SLOW_LINK = 8 * 1024 * 1024  # bytes per second: a fast home connection, well below loopback


def unpack_during_download(bench: Bench, v1: Path, v2: Path, rounds: int) -> list[Row]:
    """The same update with the new archive unpacked while it downloads or after it (the pre-flight),
    on loopback and over a throttled link: the first shows why `auto` leaves it off there."""
    rows = []
    slow = Site(bench, "slow", v2)
    fast = Site(bench, "fast", v2)
    throttle(slow.server, SLOW_LINK)
    try:
        for site, link in ((fast, "loopback"), (slow, f"a {SLOW_LINK // (1024 * 1024)} MB/s link")):
            times: dict[str, list[float]] = {"never": [], "always": [], "auto": []}
            for index in range(rounds):
                modes = list(times) if index % 2 == 0 else list(reversed(times))
                for mode in modes:
                    bench.new_home()
                    pilot = bench.install(v1)
                    env = bench.env(PILOT_MANIFEST_URL=site.manifest_url, PILOT_UNPACK_DURING_DOWNLOAD=mode)
                    bench.run(bench.pilot(pilot, "pyz", "status"), env)
                    bench.forget_extraction(v2)
                    times[mode].append(bench.run(bench.pilot(pilot, "pyz", "self-update", "--no-restart", "--yes"),
                                                 env))
            never, always, auto = (median(times[mode]) for mode in ("never", "always", "auto"))
            rows.append(Row(f"self-update of {v2.stat().st_size / 1e6:.0f} MB over {link}: unpacking during the "
                            "download / after it", secs(always), secs(never), always / never, "(report)",
                            note=f"median of {rounds} each, interleaved; PILOT_UNPACK_DURING_DOWNLOAD=always vs "
                                 "never"))
            rows.append(Row(f"  the default (auto) over {link} / the better of the two", secs(auto),
                            secs(min(always, never)), auto / min(always, never), "<= 1.05",
                            auto / min(always, never) <= 1.05, "auto unpacks during the download only when the "
                            f"first MiB arrives slower than {early.AUTO_BELOW_BYTES_PER_SECOND // (1024 * 1024)} MB/s"))
    finally:
        slow.close()
        fast.close()
    return rows


# ----------------------------------------------------------------------------- dashboard


@dataclass
class Sample:
    at: float
    screen: str


def header(version: str) -> Callable[[str], bool]:
    # the header's banner line is "<logo>   v1.0.0"; other lines say "from v1.0.0" or ": v2.0.0"
    return lambda screen: "METRICS" in screen and f"   v{version}" in screen


def start_dashboard(bench: Bench, pilot: Path, env: dict) -> tuple[Tmux, Path]:
    """Start `pilot start --dashboard` in tmux; the time the shell execs python is written to a file."""
    stamp = bench.root / "t0"
    with contextlib.suppress(FileNotFoundError):
        stamp.unlink()
    tmux = Tmux(width=120, height=40)
    script = f"date +%s.%N > {shlex.quote(str(stamp))}; exec \"$0\" \"$@\""
    tmux.start(["sh", "-c", script, *bench.pilot(pilot, "pyz", "start", "--dashboard")],
               {k: env[k] for k in ("PILOT_HOME", "SHIV_ROOT", "HOME", "PILOT_MANIFEST_URL",
                                    "PILOT_FIRST_CHECK_DELAY", "PATH", "PILOT_PYTHON") if k in env})
    return tmux, stamp


def poll_until(tmux: Tmux, done: Callable[[str], bool], timeout: float, period: float) -> list[Sample]:
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux.screen()
        samples.append(Sample(time.time(), screen))
        if done(screen):
            return samples
        time.sleep(period)
    raise RuntimeError(f"the dashboard did not show what was expected within {timeout} s:\n{samples[-1].screen}")


def stop_dashboard(tmux: Tmux) -> None:
    with contextlib.suppress(Exception):
        tmux.send("q")
        deadline = time.monotonic() + 15
        while not tmux.pane_dead() and time.monotonic() < deadline:
            time.sleep(0.1)
    tmux.close()


def cold_dashboard(bench: Bench, pilot: Path, env: dict, period: float) -> tuple[float, float, Tmux]:
    """(cold start s, sampling period s, the running tmux)"""
    tmux, stamp = start_dashboard(bench, pilot, env)
    try:
        samples = poll_until(tmux, header("1.0.0"), 60, period)
    except BaseException:
        tmux.close()
        raise
    started = float(stamp.read_text())
    gaps = [b.at - a.at for a, b in itertools.pairwise(samples)] or [period]
    return samples[-1].at - started, median(gaps), tmux


def dashboard(bench: Bench, v1: Path, v2_site: Site, hot_rounds: int, cold_rounds: int) -> list[Row]:
    if not shutil.which("tmux"):
        return [Row("dashboard hot upgrade downtime / cold `pilot start --dashboard`", note="n/a: tmux missing")]
    period = 0.01
    colds, downtimes, periods = [], [], []
    for _ in range(cold_rounds):
        bench.new_home()
        pilot = bench.install(v1)
        cold, gap, tmux = cold_dashboard(bench, pilot, bench.env(PILOT_MANIFEST_URL="http://127.0.0.1:9/none"), period)
        stop_dashboard(tmux)
        colds.append(cold)
        periods.append(gap)
    for _ in range(hot_rounds):
        bench.new_home()
        (bench.home / "pilot" / "config.yaml").write_text("upgrade:\n  check_interval: 1s\n")
        pilot = bench.install(v1)
        bench.forget_extraction(v2_site.archive)
        env = bench.env(PILOT_MANIFEST_URL=v2_site.manifest_url, PILOT_FIRST_CHECK_DELAY="0.2")
        cold, gap, tmux = cold_dashboard(bench, pilot, env, period)
        colds.append(cold)
        periods.append(gap)
        try:
            poll_until(tmux, lambda s: "Update available: v2.0.0" in s, 60, 0.1)
            tmux.send("u")
            samples = poll_until(tmux, header("2.0.0"), 180, period)
            old = header("1.0.0")
            last_old = max(s.at for s in samples if old(s.screen))
            downtimes.append(samples[-1].at - last_old)
            periods.append(median([b.at - a.at for a, b in itertools.pairwise(samples)]))
        finally:
            stop_dashboard(tmux)
    cold, sampling = median(colds), median(periods)
    rows = [Row("cold `pilot start --dashboard`: exec of python to first frame", secs(cold), "", None, "(report)",
                note=f"{len(colds)} starts (v1.0.0 unpacked already), median; sampled every {sampling * 1000:.0f} ms "
                     "(capture-pane round trip + 10 ms sleep)")]
    if downtimes:
        downtime = median(downtimes)
        rows.insert(0, Row("dashboard hot upgrade downtime / cold dashboard start", secs(downtime), secs(cold),
                           downtime / cold, "(report)",
                           note=f"{len(downtimes)} upgrades 1.0.0 -> 2.0.0 after pressing u, median; from the last "
                                "sample showing v1's dashboard to the first showing v2's; each end is known to one "
                                f"sampling period (~{sampling * 1000:.0f} ms), so the figure may overstate by up to "
                                f"{2 * sampling * 1000:.0f} ms"))
    return rows


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"build cache (default {DEFAULT_CACHE})")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith(("PILOT_", "SHIV_"))]:
        del os.environ[name]  # the tmux server and every child start from this environment
    began = time.monotonic()
    details = machine()
    args.cache.mkdir(parents=True, exist_ok=True)
    archives = Archives(args.cache)
    recipes = {"v1": ("1.0.0", {}), "v2": ("2.0.0", {"probe": "2.0.0"}),
               "everything": ("2.0.0", {"probe": "2.0.0", "compresslevel": 5}),
               "big10": ("2.0.0", {"ballast_mb": 10}), "big100": ("2.0.0", {"ballast_mb": 100})}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two builds at a time
        futures = {name: pool.submit(archives.build, version, **extra) for name, (version, extra) in recipes.items()}
        built = {name: future.result() for name, future in futures.items()}
    archives.prune({path.parent.parent for path in built.values()})
    say(f"archives ready after {time.monotonic() - began:.0f} s")

    quick = args.quick
    rows: list[Row] = []
    breakdown: list[str] = []
    baseline: list[str] = []
    warnings: list[str] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="pilot-bench-") as temp:
        os.environ["TMUX_TMPDIR"] = temp  # tmux's socket too
        bench = Bench(Path(temp), archives)
        pip_pilot = None
        try:
            pip_pilot = PipPilot(bench)
        except Exception as error:  # no package index, most often: its rows say n/a, the others still run
            traceback.print_exc()
            warnings.append(f"the pip-installed Pilot could not be installed: {str(error).splitlines()[0][:300]}")
        try:
            baseline, more = interpreters(bench, pip_pilot.python if pip_pilot else None)
            warnings.extend(more)
        except Exception as error:
            failures += 1
            traceback.print_exc()
            warnings.append(f"WARNING: the interpreters' start-up imports could not be checked: {error}")
        say(f"baseline interpreter: {bench.python}")
        sites = {name: Site(bench, name, built[name]) for name in ("v2", "big10", "big100")}
        steps = [
            ("warm starts", lambda: warm_starts(bench, built["v1"], 10 if quick else 30, pip_pilot)),
            ("cold start", lambda: cold_start(bench, built["v1"], 2 if quick else 3)),
            ("first start after a swap", lambda: first_start_after_swap(bench, built["v1"], sites["v2"],
                                                                         2 if quick else 4)),
            ("self-update of 100 MB", lambda: self_update_100(bench, built["v1"], sites["big100"], sites["big10"],
                                                              1 if quick else 3)),
            ("delta updates", lambda: delta_updates(bench, built["v1"], built["v2"], built["everything"],
                                                    2 if quick else 5)),
            ("unpacking during the download", lambda: unpack_during_download(bench, built["v1"], built["v2"],
                                                                              2 if quick else 5)),
            ("dashboard", lambda: dashboard(bench, built["v1"], sites["v2"], 1 if quick else 2, 1 if quick else 2)),
        ]
        for name, step in steps:
            say(f"measuring: {name}")
            try:
                rows.extend(step())
            except Exception as error:  # a failed step is one row; the others still run
                failures += 1
                traceback.print_exc()
                rows.append(Row(name, note=f"FAILED: {str(error).splitlines()[0][:300]}"))
        try:
            breakdown = where_the_time_goes(bench, built["v1"])
        except Exception as error:
            traceback.print_exc()
            breakdown = [f"failed: {str(error).splitlines()[0][:300]}"]
        for site in sites.values():
            site.close()
        # A dashboard that did not quit with its pane (tmux.close() kills the pane, not always its process)
        # would outlive the temp dir and take CPU from the next run.
        subprocess.run(["pkill", "-KILL", "-f", temp], check=False)
    print()
    print("Pilot benchmark" + (" (--quick: fewer repetitions, each row's note says how many)" if quick else ""),
          time.strftime("%Y-%m-%d %H:%M:%S"))
    for line in details + baseline:
        print(line)
    for line in warnings:
        print(line)
    print()
    print_table(rows)
    if breakdown:
        print()
        print("Where warm starts go beyond `python -c pass` (in-process in the baseline interpreter, best of 20; "
              "-X importtime inflates its own):")
        for line in breakdown:
            print(f"  - {line}")
    print()
    print(f"total run time: {time.monotonic() - began:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
