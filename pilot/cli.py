"""Argument parsing and nothing else: each command's work lives in pilot.commands.*.

Handlers are imported only once their command is chosen, so `pilot --version`
and `pilot status` never pay for the update, network or dashboard code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

from pilot import __version__
from pilot.errors import EXIT_ERROR, PilotError
from pilot.launcher import is_unwritable_output, state_path, trial_path

EPILOG = """\
exit codes:
  0  success            3  update refused or failed (nothing changed)
  1  other error        4  local state or config unusable
  2  usage error        5  archive built for another interpreter/platform
  130, 143, 129  interrupted by SIGINT, SIGTERM, SIGHUP (128 + the signal)
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
    add_daemon_commands(commands)
    add_self_update(commands)
    add_debug(commands)
    return parser


def add_daemon_commands(commands) -> None:
    start = commands.add_parser(
        "start", help="run the daemon (headless, or with --dashboard)",
        description="Run the Pilot daemon: it runs queued tasks and checks for updates in the background. "
                    "Headless it logs to $PILOT_HOME/logs/pilot.log and stderr; --dashboard shows the terminal UI "
                    "(u: upgrade when an update is available, q: quit).",
    )
    start.add_argument("--dashboard", action="store_true", help="show the terminal dashboard")
    start.set_defaults(handler="pilot.commands.start:run")

    status = commands.add_parser("status", help="token totals, task counts, daemon and update state")
    status.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    status.set_defaults(handler="pilot.commands.tasks:status")

    task = commands.add_parser("task", help="queue and list tasks")
    sub = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    add = sub.add_parser(
        "add", help="queue a task", usage="pilot task add TITLE [-- COMMAND ARGS...]",
        description="Queue a task. Without a command the configured executor (daemon.executor, default "
                    "`claude -p --output-format stream-json --verbose`) runs with TITLE as the prompt.",
    )
    add.add_argument("title", help="what the task is (and the prompt when no command is given)")
    add.add_argument("command", nargs=argparse.REMAINDER, help="the command to run instead of the executor")
    add.add_argument("--json", action="store_true", help="print the queued task as JSON")
    add.set_defaults(handler="pilot.commands.tasks:add")
    listing = sub.add_parser("list", help="list tasks, newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler="pilot.commands.tasks:list_tasks")


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
    points = sub.add_parser("failpoints", help="list the crash points PILOT_FAILPOINT=<name> can SIGKILL Pilot at")
    points.set_defaults(handler="pilot.commands.debug:failpoints")


def dispatch(args: argparse.Namespace) -> int:
    module_name, _, function_name = args.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return int(handler(args) or 0)


def announce_rollback() -> None:
    if not os.path.exists(state_path()):  # one stat on every start; the state is read only when there is one
        return
    from pilot.update import take_notice

    notice = take_notice()
    if notice is not None and notice.state == "rolled_back":
        say(f"pilot: rolled back from {notice.to_version} to {notice.from_version}: {notice.reason} "
            "(details: pilot self-update --status)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; a new version that gets this far has started, even if the arguments are wrong."""
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, or a usage error
        settle_trial(lambda update: update.confirm_start(None))
        raise
    settle_trial(lambda update: update.confirm_start(args.command))
    return args


def settle_trial(action) -> None:
    """Run action(the update's front door) when a new version's trial is open; one stat on every other start."""
    if os.path.exists(trial_path()):
        import pilot.update

        action(pilot.update)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    if args.command not in ("self-update", "start"):  # those two tell it their own way
        announce_rollback()
    ending, code = run(args)
    if ending is not None:  # `pilot start` that ended before its main loop was up (a no-op otherwise)
        settle_trial(lambda update: update.settle_boot(*ending))
    return code


def run(args: argparse.Namespace) -> tuple[tuple[str, str] | None, int]:
    """Dispatch; every error a user can meet becomes one line. Returns (how it ended early, exit code)."""
    try:
        return ("exited", "it exited") if args.command == "start" else None, dispatch(args)
    except PilotError as error:
        say(f"pilot: {error.one_line()}")
        return ("refused", error.one_line()), error.exit_code
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM/SIGHUP where a command turned them into this
        signum = getattr(interrupt, "signum", signal.SIGINT)
        say(f"pilot: interrupted ({signal.Signals(signum).name})")
        return ("interrupted", "interrupted"), 128 + signum
    except OSError as error:
        if is_unwritable_output(error):  # `pilot task list | head`, a closed terminal, a full disk under stdout
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ("output", "its output could not be written"), EXIT_ERROR
        # An environment problem we did not anticipate (disk, permissions): one line, not a traceback.
        line = f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
        say(f"pilot: {line}")
        return ("error", line), EXIT_ERROR


def say(line: str) -> None:
    """A line on stderr, which may be a pipe or terminal that is gone."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr)
