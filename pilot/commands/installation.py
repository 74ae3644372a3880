"""`pilot install [--dir DIR]` and `pilot uninstall [--purge]`."""

from __future__ import annotations

import argparse
import json

from pilot.buildinfo import BuildInfo, current_build, install_method
from pilot.commands.ask import ask
from pilot.errors import UsageError


def running_archive(command: str) -> BuildInfo:
    build = current_build()
    if build is None:
        raise UsageError(f"pilot {command} works on the downloaded archive (pilot-VERSION-PLATFORM.pyz), and this "
                         f"Pilot runs from a {install_method()} install",
                         hint=f"use the tool that installed it, e.g. pip, to {command} it")
    return build


def install(args: argparse.Namespace) -> int:
    from pilot.update import install_copy, path_hint

    placed = install_copy(running_archive("install"), args.dir)
    if args.json:
        print(json.dumps({**placed.as_json(), "path_hint": None if placed.on_path else path_hint(placed.path.parent)},
                         indent=2))
        return 0
    if not placed.changed:
        print(f"pilot {placed.version} is installed at {placed.path} already")
    elif placed.replaced:
        print(f"installed pilot {placed.version} at {placed.path} (it replaced {placed.replaced}, kept as "
              f"{placed.path.name}.backup)")
    else:
        print(f"installed pilot {placed.version} at {placed.path}")
    if not placed.on_path:
        print(f"{placed.path.parent} is not on your PATH; to add it, run:\n  {path_hint(placed.path.parent)}\n"
              f"then open a new terminal (meanwhile, run it as {placed.path})")
    elif placed.found_first is not None:
        print(f"note: `pilot` on your PATH is {placed.found_first}, which comes before {placed.path.parent}")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    from pilot.daemon.lock import running_daemon
    from pilot.launcher import pilot_home
    from pilot.update import plan_removal, remove

    build = running_archive("uninstall")
    daemon = running_daemon(pilot_home())
    if daemon is not None:
        raise UsageError(f"the Pilot daemon runs (pid {daemon[0]})", hint="stop it first: pilot stop --wait")
    removal = plan_removal(build, args.purge)
    what = f"{removal.install}, its backup and unpacked copies" if len(removal.files) > 1 else \
        f"{removal.install} and its unpacked copies"
    if removal.home is not None:
        what += f", and {removal.home} (every task, its output and history)"
    ask(f"Remove {what}?", args.yes, doing="removing Pilot")
    remove(removal)
    if args.json:
        print(json.dumps(removal.as_json(), indent=2))
        return 0
    copies = sum(1 for path in removal.extractions if path.name.startswith("pilot_"))
    print(f"removed pilot {build.version}: {', '.join(str(path) for path in removal.files)} and {copies} unpacked "
          f"cop{'y' if copies == 1 else 'ies'}{' and ' + str(removal.home) if removal.home else ''}")
    if removal.kept_home is not None:
        print(f"kept {removal.kept_home} (tasks and history); to remove it too: rm -r {removal.kept_home}")
    return 0

