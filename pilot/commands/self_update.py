"""`pilot self-update`: check, download, verify, install, re-exec; plus --check, --status, --rollback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from packaging.version import Version

from pilot.buildinfo import BuildInfo, current_build, install_method
from pilot.config import load_config
from pilot.errors import EXIT_UPDATE, ConfigError, PilotError, UpdateError, UsageError
from pilot.update import sentinel
from pilot.update.manifest import parse_version


def run(args: argparse.Namespace) -> int:
    if args.after_restart:
        return after_restart()
    if args.status:
        return show_status(args.json)
    build = require_archive()
    if args.rollback:
        return roll_back(build)
    updater = make_updater(build, args)
    if args.check:
        return check(updater, args)
    return update(updater, build, args)


def require_archive() -> BuildInfo:
    from pilot.update.updater import refusal_for_install_method

    refusal = refusal_for_install_method(install_method())
    build = current_build()
    if refusal is not None or build is None:
        raise refusal or UpdateError("self-update works only on the Pilot .pyz archive")
    return build


def make_updater(build: BuildInfo, args: argparse.Namespace):
    from pilot.update.updater import FileSource, Updater

    config = load_config().with_upgrade(channel=args.channel)
    if args.from_file:
        if not args.manifest:
            raise UsageError("--from-file needs --manifest DIR_OR_FILE (the signed manifest that lists the archive)")
        manifest = locate_manifest(Path(args.manifest), config.upgrade.channel)
        return Updater(build=build, config=config, fetcher=FileSource(manifest, Path(args.from_file)),
                       manifest_url=str(manifest))
    url = args.manifest_url or config.upgrade.manifest_url
    if not url:
        raise ConfigError("no manifest URL is configured",
                          hint=f"set upgrade.manifest_url in {config.config_file}, or PILOT_MANIFEST_URL")
    from pilot.update.fetch import HttpFetcher

    return Updater(build=build, config=config, fetcher=HttpFetcher(), manifest_url=url)


def locate_manifest(path: Path, channel: str) -> Path:
    if path.is_dir():
        for candidate in (path / channel / "manifest.json", path / "manifest.json"):
            if candidate.is_file():
                return candidate
        raise UsageError(f"no manifest.json in {path} or {path / channel}")
    return path


def check(updater, args: argparse.Namespace) -> int:
    result = updater.check(target=parse_target(args.to))
    info = {
        "current": str(result.current),
        "latest": str(result.latest) if result.latest else None,
        "update_available": result.update_available,
        "version": str(result.choice.release.version) if result.choice else None,
        "channel": result.manifest.channel,
        "serial": result.manifest.serial,
        "skipped_bad_versions": [str(v) for v in result.skipped_bad],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    elif result.choice:
        print(f"update available: {result.current} -> {result.choice.release.version} (run `pilot self-update`)")
    else:
        print(f"pilot {result.current} is up to date (latest on {result.manifest.channel}: {info['latest']})")
    report_skipped(result)
    return 0


def report_skipped(result) -> None:
    for version in result.skipped_bad:
        print(f"note: {version} failed to start here before and is skipped; "
              f"install it anyway with `pilot self-update --to {version}`", file=sys.stderr)


def parse_target(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return parse_version(text, "--to")
    except PilotError as error:
        raise UsageError(error.message) from None


def update(updater, build: BuildInfo, args: argparse.Namespace) -> int:
    from pilot.update.install import read_metadata
    from pilot.update.progress import download_progress

    target = parse_target(args.to)
    if args.from_file and target is None:
        target = parse_target(str(read_metadata(Path(args.from_file)).get("version")))
    with sentinel.exclusive_update():
        if sentinel.open_trial_record() is not None:
            raise UpdateError("a new version is still starting (its trial boot is open)",
                              hint="run `pilot self-update --status` in a moment")
        installed = read_metadata(updater.paths.install).get("version")
        if installed != build.version:  # another process updated it between our start and the lock
            raise UpdateError(f"pilot {installed} was installed by another process while this {build.version} started",
                              hint="run the command again")
        result = updater.check(target=target)
        if result.choice is None:
            print(f"pilot {build.version} is up to date (latest on {result.manifest.channel}: {result.latest})")
            report_skipped(result)
            return 0
        version = result.choice.release.version
        confirm(f"Update pilot {build.version} to {version}?", args.yes)
        print(f"updating pilot {build.version} -> {version}", file=sys.stderr)
        with download_progress(f"downloading {version}") as progress:
            outcome = updater.install(result.choice, progress=progress, restart=not args.no_restart,
                                      on_step=announce_step)
        if outcome == "installed":
            print(f"installed pilot {version} at {updater.paths.install} (backup: {updater.paths.backup}); "
                  "it starts with your next command")
        return 0


def announce_step(step: str) -> None:
    if step != "downloading":  # the progress bar shows that one
        print(f"{step}...", file=sys.stderr, flush=True)


def confirm(question: str, assume_yes: bool) -> None:
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("not updating without confirmation", hint="add --yes to update without asking")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("update cancelled")


def after_restart() -> int:
    """The first command a new version runs after self-update's exec: confirm, commit, never update again."""
    build = current_build()
    record = sentinel.open_trial_record()
    if build is not None and record is not None and record.get("to_build_id") == build.build_id:
        print(f"pilot {build.version} (updated from {record['from_version']})", flush=True)
        if sentinel.commit_boot(build) is None:
            raise UpdateError("this process does not own the open trial boot")
        sentinel.take_notice()
        return 0
    last = sentinel.take_notice() or sentinel.load_state().get("last") or {}
    if last.get("state") == "rolled_back":
        print(f"pilot: rolled back to {build.version if build else '?'}: {last.get('reason')}", file=sys.stderr)
        return EXIT_UPDATE
    print(f"pilot {build.version if build else '?'}")
    return 0


def roll_back(build: BuildInfo) -> int:
    from pilot.update.install import Paths, read_metadata, swap_back

    paths = Paths.for_archive(build.archive)
    with sentinel.exclusive_update():
        if not paths.backup.exists():
            raise UpdateError(f"there is no backup to roll back to ({paths.backup} does not exist)")
        backup_version = read_metadata(paths.backup).get("version", "?")
        swap_back(paths)
        record = {"from_version": build.version, "to_version": backup_version,
                  "install_path": str(paths.install), "backup_path": str(paths.backup)}
        state = sentinel.record_outcome(sentinel.load_state(), record, "rolled_back_by_user",
                                        "rolled back on request (pilot self-update --rollback)")
        state["notice_pending"] = False
        sentinel.save_state(state)
    print(f"rolled back: pilot {backup_version} is installed at {paths.install}; "
          f"{build.version} is kept as {paths.backup}")
    return 0


def show_status(as_json: bool) -> int:
    state = sentinel.load_state()
    trial = sentinel.open_trial_record()
    last = dict(state.get("last") or {})
    build = current_build()
    info = {
        "state": "trial" if trial else last.get("state", "none"),
        "from_version": (trial or last).get("from_version"),
        "to_version": (trial or last).get("to_version"),
        "at": last.get("at"),
        "reason": None if trial else last.get("reason"),
        "install_path": (trial or last).get("install_path"),
        "backup_path": (trial or last).get("backup_path"),
        "running_version": build.version if build else None,
        "highest_serial": state.get("highest_serial", 0),
        "bad_versions": state.get("bad_versions", []),
        "rollback_pid": None if trial else last.get("rollback_pid"),
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    if info["state"] == "none":
        print("no update has run on this install yet")
        return 0
    print(f"state: {info['state']}  {info['from_version']} -> {info['to_version']}  at {info['at'] or 'now'}")
    if info["reason"]:
        print(f"reason: {info['reason']}")
    print(f"install: {info['install_path']}  backup: {info['backup_path']}")
    if info["bad_versions"]:
        print(f"skipped versions (failed to start here): {', '.join(info['bad_versions'])}")
    return 0
