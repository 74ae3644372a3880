"""`pilot debug ...`: diagnostics. `self-test` is what the updater runs on a new archive before the swap."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil

import pilot
from pilot.buildinfo import current_build, current_version


def self_test(args: argparse.Namespace) -> int:
    """Import every Pilot module and the native libraries; answer with this build's identity."""
    modules = [name for _, name, _ in pkgutil.walk_packages(pilot.__path__, "pilot.") if name != "pilot.__main__"]
    for name in modules:
        importlib.import_module(name)
    import yaml
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"self-test"), b"self-test")  # exercises the native backend
    yaml.safe_load("ok: true")
    build = current_build()
    print(json.dumps({
        "version": current_version(), "build_id": build.build_id if build else None, "modules": len(modules),
    }))
    return 0


def failpoints(args: argparse.Namespace) -> int:
    """One name per line, in the order an update and a boot reach them."""
    from pilot.launcher import FAILPOINTS

    print("\n".join(FAILPOINTS))
    return 0
