"""`pilot self-update`: check, download, verify, install, re-exec; plus --check, --status, --rollback.

Everything goes through the update engine's front door (pilot.update); this module only
turns the user's flags into calls and the results into lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pilot.buildinfo import current_build
from pilot.commands.ask import ask
from pilot.errors import UpdateError, UsageError
from pilot.launcher import handle_stop_signals, rollback_line, status_lines
from pilot.update import FileSource, open_updater, roll_back, take_notice, update_status


def run(args: argparse.Namespace) -> int:
    handle_stop_signals()  # SIGTERM/SIGHUP end an update like Ctrl-C: one line, nothing left beside the install
    if args.after_restart:
        return after_restart(args.json)
    if args.status:
        return show_status(args.json)
    if args.rollback:
        return rollback()
    updater = make_updater(args)
    if args.check:
        return check(updater, args)
    return update(updater, args)


def make_updater(args: argparse.Namespace):
    if not args.from_file:
        return open_updater(manifest_url=args.manifest_url, channel=args.channel)
    if not args.manifest:
        raise UsageError("--from-file needs --manifest DIR_OR_FILE (the signed manifest that lists the archive)")
    from pilot.config import load_config

    channel = args.channel or load_config().upgrade.channel
    manifest = locate_manifest(Path(args.manifest), channel)
    return open_updater(manifest_url=str(manifest), channel=channel,
                        fetcher=FileSource(manifest, Path(args.from_file)))


def locate_manifest(path: Path, channel: str) -> Path:
    if path.is_dir():
        for candidate in (path / channel / "manifest.json", path / "manifest.json"):
            if candidate.is_file():
                return candidate
        raise UsageError(f"no manifest.json in {path} or {path / channel}")
    if not path.is_file():
        raise UsageError(f"--manifest {path}: no such file or directory")
    return path


def check(updater, args: argparse.Namespace) -> int:
    result = updater.check(target=args.to)
    standing = result.standing
    info = {
        "current": str(result.current),
        "latest": str(result.latest) if result.latest else None,
        "update_available": result.update_available and str(result.version) != str(result.current),
        "version": str(result.version) if result.choice else None,
        "channel": result.manifest.channel,
        "serial": result.manifest.serial,
        "skipped_versions": [{"version": str(v), "reason": why} for v, why in result.skipped],
        # What the signed manifest says of the running version: below its minimum (required), yanked or halted.
        "required": standing.required,
        "min_supported_version": str(result.manifest.min_supported_version or "") or None,
        "yanked": standing.yanked,
        "yanked_reason": standing.reason,
        "halted": standing.halted,
        "standing": result.standing_line(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    elif info["update_available"]:
        print(f"update available: {result.current} -> {result.version} (run `pilot self-update`)")
    else:
        print(f"pilot {result.current} is up to date (latest on {result.manifest.channel}: {info['latest']})")
    report_skipped(result, standing=not args.json)  # --json carries the standing itself
    return 0


def report_skipped(result, *, standing: bool = True) -> None:
    """On stderr: what the manifest says of the running version, and the newer versions passed over."""
    if standing and result.standing_line():
        print(f"pilot: {result.standing_line()}", file=sys.stderr)
    for version, why in result.skipped:
        print(f"note: {version} {why} and is skipped; install it anyway with `pilot self-update --to {version}`",
              file=sys.stderr)


def update(updater, args: argparse.Namespace) -> int:
    from pilot.commands.progress import download_progress

    version = updater.build.version

    def confirm(result) -> None:
        back = result.version < result.current  # off a yanked or halted release, to the newest good one below it
        if line := result.standing_line():
            print(f"pilot: {line}", file=sys.stderr)
        ask(f"{'Move' if back else 'Update'} pilot {version} {'back ' if back else ''}to {result.version}?", args.yes,
            doing="updating")
        print(f"updating pilot {version} -> {result.version}", file=sys.stderr)

    def note(text: str) -> None:  # how the download went: "downloaded 21 KB of 14.6 MB (delta)"
        print(f"pilot: {text}", file=sys.stderr, flush=True)

    resume = ("self-update", "--after-restart", *(["--json"] if args.json else []))
    with download_progress("downloading") as progress:
        outcome = updater.update(args.to, confirm=confirm, progress=progress, restart=not args.no_restart,
                                 on_step=announce_step, on_note=note, resume_argv=resume)
    result = outcome.result
    if args.json:
        print(json.dumps({"done": outcome.done, "from_version": version,
                          "version": str(result.version or result.current), "install_path": str(updater.paths.install),
                          "download": outcome.download.as_json() if outcome.download else None}, indent=2))
    elif outcome.done == "up_to_date":
        print(f"pilot {version} is up to date (latest on {result.manifest.channel}: {result.latest})")
        report_skipped(result)
    elif outcome.done == "already_installed":
        print(f"pilot {version} is already installed at {updater.paths.install}; nothing to do")
    elif outcome.done == "installed":
        print(f"installed pilot {result.version} at {updater.paths.install} (backup: {updater.paths.backup}); "
              "it starts with your next command")
    return 0


def announce_step(step: str) -> None:
    if step != "downloading":  # the progress bar shows that one
        print(f"{step}...", file=sys.stderr, flush=True)


def after_restart(as_json: bool = False) -> int:
    """The first command a new version runs after self-update's exec. The CLI has committed its boot
    already (once the arguments were parsed), so a line that cannot be written changes nothing."""
    build = current_build()
    version = build.version if build else "?"
    take_notice()  # told now, as it happened
    last = update_status()
    if as_json:
        updated = last["state"] == "committed" and last["to_version"] == version
        print(json.dumps({"done": "updated" if updated else last["state"], "from_version": last["from_version"],
                          "version": version, "install_path": last["install_path"],
                          "download": last.get("download"), "reason": last["reason"]}, indent=2))
        return 0 if last["state"] != "rolled_back" else UpdateError.exit_code
    if last["state"] == "rolled_back":
        print(f"pilot: rolled back to {version}: {last['reason']}", file=sys.stderr)
        return UpdateError.exit_code
    if last["state"] == "committed" and last["to_version"] == version:
        print(f"pilot {version} (updated from {last['from_version']})", flush=True)
        return 0
    print(f"pilot {version}")
    return 0


def rollback() -> int:
    """Inside an archive the entry module answers `--rollback` itself; here for the refusal outside one."""
    installed, kept = roll_back()
    print(rollback_line(installed, kept, str(current_build().archive)))
    return 0


def show_status(as_json: bool) -> int:
    info = update_status()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(status_lines(info)))
    return 0
