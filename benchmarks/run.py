#!/usr/bin/env python3
"""Pilot's start-up, update and memory figures: every figure a ratio measured side by side in one run.

    python benchmarks/run.py [--quick] [--cache DIR]

Run it with the Python the archives are for (the table's interpreter line says which); it
builds what it needs with build/build.py, cached in DIR (default .pytest_cache/pilot-bench,
keyed by the sources like the tests' archive cache), and does everything else in one temp
dir: PILOT_HOME, SHIV_ROOT, HOME, the installs, and the release trees it serves on 127.0.0.1.
--quick does fewer repetitions. Needs curl and sha256sum for the download baseline and
tmux for the dashboard rows (a row says n/a when its tool is missing).

How each figure is taken (docs/PERFORMANCE.md has the latest results):

* start-up: wall time of whole processes, the commands interleaved round by round, medians;
* first start after a hot swap: `self-update --no-restart` from 1.0.0 to 2.0.0 (another build
  id, its extraction removed first, so the pre-flight really unpacks), then the first
  `pilot status` against the median of three warm ones right after it;
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
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.dont_write_bytecode = True  # nothing written outside the temp dir and the cache
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pilot.launcher import read_build_metadata  # noqa: E402 (the entry module: standard library only)
from tests.support.archives import run_build, source_fingerprint  # noqa: E402 (stdlib-only helpers)
from tests.support.server import StaticServer  # noqa: E402
from tests.support.tmux import Tmux  # noqa: E402

RELEASE_TOOL = REPO / "release-tools" / "release.py"
DEFAULT_CACHE = REPO / ".pytest_cache" / "pilot-bench"
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
        f"Python:   {platform.python_implementation()} {platform.python_version()} ({PY})",
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

    def build(self, version: str, *, ballast_mb: int = 0, probe: str = "") -> Path:
        """probe: a small module that changes the build id; ballast_mb: incompressible data laid over site-packages."""
        overlay = {"ballast_mb": ballast_mb, "probe": probe}
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
            path = run_build(version, slot / "dist", trusted_keys=[self.public], overlay=overlay_dir, env=tool_env())
        done.write_text(str(path))
        return path

    def prune(self, keep: set[Path]) -> None:
        """Drop cached builds of other sources: each ballast build is 25-120 MB."""
        for slot in (self.cache / "archives").glob("*"):
            if slot not in keep:
                shutil.rmtree(slot, ignore_errors=True)


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
                   PYTHONDONTWRITEBYTECODE="1")
        env.update(extra)
        return env

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
    """A release tree with one release on channel stable, served on 127.0.0.1."""

    def __init__(self, bench: Bench, name: str, archive: Path) -> None:
        self.root = bench.root / f"site-{name}"
        self.root.mkdir()
        self.server = StaticServer(self.root).__enter__()
        release_tool("publish", "--root", str(self.root), "--channel", "stable", "--base-url", self.server.url,
                     "--key", str(bench.archives.private), str(archive))
        self.archive = archive
        self.artifact = next((self.root / "releases").glob("*/*.pyz"))
        self.artifact_url = f"{self.server.url}/{self.artifact.relative_to(self.root).as_posix()}"

    @property
    def manifest_url(self) -> str:
        return f"{self.server.url}/stable/manifest.json"

    def close(self) -> None:
        self.server.__exit__(None, None, None)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------- measurements


def warm_starts(bench: Bench, v1: Path, rounds: int) -> list[Row]:
    pilot = bench.install(v1)
    empty = bench.root / "empty.pyz"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("__main__.py", "pass\n")
    commands = {
        "pass": [PY, "-c", "pass"],
        "version": [PY, str(pilot), "--version"],
        "status": [PY, str(pilot), "status"],
        "empty": [PY, str(empty)],
    }
    for command in commands.values():  # unpack v1 and warm the page cache
        bench.run(command)
        bench.run(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            times[name].append(bench.run(commands[name]))
    base = median(times["pass"])
    version, status, empty_t = median(times["version"]), median(times["status"]), median(times["empty"])
    return [
        Row("warm `pilot --version` / `python -c pass`", ms(version), ms(base), version / base, "<= 1.5",
            version / base <= 1.5, f"median of {rounds} interleaved runs each"),
        Row("warm `pilot status` / `python -c pass`", ms(status), ms(base), status / base, "(report)"),
        Row("floor: `python empty.pyz` / `python -c pass`", ms(empty_t), ms(base), empty_t / base, "(context)",
            note="a zip holding only `__main__.py` = `pass`: what any zipapp pays before its first line runs "
                 "(runpy, importlib.util, zipimport)"),
    ]


def cold_start(bench: Bench, v1: Path, rounds: int) -> list[Row]:
    """The fallback: `pilot status` on an empty extraction root (unpack, then run) against a warm one."""
    pilot = bench.install(v1)
    colds, warms = [], []
    for _ in range(rounds):
        bench.forget_extraction(v1)
        colds.append(bench.run([PY, str(pilot), "status"]))
        warms.append(bench.run([PY, str(pilot), "status"]))
    cold, warm = median(colds), median(warms)
    with zipfile.ZipFile(v1) as zf:
        members = len(zf.namelist())
    return [Row("cold `pilot status` (nothing unpacked yet) / warm `pilot status`", secs(cold), secs(warm),
                cold / warm, "(report)", note=f"median of {rounds}; the cold start unpacks the "
                f"{v1.stat().st_size / 1e6:.0f} MB archive ({members} members) in a few threads")]


def where_the_time_goes(bench: Bench, v1: Path) -> list[str]:
    """In-process costs of running the archive, best of 20, in a fresh interpreter."""
    code = r"""
import sys, time, zipimport
archive = sys.argv[1]
def best(fn, n=20):
    t = []
    for _ in range(n):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return min(t) * 1000
def directory():
    zipimport._zip_directory_cache.clear(); zipimport.zipimporter(archive)
z = zipimport.zipimporter(archive)
source = z.get_source("__main__")
import zipfile
names = zipfile.ZipFile(archive).namelist()
has_pyc = "__main__.pyc" in names
load = (lambda: z.get_code("__main__")) if has_pyc else (lambda: compile(source, "__main__", "exec"))
print(f"{len(names)}|{best(directory):.1f}|{best(load):.2f}|{len(source)}|{has_pyc}")
"""
    out = subprocess.run([PY, "-c", code, str(v1)], capture_output=True, text=True, check=True).stdout
    entries, directory, compiled, size, has_pyc = out.strip().split("|")
    imports = subprocess.run([PY, "-X", "importtime", "-c", "import signal, time"], capture_output=True,
                             text=True, check=True).stderr
    top_level_us = sum(int(line.split("|")[1]) for line in imports.splitlines()  # cumulative, top-level lines
                       if line.startswith("import time:") and line.rsplit("|", 1)[1] in (" signal", " time"))
    status = subprocess.run([PY, "-X", "importtime", str(v1), "status"], capture_output=True, text=True,
                            env=bench.env(), check=True).stderr
    top = []
    for line in status.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and not fields[2].startswith("  "):
            with contextlib.suppress(ValueError):
                top.append((int(fields[1]), fields[2].strip()))
    heaviest = ", ".join(f"{name} {us / 1000:.1f}" for us, name in sorted(top, reverse=True)[:6])
    return [
        f"zipimport reads the archive's central directory ({entries} entries): {directory} ms",
        f"loading __main__ from its __main__.pyc ({int(size) // 1024} KiB of source beside it): {compiled} ms"
        if has_pyc == "True" else
        f"compiling __main__.py ({int(size) // 1024} KiB of source, no .pyc in the archive): {compiled} ms",
        f"the entry module's top-level `import signal, time` (os and sys come with the interpreter): "
        f"{top_level_us / 1000:.1f} ms",
        f"`pilot status`, heaviest top-level imports (ms, cumulative, as -X importtime counts): {heaviest}",
    ]


def first_start_after_swap(bench: Bench, v1: Path, v2_site: Site, rounds: int) -> list[Row]:
    firsts, warms, preextracted = [], [], []
    for _ in range(rounds):
        bench.new_home()
        pilot = bench.install(v1)
        env = bench.env(PILOT_MANIFEST_URL=v2_site.manifest_url)
        bench.run([PY, str(pilot), "status"], env)  # v1 warm, as an installed Pilot is
        bench.forget_extraction(v2_site.archive)  # the pre-flight must unpack, as in a real update
        bench.run([PY, str(pilot), "self-update", "--no-restart", "--yes"], env)
        preextracted.append((bench.shiv / f"pilot_{build_id(v2_site.archive)}" / ".pilot-complete").exists())
        firsts.append(bench.run([PY, str(pilot), "status"], env))
        warms.append(median([bench.run([PY, str(pilot), "status"], env) for _ in range(3)]))
    first, warm = median(firsts), median(warms)
    return [Row("first `pilot status` after a hot swap / warm `pilot status`", ms(first), ms(warm), first / warm,
                "<= 1.2", first / warm <= 1.2,
                f"{rounds} swaps 1.0.0 -> 2.0.0 (another build id); the new build's extraction existed before its "
                f"first start in {sum(preextracted)} of {rounds} (made by the pre-flight)")]


def self_update_runs(bench: Bench, v1: Path, site: Site, rounds: int) -> list[tuple[float, int, int]]:
    runs = []
    for _ in range(rounds):
        bench.new_home()
        pilot = bench.install(v1)
        env = bench.env(PILOT_MANIFEST_URL=site.manifest_url)
        bench.run([PY, str(pilot), "status"], env)
        bench.forget_extraction(site.archive)
        runs.append(bench.measured([PY, str(pilot), "self-update", "--no-restart", "--yes"], env))
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
                bench.run([PY, str(bench.install(v1)), "status"])  # v1's libraries unpacked
                downloads.append(bench.run([PY, "-c", DOWNLOAD_ONLY, big.artifact_url, str(size), sha256,
                                            str(scratch / "received"), site_packages]))
                (scratch / "received").unlink()
    update = median([u[0] for u in updates])
    download = median(downloads)
    if curls:
        curl = median(curls)
        rows.append(Row(f"`pilot self-update --no-restart --yes` {size / 1e6:.0f} MB / curl -o + sha256sum + cp",
                        secs(update), secs(curl), update / curl, "<= 1.3", update / curl <= 1.3,
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
        preflights.append(bench.run([PY, str(big.archive), "debug", "self-test"]))
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
    tmux.start(["sh", "-c", script, PY, str(pilot), "start", "--dashboard"],
               {k: env[k] for k in ("PILOT_HOME", "SHIV_ROOT", "HOME", "PILOT_MANIFEST_URL",
                                    "PILOT_FIRST_CHECK_DELAY", "PATH") if k in env})
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
               "big10": ("2.0.0", {"ballast_mb": 10}), "big100": ("2.0.0", {"ballast_mb": 100})}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two builds at a time
        futures = {name: pool.submit(archives.build, version, **extra) for name, (version, extra) in recipes.items()}
        built = {name: future.result() for name, future in futures.items()}
    archives.prune({path.parent.parent for path in built.values()})
    say(f"archives ready after {time.monotonic() - began:.0f} s")

    quick = args.quick
    rows: list[Row] = []
    breakdown: list[str] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="pilot-bench-") as temp:
        os.environ["TMUX_TMPDIR"] = temp  # tmux's socket too
        bench = Bench(Path(temp), archives)
        sites = {name: Site(bench, name, built[name]) for name in ("v2", "big10", "big100")}
        steps = [
            ("warm starts", lambda: warm_starts(bench, built["v1"], 10 if quick else 30)),
            ("cold start", lambda: cold_start(bench, built["v1"], 2 if quick else 3)),
            ("first start after a swap", lambda: first_start_after_swap(bench, built["v1"], sites["v2"],
                                                                         2 if quick else 4)),
            ("self-update of 100 MB", lambda: self_update_100(bench, built["v1"], sites["big100"], sites["big10"],
                                                              1 if quick else 3)),
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
        with contextlib.suppress(Exception):
            breakdown = where_the_time_goes(bench, built["v1"])
        for site in sites.values():
            site.close()
    print()
    print("Pilot benchmark" + (" (--quick)" if quick else ""), time.strftime("%Y-%m-%d %H:%M:%S"))
    for line in details:
        print(line)
    print()
    print_table(rows)
    if breakdown:
        print()
        print("Where warm starts go beyond `python -c pass` (in-process, best of 20; -X importtime inflates its own):")
        for line in breakdown:
            print(f"  - {line}")
    print()
    print(f"total run time: {time.monotonic() - began:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
