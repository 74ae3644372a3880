"""`pilot version [--json]`."""

from __future__ import annotations

import argparse
import json
import sys

from pilot.buildinfo import build_data, current_build, current_version, install_method, platform_tag, python_tag
from pilot.launcher import build_pythons


def describe() -> dict:
    build = current_build()
    return {
        "version": current_version(),
        "python": python_tag(),
        "supported_pythons": build_pythons(build_data()) if build else None,  # those this archive runs under
        "platform": platform_tag(),
        "archive": str(build.archive) if build else None,
        "install_method": install_method(),
        "build_id": build.build_id if build else None,
        "interpreter": sys.executable,
    }


def run(args: argparse.Namespace) -> int:
    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:15} {value if value is not None else '-'}")
    return 0
