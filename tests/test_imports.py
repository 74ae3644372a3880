"""The shape of the import graph: no cycles, a stdlib-only entry module, one front door to the update engine."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pilot"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines under `if TYPE_CHECKING:`: imports for type hints only, never run."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str) -> set[str]:
    """Every pilot module `name` imports, at the top or inside a function (a lazy import is still an arrow)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_import_graph_has_no_cycles():
    """Each module can be understood from the ones below it: no two modules import each other, at any depth."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append([*trail[trail.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_entry_module_imports_nothing_but_the_standard_library():
    """It runs before the application is on sys.path, and must be able to say "wrong interpreter" anywhere."""
    tree = ast.parse((PACKAGE / "launcher.py").read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    python2_only = {"thread"}  # the fallback import that lets Python 2 be told it is the wrong interpreter
    assert names - python2_only <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    assert GRAPH["pilot.launcher"] == set()


def test_the_entry_point_is_the_build_s_stamped_data_not_an_import():
    text = (PACKAGE / "launcher.py").read_text()
    assert "pilot.cli" not in {alias.name for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ImportFrom)
                               for alias in node.names} and "from pilot" not in text
    assert '"entry_point": ENTRY_POINT' in (REPO / "build" / "build.py").read_text()


def test_commands_the_daemon_and_the_dashboard_reach_the_engine_only_through_its_front_door():
    callers = [name for name in MODULES if name.startswith(("pilot.commands", "pilot.daemon", "pilot.dashboard"))
               and name != "pilot.commands.debug"]  # the self-test imports every module on purpose
    reaching_in = {name: sorted(m for m in GRAPH[name] if m.startswith("pilot.update.")) for name in callers}
    assert {name: parts for name, parts in reaching_in.items() if parts} == {}
