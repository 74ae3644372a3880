"""`pilot debug ...`: diagnostics. `self-test` is what the updater runs on a new archive before the swap."""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import os
import pkgutil
from pathlib import Path

import pilot
from pilot.buildinfo import current_build, current_version
from pilot.launcher import SELF_TEST_DASHBOARD_ENV, unpacked_here

DASHBOARD_PACKAGE = "pilot.dashboard"


def self_test(args: argparse.Namespace) -> int:
    """Import Pilot's modules and load every native library; answer with this build's identity.

    The dashboard (Textual: ~0.3 s) is imported only for an install whose dashboard has run: the
    updater says so in the environment. Everything else a first start can import is imported."""
    with_dashboard = bool(os.environ.get(SELF_TEST_DASHBOARD_ENV))
    modules = pilot_modules(skip=() if with_dashboard else (DASHBOARD_PACKAGE,))
    for name in modules:
        importlib.import_module(name)
    native = native_modules() if current_build() is not None else []
    for name in native:
        importlib.import_module(name)
    import urllib3  # imported lazily by the update code: a new version that lacks it could not update again
    import yaml
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"self-test"), b"self-test")  # exercises the native backend
    yaml.safe_load("ok: true")
    urllib3.PoolManager().clear()
    build = current_build()
    print(json.dumps({
        "version": current_version(), "build_id": build.build_id if build else None, "modules": len(modules),
        "native": native, "dashboard": with_dashboard,
    }))
    return 0


def pilot_modules(skip: tuple[str, ...] = ()) -> list[str]:
    """Every module of the pilot package but `pilot.__main__` and the packages in skip, found without
    importing anything (pkgutil.walk_packages imports each package to look inside it)."""
    found: list[str] = []

    def walk(directory: str, prefix: str) -> None:
        for info in pkgutil.iter_modules([directory], prefix):
            if info.name in skip or info.name == "pilot.__main__":
                continue
            found.append(info.name)
            if info.ispkg:
                walk(os.path.join(directory, info.name.rpartition(".")[2]), info.name + ".")

    walk(pilot.__path__[0], "pilot.")
    return found


def native_modules() -> list[str]:
    """The extension modules in the archive's site-packages, as importable names: loading each proves the
    archive's native code suits this machine (a wrong platform or libc fails here, before the swap). Another
    interpreter's extension modules, unpacked beside these by that interpreter, are not this one's to load."""
    site_packages = Path(pilot.__file__).resolve().parents[1]
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    names = []
    for path in sorted(site_packages.rglob("*")):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is not None and path.is_file() and unpacked_here(path.name):
            parts = path.relative_to(site_packages).parts
            names.append(".".join((*parts[:-1], path.name[:-len(suffix)])))
    return names


def failpoints(args: argparse.Namespace) -> int:
    """One name per line, in the order an update and a boot reach them."""
    from pilot.launcher import FAILPOINTS

    print("\n".join(FAILPOINTS))
    return 0
