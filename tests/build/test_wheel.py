"""A pip, pipx or uv install of the package: the wheel carries what the archive carries, installs with its
dependencies and runs, dashboard included.

The slow tests build the wheel once per session from a copy of the source (pyproject.toml, setup.py and
pilot/, without the schema copy a checkout may hold), install it with its dependencies into a fresh venv
at the path pipx gives its venvs, and run the installed `pilot` script there, far from the checkout.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pilot import buildinfo
from pilot.update.updater import refusal_for_install_method
from tests.support.archives import REPO
from tests.support.tmux import Tmux

SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md", "manifest.schema.json")  # what the build reads
NOT_PACKAGED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".DS_Store")
SCHEMA_COPY = "pilot/update/manifest.schema.json"  # made by setup.py's build_py, not kept in git
VERSION = buildinfo.SOURCE_VERSION
PIP_TIMEOUT = 540  # the first slow test builds, makes a venv and installs: each has timeout(600)


def run(*command: str | Path, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def pip_succeeded_or_skip(result: subprocess.CompletedProcess, what: str, scratch: Path) -> None:
    """A pip step that failed because the package index cannot be reached skips; any other failure fails."""
    if result.returncode == 0:
        return
    probe = run(sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--quiet",
                "--dest", scratch / "probe", "packaging", cwd=scratch, timeout=PIP_TIMEOUT)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"{what} needs the package index, which is unreachable: {last}")
    pytest.fail(f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")


def archive_files(root: Path) -> set[str]:
    """What build/build.py copies from pilot/ into the archive: every file but caches and bytecode."""
    return {
        path.relative_to(root).as_posix() for path in (root / "pilot").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
        and path.name != ".DS_Store"
    }


# --- what the package declares (fast) --------------------------------------------------------------


def declared_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(req.name): req for req in map(Requirement, project["dependencies"])}


def fallback_imports(tree: ast.AST) -> set[ast.AST]:
    """The imports in an `except ImportError:` branch (the launcher's Python 2 names): never run on 3."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name) and node.type.id in (
                "ImportError", "ModuleNotFoundError"):
            found.update(n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
    return found


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the pilot/ files that import it, lazy imports included."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "pilot").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fallbacks = fallback_imports(tree)
        for node in ast.walk(tree):
            if node in fallbacks:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("pilot", "__future__"):
                    found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


def test_pyproject_declares_every_package_pilot_imports():
    distributions = importlib.metadata.packages_distributions()
    needed: dict[str, str] = {}
    for module, files in third_party_imports().items():
        owners = distributions.get(module)
        assert owners, f"`import {module}` ({', '.join(sorted(files))}) comes from no installed distribution"
        for owner in owners:
            needed[canonicalize_name(owner)] = f"`import {module}` in {', '.join(sorted(files))}"
    undeclared = {name: why for name, why in needed.items() if name not in declared_dependencies()}
    assert undeclared == {}, "pyproject.toml's dependencies lack these"


def test_pyproject_and_the_archive_ship_the_same_packages_in_versions_the_lock_satisfies():
    runtime_in = {
        canonicalize_name(line.partition("#")[0].strip())
        for line in (REPO / "build" / "runtime.in").read_text(encoding="utf-8").splitlines()
        if line.partition("#")[0].strip()
    }
    lock = {
        canonicalize_name(match[1]): Version(match[2])
        for match in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", (REPO / "build" / "requirements.lock").read_text(),
                                 re.MULTILINE)
    }
    declared = declared_dependencies()
    assert set(declared) == runtime_in
    unsatisfied = {name: f"{req.specifier} but the lock pins {lock.get(name)}" for name, req in declared.items()
                   if name not in lock or not req.specifier.contains(lock[name], prereleases=True)}
    assert unsatisfied == {}
    assert all(req.specifier for req in declared.values()), "every dependency has a lower bound"


@pytest.mark.parametrize(("prefix", "method"), [
    ("/home/ada/.local/pipx/venvs/pilot", "pipx"),
    ("/home/ada/.local/share/pipx/venvs/pilot", "pipx"),
    ("/home/ada/.local/share/uv/tools/pilot", "uv"),
    ("/opt/homebrew/Cellar/pilot/1.0.0/libexec", "homebrew"),
    ("/usr/local/Cellar/pilot/1.0.0/libexec", "homebrew"),
    ("/home/ada/venvs/work", "pip"),
    ("/usr", "pip"),
])
def test_install_method_is_read_from_the_prefix_of_an_installed_package(prefix, method, monkeypatch):
    monkeypatch.setattr(buildinfo, "__file__", f"{prefix}/lib/python3.11/site-packages/pilot/buildinfo.py")
    monkeypatch.setattr(sys, "prefix", prefix)
    assert buildinfo.install_method() == method


@pytest.mark.parametrize(("method", "command"), [
    ("pip", "pip install --upgrade pilot"),
    ("pipx", "pipx upgrade pilot"),
    ("uv", "uv tool upgrade pilot"),
    ("homebrew", "brew upgrade pilot"),
])
def test_self_update_names_the_command_that_updates_each_install(method, command):
    refusal = refusal_for_install_method(method)
    assert refusal is not None and refusal.exit_code == 3
    assert refusal.one_line() == f"Pilot was installed with {method}, which owns its files (update with: {command})"


def test_self_update_refuses_no_archive():
    assert refusal_for_install_method("pyz") is None


# --- the wheel, installed the way pipx installs it (slow) ------------------------------------------


@pytest.fixture(scope="session")
def wheel_source(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("wheel-source")
    shutil.copytree(REPO / "pilot", source / "pilot", ignore=NOT_PACKAGED)
    (source / SCHEMA_COPY).unlink(missing_ok=True)  # the copy a checkout may have: the wheel must make its own
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, source / name)
    return source


@pytest.fixture(scope="session")
def wheel(wheel_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out / "dist", wheel_source,
                 cwd=out, timeout=PIP_TIMEOUT)
    pip_succeeded_or_skip(result, "building the wheel", out)
    (built,) = (out / "dist").glob("pilot-*.whl")
    return built


@pytest.fixture(scope="session")
def pipx_venv(wheel, tmp_path_factory) -> Path:
    """pipx's layout: ~/.local/share/pipx/venvs/pilot, the wheel and its dependencies from the index."""
    home = tmp_path_factory.mktemp("pipx-home")
    venv = home / "pipx" / "venvs" / "pilot"
    made = run(sys.executable, "-m", "venv", venv, cwd=home)
    assert made.returncode == 0, made.stderr
    result = run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=home, timeout=PIP_TIMEOUT)
    pip_succeeded_or_skip(result, "installing the wheel with its dependencies", home)
    return venv


@pytest.fixture
def installed_env(isolated_home) -> dict[str, str]:
    """The environment the installed script runs in: an isolated PILOT_HOME, nothing pointing at the checkout."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("PILOT_")}
    env["PILOT_HOME"] = str(isolated_home)
    return env


@pytest.fixture
def pilot(pipx_venv, installed_env, tmp_path):
    """Run the installed console script from a directory far from the checkout."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()

    def run_pilot(*args: str) -> subprocess.CompletedProcess:
        return run(pipx_venv / "bin" / "pilot", *args, cwd=workdir, env=installed_env)

    return run_pilot


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3.*/site-packages")
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_carries_every_file_the_archive_carries_and_the_published_schema(wheel, wheel_source):
    with zipfile.ZipFile(wheel) as zf:
        carried = {name for name in zf.namelist() if name.startswith("pilot/")}
        schema = zf.read(SCHEMA_COPY)
        metadata = zf.read(f"pilot-{VERSION}.dist-info/METADATA").decode()
    assert "pilot/dashboard/pilot.tcss" in carried
    assert carried == archive_files(wheel_source) | {SCHEMA_COPY}
    assert schema == (REPO / "manifest.schema.json").read_bytes()
    requires = {canonicalize_name(Requirement(line.removeprefix("Requires-Dist: ")).name)
                for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    assert requires == set(declared_dependencies())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_installed_script_runs_from_the_venv_and_knows_it_is_a_pipx_install(pilot, pipx_venv):
    result = pilot("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"pilot {VERSION}\n", "")

    result = pilot("version", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["install_method"], info["archive"], info["version"]) == ("pipx", None, VERSION)
    assert info["interpreter"] == str(pipx_venv / "bin" / "python")

    result = pilot("debug", "self-test")  # imports every module: each dependency is installed
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == VERSION


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_and_the_update_state_answer(pilot):
    result = pilot("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"pilot {VERSION}, daemon not running (start it: pilot start)"

    result = pilot("self-update", "--status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "none"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_self_update_refuses_in_one_line_naming_pipx_upgrade(pilot):
    result = pilot("self-update", "--yes")
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == ("pilot: Pilot was installed with pipx, which owns its files "
                             "(update with: pipx upgrade pilot)\n")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_installed_package_validates_manifests_with_the_published_schema(pipx_venv, installed_env, tmp_path):
    """Outside a checkout there is no top-level schema to fall back on: the package's copy is the one read."""
    script = (
        "import json\n"
        "from pilot.errors import ManifestError\n"
        "from pilot.update import schema\n"
        "from pilot.update.manifest import parse_manifest, parse_version\n"
        "parse_version('1.2.3')\n"
        "try:\n"
        "    parse_manifest(b'{}')\n"
        "except ManifestError as error:\n"
        "    refused = str(error)\n"
        "print(json.dumps({'schema': str(schema.SCHEMA_PATH), 'fallback': schema.SOURCE_SCHEMA_PATH.exists(),\n"
        "                  'refused': refused}))\n"
    )
    result = run(pipx_venv / "bin" / "python", "-I", "-c", script, cwd=tmp_path, env=installed_env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["schema"] == str(site_packages(pipx_venv) / SCHEMA_COPY)
    assert answer["fallback"] is False
    assert Path(answer["schema"]).read_bytes() == (REPO / "manifest.schema.json").read_bytes()
    assert "manifest" in answer["refused"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_dashboard_mounts_with_its_stylesheet_under_textual_headless(pipx_venv, installed_env, tmp_path):
    script = (
        "import asyncio, json\n"
        "from pilot.daemon.runtime import Runtime\n"
        "from pilot.dashboard.app import PilotApp\n"
        "from pilot.dashboard.widgets import Logo, Metrics\n"
        "async def main():\n"
        "    runtime = Runtime.open()\n"
        "    app = PilotApp(runtime)\n"
        "    try:\n"
        "        async with app.run_test(size=(100, 30)) as driver:\n"
        "            await driver.pause()\n"
        "            seen = {'css': str(PilotApp.CSS_PATH), 'logo': str(app.query_one(Logo).render()),\n"
        "                    'border': app.query_one(Metrics).styles.border_top[0]}\n"
        "            await driver.press('q')\n"
        "        seen['exited'] = app.return_code\n"
        "    finally:\n"
        "        runtime.close()\n"
        "    return seen\n"
        "print(json.dumps(asyncio.run(main())))\n"
    )
    result = run(pipx_venv / "bin" / "python", "-I", "-c", script, cwd=tmp_path, env=installed_env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["css"] == str(site_packages(pipx_venv) / "pilot" / "dashboard" / "pilot.tcss")
    assert f"v{VERSION}" in seen["logo"]
    assert seen["border"] == "round"  # set by pilot.tcss alone
    assert seen["exited"] == 0


def exit_status(terminal: Tmux, timeout: float = 20) -> str | None:
    """The pane's exit status once its program has ended (tmux reaps it a moment after the pane reads EOF)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = terminal._tmux("display-message", "-p", "-t", terminal.session, "#{pane_dead_status}").strip()
        if terminal.pane_dead() and status:
            return status
        time.sleep(0.2)
    return None


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_pilot_start_dashboard_renders_in_a_real_terminal_and_quits_on_q(pipx_venv, installed_env):
    terminal = Tmux()
    try:
        # env -u: the tmux server has the test run's environment; the installed script must not see the checkout.
        terminal.start(["env", "-u", "PYTHONPATH", "-u", "PYTHONHOME", str(pipx_venv / "bin" / "pilot"), "start",
                        "--dashboard"], installed_env)
        screen = terminal.wait_for(f"v{VERSION}", "METRICS", "TASKS", "q Quit")
        assert f"pid {terminal.pane_pid()}" in screen
        assert "╭" in screen  # the round borders pilot.tcss gives the panels
        terminal.send("q")
        assert exit_status(terminal) == "0", terminal.screen()
    finally:
        terminal.close()
