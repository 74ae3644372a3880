"""benchmarks/run.py's check of what a baseline interpreter imports at start: a .pth file that imports makes
every ratio against that interpreter look better than it is, and the benchmark must say so."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.support.archives import REPO


@pytest.fixture(scope="module")
def bench_module():
    spec = importlib.util.spec_from_file_location("pilot_benchmark_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    writes_bytecode = sys.dont_write_bytecode  # the benchmark turns bytecode off for its own process
    sys.modules[spec.name] = module  # dataclasses look their module up while the classes are made
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
        del sys.modules[spec.name]
    return module


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3.*/site-packages")
    return found


def test_a_venv_made_without_pip_imports_nothing_beyond_site(bench_module, tmp_path):
    venv = bench_module.make_venv(tmp_path / "clean")
    found = bench_module.startup_imports(venv / "bin" / "python", clean_env())
    assert (found.extras, found.pth) == ([], [])
    assert found.summary().startswith("imports nothing at start beyond site's own")


def test_a_pth_file_that_imports_is_named_with_what_it_imports(bench_module, tmp_path):
    venv = bench_module.make_venv(tmp_path / "dirty")
    pth = site_packages(venv) / "zz-slow.pth"
    pth.write_text("import json\n")
    found = bench_module.startup_imports(venv / "bin" / "python", clean_env())
    assert "json" in found.extras and "json.decoder" in found.extras
    assert found.pth == [str(pth)]
    assert "json" in found.summary() and str(pth) in found.summary()


def test_a_pth_file_of_paths_only_imports_nothing(bench_module, tmp_path):
    venv = bench_module.make_venv(tmp_path / "paths")
    (tmp_path / "elsewhere").mkdir()
    (site_packages(venv) / "paths.pth").write_text(f"{tmp_path / 'elsewhere'}\n")
    found = bench_module.startup_imports(venv / "bin" / "python", clean_env())
    assert (found.extras, found.pth) == ([], [])
