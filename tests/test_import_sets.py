"""What the commands people run all day import, held to a list: a new import on a hot path fails here,
not in a benchmark months later.

Each command runs from the source tree as `python -m pilot ...` would run it, under a small wrapper
that writes `sys.modules` at exit. (`-X importtime` alone cannot be the record: it does not see a
module loaded through importlib.import_module, which is how pilot.cli loads a command; it runs too,
only to say which module first imported an unexpected one.) What the bare interpreter and runpy load
(the baseline) is not counted. For each command the test asserts that

  - no FORBIDDEN module is loaded: each costs milliseconds on every run, and has a cheaper stand-in;
  - the modules loaded are exactly the expected ones: Pilot's own listed one by one, the standard
    library's as the roots Pilot's code imports, expanded to everything those import on this Python.

Every home is tried as a user's is, more than once: without and with a config.yaml, and after an
update (update/state.json there, nothing left to tell), when every command looks for a notice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "dataclasses": "imports inspect (~7 ms with ast, dis, tokenize): pilot.records.Record is the cheap value",
    "inspect": "~5 ms of imports (ast, dis, tokenize, linecache)",
    "typing": "~2 ms; annotations are strings here, and `TYPE_CHECKING = False` stands in for typing's",
    "shutil": "~2 ms with bz2, lzma and fnmatch; argparse's reason, the terminal width: pilot.cli.terminal_width",
    "signal": "import it where a signal is sent or handled (pilot.cli does, for an interrupted command)",
    "pathlib": "~3.5 ms with urllib and ipaddress: os.path does for these paths",
    "urllib": "pathlib's and the network code's: neither belongs on this path",
    "ipaddress": "urllib.parse's: see pathlib",
    "yaml": "~12 ms: config.yaml is parsed only when it changed (pilot.commands.config_cache)",
    "pilot.config": "the full reading of the configuration (dataclasses, yaml): only when config.yaml changed",
    "pilot.update": "the update engine; `pilot status` reads the update state through pilot.launcher.status_report",
    "hashlib": "~3 ms loading OpenSSL: pilot.commands.config_cache takes BLAKE2 from _blake2",
    "logging": "the daemon's",
    "subprocess": "the daemon's",
}

# Imported by every command: the package, its entry, and argparse (gettext looks up locale and errno for
# every help text it translates, even when none is shown).
CORE = ("pilot", "pilot.buildinfo", "pilot.cli", "pilot.errors", "pilot.launcher")
CORE_STDLIB = ("__future__", "argparse", "errno", "locale")
# The store and the configuration check of the task commands and status.
STORE = ("pilot.commands", "pilot.commands.config_cache", "pilot.commands.tasks", "pilot.records", "pilot.state",
         "pilot.state.db", "pilot.state.models", "pilot.state.store")
STORE_STDLIB = ("_blake2", "datetime", "json", "sqlite3")
STATUS = (*STORE, "pilot.daemon", "pilot.daemon.lock")

# command line -> (Pilot's modules, the standard library's roots)
EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "--version": (CORE, CORE_STDLIB),
    "--help": (CORE, (*CORE_STDLIB, "textwrap")),  # argparse wraps the help text with textwrap
    "status": ((*CORE, *STATUS), (*CORE_STDLIB, *STORE_STDLIB, "fcntl")),
    "status --json": ((*CORE, *STATUS), (*CORE_STDLIB, *STORE_STDLIB, "fcntl")),
    "task list": ((*CORE, *STORE), (*CORE_STDLIB, *STORE_STDLIB)),
    "task add TITLE -- cmd": ((*CORE, *STORE), (*CORE_STDLIB, *STORE_STDLIB)),
}

# `python -c WRAPPER run ARGS...` runs pilot as `python -m pilot ARGS...` does; `python -c WRAPPER import a,b`
# imports those. Either way sys.modules goes to $IMPORT_SET_OUT at exit. runpy first, as under -m.
WRAPPER = """\
import atexit, os, runpy, sys

def dump():
    with open(os.environ["IMPORT_SET_OUT"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))

atexit.register(dump)
mode, rest = sys.argv[1], sys.argv[2:]
if mode == "run":
    sys.argv[1:] = rest
    runpy.run_module("pilot", run_name="__main__", alter_sys=True)
else:
    for name in filter(None, rest[0].split(",")):
        __import__(name)
"""


class Interpreter:
    """Runs the wrapper in a clean environment; remembers what the baseline and each set of roots load."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp / "user-home"),
                    "SHIV_ROOT": str(tmp / "shiv-root")}
        self.closures: dict[tuple[str, ...], set[str]] = {}
        self.baseline = self.modules("import", "")[0]

    def modules(self, *args: str, home: Path | None = None) -> tuple[set[str], list[tuple[int, str]]]:
        """(sys.modules at exit, the -X importtime tree as (depth, module) lines) of one run."""
        out = self.tmp / "modules.txt"
        env = {**self.env, "IMPORT_SET_OUT": str(out), "PILOT_HOME": str(home or self.tmp / "unused-home")}
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", WRAPPER, *args], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr
        return set(out.read_text().split("\n")), importtime_tree(result.stderr)

    def closure(self, roots: tuple[str, ...]) -> set[str]:
        if roots not in self.closures:
            self.closures[roots] = self.modules("import", ",".join(roots))[0] - self.baseline
        return self.closures[roots]


def importtime_tree(stderr: str) -> list[tuple[int, str]]:
    lines = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            field = line.rsplit("|", 1)[1]
            lines.append(((len(field) - len(field.lstrip())) // 2, field.strip()))
    return lines


def importer_of(tree: list[tuple[int, str]], name: str) -> str:
    for index, (depth, module) in enumerate(tree):
        if module == name:
            parent = next((m for d, m in tree[index + 1:] if d < depth), None)
            return f"{name} (first imported by {parent})" if parent else \
                f"{name} (imported by a function, or by a module that importlib loaded, like a command's)"
    return name


def forbidden_reason(module: str) -> str | None:
    return next((why for name, why in FORBIDDEN.items() if module == name or module.startswith(name + ".")), None)


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory) -> Interpreter:
    return Interpreter(tmp_path_factory.mktemp("import-sets"))


@pytest.fixture(scope="module", params=["no config.yaml", "config.yaml", "after an update"])
def home(request, interpreter) -> Path:
    """A PILOT_HOME with a database in it (and a config.yaml, or the state an update leaves), used once
    already, as every home but the first is."""
    home = interpreter.tmp / request.param.replace(" ", "-")
    home.mkdir()
    if request.param == "config.yaml":
        (home / "config.yaml").write_text("upgrade:\n  auto_check: false\ndaemon:\n  concurrency: 2\n")
    if request.param == "after an update":
        (home / "update").mkdir()
        (home / "update" / "state.json").write_text('{"highest_serial": 4, "notice_pending": false, "last": '
                                                    '{"state": "committed", "from_version": "1.0.0", '
                                                    '"to_version": "1.1.0"}}\n')
    interpreter.modules("run", "task", "add", "first", "--", "true", home=home)
    return home


@pytest.mark.parametrize("command", EXPECTED)
def test_a_hot_command_imports_exactly_its_list(command, home, interpreter):
    args = command.replace("TITLE", "a-title").split()
    loaded, tree = interpreter.modules("run", *args, home=home)
    ours = loaded - interpreter.baseline
    pilot_modules, stdlib_roots = EXPECTED[command]
    expected = set(pilot_modules) | interpreter.closure(stdlib_roots)

    forbidden = sorted(f"{importer_of(tree, m)}: {forbidden_reason(m)}" for m in ours if forbidden_reason(m))
    assert not forbidden, f"`pilot {command}` imports what its path must not:\n  " + "\n  ".join(forbidden)
    unexpected = sorted(importer_of(tree, m) for m in ours - expected)
    missing = sorted(expected - ours)
    assert not unexpected and not missing, (
        f"`pilot {command}` imports {', '.join(unexpected) or 'nothing new'}"
        f"{'; no longer imports ' + ', '.join(missing) if missing else ''}. Each import on this path costs every "
        "run: import it where it is used instead, or, when it belongs here, change EXPECTED in "
        "tests/test_import_sets.py (Pilot's modules by name, the standard library's by the root Pilot imports).")


# The first start after `self-update --no-restart` settles the new version's trial: the update engine's front
# door, the sentinel and the state, built on pilot.records, but still none of the forbidden modules.
FIRST_START = ("pilot.update", "pilot.update.sentinel", "pilot.update.state")


def test_the_first_start_after_an_update_settles_its_trial_without_the_heavy_modules(interpreter, tmp_path):
    home = tmp_path / "home"
    (home / "update").mkdir(parents=True)
    interpreter.modules("run", "task", "add", "first", "--", "true", home=home)
    (home / "update" / "trial.json").write_text('{"from_version": "1.0.0", "to_version": "2.0.0", "pid": null}\n')
    loaded, tree = interpreter.modules("run", "status", home=home)
    ours = loaded - interpreter.baseline
    forbidden = sorted(f"{importer_of(tree, m)}: {forbidden_reason(m)}" for m in ours
                       if forbidden_reason(m) and not m.startswith(FIRST_START))
    assert not forbidden, "the first start after an update imports what it must not:\n  " + "\n  ".join(forbidden)
    pilot_modules, stdlib_roots = EXPECTED["status"]
    expected = set(pilot_modules) | set(FIRST_START) | interpreter.closure(stdlib_roots)
    assert sorted(ours - expected) == [] and sorted(expected - ours) == []


def test_the_config_cache_keeps_yaml_off_the_path_only_while_the_file_is_unchanged(interpreter, tmp_path):
    """The list above holds for a config.yaml already read; a changed one is read in full, with yaml."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("daemon:\n  concurrency: 2\n")
    first, _ = interpreter.modules("run", "status", home=home)
    second, _ = interpreter.modules("run", "status", home=home)
    (home / "config.yaml").write_text("daemon:\n  concurrency: 3\n")
    changed, _ = interpreter.modules("run", "status", home=home)
    assert ("yaml" in first, "yaml" in second, "yaml" in changed) == (True, False, True)
