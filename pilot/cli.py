"""Argument parsing and nothing else: each command's work lives in pilot.commands.*.

Handlers are imported only once their command is chosen, so `pilot --version`
and `pilot status` never pay for the update, network or dashboard code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pilot import __version__
from pilot.errors import EXIT_ERROR, PilotError

EPILOG = """\
exit codes:
  0  success            3  update refused or failed (nothing changed)
  1  other error        4  local state or config unusable
  2  usage error        5  archive built for another interpreter/platform
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilot",
        description="Pilot: an agent daemon that runs your tasks and keeps itself up to date.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pilot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    version = commands.add_parser(
        "version",
        help="show version, interpreter, platform and install method",
        description="Show what this Pilot is: version, interpreter tag, platform tag, archive path and install method.",
    )
    version.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    version.set_defaults(handler="pilot.commands.version:run")
    add_self_update(commands)
    add_debug(commands)
    return parser


SELF_UPDATE_DESCRIPTION = """\
Update this Pilot archive in place, safely.

Fetches the channel's signed manifest, verifies its signatures against the keys built
into this archive, its schema, expiry and serial, downloads the newest release for this
interpreter and platform while checking its signed size and sha256, runs the new
archive's self-test, swaps it in (the current archive is kept as <path>.backup) and
restarts into it. If the new version fails to start, the backup is restored by itself.
"""

SELF_UPDATE_EPILOG = """\
examples:
  pilot self-update --check              is there a newer release?
  pilot self-update --yes                update without asking
  pilot self-update --to 1.4.2           install this listed version (even one skipped as bad)
  pilot self-update --from-file pilot-1.4.2-cp311-linux_x86_64.pyz --manifest site/
                                         offline install, same verification
  pilot self-update --rollback           go back to the backup
  pilot self-update --status --json      how the last update ended

The manifest URL comes from --manifest-url, PILOT_MANIFEST_URL, upgrade.manifest_url in
$PILOT_HOME/config.yaml (default ~/.pilot), or the default built into the archive.
"""


def add_self_update(commands) -> None:
    p = commands.add_parser(
        "self-update", help="update Pilot to the newest signed release", description=SELF_UPDATE_DESCRIPTION,
        epilog=SELF_UPDATE_EPILOG + EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check whether an update is available")
    mode.add_argument("--status", action="store_true", help="show where the last update stands")
    mode.add_argument("--rollback", action="store_true", help="go back to the backup archive")
    mode.add_argument("--after-restart", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--channel", help="release channel (default: upgrade.channel, else stable)")
    p.add_argument("--to", metavar="VERSION", help="install this version instead of the newest")
    p.add_argument("--manifest-url", metavar="URL", help="manifest to use instead of the configured one")
    p.add_argument("--no-restart", action="store_true", help="install; the next command starts the new version")
    p.add_argument("--from-file", metavar="PYZ", help="install this archive (offline); needs --manifest")
    p.add_argument("--manifest", metavar="DIR_OR_FILE", help="manifest for --from-file (file or tree)")
    p.add_argument("--json", action="store_true", help="with --check or --status: print JSON")
    p.set_defaults(handler="pilot.commands.self_update:run")


def add_debug(commands) -> None:
    p = commands.add_parser("debug", help="diagnostics for developers and the updater")
    sub = p.add_subparsers(dest="debug_command", metavar="WHAT", required=True)
    test = sub.add_parser("self-test", help="import every module, load native code, print version as JSON")
    test.set_defaults(handler="pilot.commands.debug:self_test")


def dispatch(args: argparse.Namespace) -> int:
    module_name, _, function_name = args.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return int(handler(args) or 0)


def announce_rollback() -> None:
    from pilot.update.sentinel import rollback_notice

    notice = rollback_notice()
    if notice:
        print(notice, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    if args.command != "self-update":
        announce_rollback()
    try:
        return dispatch(args)
    except PilotError as error:
        print(f"pilot: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("pilot: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # An environment problem we did not anticipate (disk, permissions): one line, not a traceback.
        print(f"pilot: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_ERROR
