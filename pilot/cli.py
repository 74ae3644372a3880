"""Argument parsing and nothing else: each command's work lives in pilot.commands.*.

Handlers are imported only once their command is chosen, so `pilot --version`
and `pilot status` never pay for the update, network or dashboard code; only the
chosen command's parser is filled in, and nothing here imports shutil or signal
(tests/test_import_sets.py holds each hot command's imports to a list).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from pilot import __version__
from pilot.errors import EXIT_ERROR, EXIT_USAGE, PilotError
from pilot.launcher import is_unwritable_output, rollback_untold, say, standing_of, trial_path

EPILOG = """\
exit codes:
  0  success            3  update refused or failed (nothing changed)
  1  other error        4  local state or config unusable
  2  usage error        5  archive built for another interpreter/platform
  130, 143, 129  interrupted by SIGINT, SIGTERM, SIGHUP (128 + the signal)
"""


def terminal_width() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (and bz2, lzma, fnmatch with it)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class TerminalWidth:
    """Mixed into argparse's formatters, which argparse makes on every add_argument and which would
    otherwise import shutil for the width the first time."""

    def __init__(self, prog: str, **kwargs) -> None:
        if kwargs.get("width") is None:
            kwargs["width"] = terminal_width() - 2  # what argparse does with shutil's answer
        super().__init__(prog, **kwargs)


class HelpFormatter(TerminalWidth, argparse.HelpFormatter):
    pass


class RawDescriptionHelpFormatter(TerminalWidth, argparse.RawDescriptionHelpFormatter):
    pass


class Parser(argparse.ArgumentParser):
    """argparse with Pilot's manners: a usage error shows the usage of the (sub)command it is about,
    and, when the command line asked for --json, comes as JSON on stdout like every other error."""

    json_errors = False  # set for the whole command line before it is parsed

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if Parser.json_errors:
            print_json_error(f"{self.prog}: {message}", EXIT_USAGE)
            self.exit(EXIT_USAGE)
        super().error(message)


def print_json_error(line: str, code: int) -> None:
    import json

    with contextlib.suppress(OSError, ValueError):
        print(json.dumps({"error": line, "exit_code": code}))


class Commands:
    """A parser's subcommands, filled in only for the one the command line names: setting up every parser
    costs ~3 ms of argparse and gettext work on each start. The others are listed by name and help where
    a help text or a usage error may show the list; `pilot status` and `pilot task list`, whose command
    word comes first, need no list at all. `tokens`: the command line from this parser on (None: all)."""

    def __init__(self, parser: argparse.ArgumentParser, tokens: list[str] | None, **kwargs) -> None:
        self.action = parser.add_subparsers(**kwargs)
        self.tokens = tokens
        self.word = next((t for t in tokens if not t.startswith("-")), None) if tokens is not None else None
        # No option of `pilot` or `pilot task` takes a value, so the first word is the command; when it
        # comes first, no option of this parser (-h) can ask for the list.
        self.direct = tokens is not None and tokens[:1] == [self.word]
        self.unlisted: list[tuple[str, str | None]] = []
        self.found = False

    def __enter__(self) -> Commands:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.found:  # an unknown command: its usage error lists them all
            for name, helptext in self.unlisted:
                self.list(name, helptext)

    def add(self, name: str, **kwargs) -> argparse.ArgumentParser | None:
        """The parser to fill in for `name`, or None when the command line chose another command."""
        if self.tokens is None or name == self.word:
            self.found = True
            return self.action.add_parser(name, **kwargs)
        if self.direct:
            self.unlisted.append((name, kwargs.get("help")))
        else:
            self.list(name, kwargs.get("help"))
        return None

    def list(self, name: str, helptext: str | None) -> None:
        self.action.add_parser(name, help=helptext, add_help=False)  # listed, never parsed

    def below(self, parser: argparse.ArgumentParser, **kwargs) -> Commands:
        """The subcommands of `parser`, which add() has just returned."""
        tokens = None if self.tokens is None else self.tokens[self.tokens.index(self.word) + 1:]
        return Commands(parser, tokens, **kwargs)


def head_of(argv: list[str] | None) -> list[str] | None:
    """The command line before `--` (after it comes a task's command, as given)."""
    if argv is None:
        return None
    return argv[:argv.index("--")] if "--" in argv else argv


def leaf(parser: argparse.ArgumentParser, handler: str) -> argparse.ArgumentParser:
    """A command that runs something: its handler, and itself, to report its own usage errors."""
    parser.set_defaults(handler=handler, leaf_parser=parser)
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def duration(text: str) -> float:
    from pilot.config import parse_duration
    from pilot.errors import ConfigError

    try:
        return parse_duration(text, "duration")
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 2m or 1h") from None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (only its command filled in), or with every command filled in."""
    parser = Parser(
        prog="pilot",
        description="Pilot: an agent daemon that runs your tasks and keeps itself up to date.",
        epilog=EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pilot {__version__}")
    with Commands(parser, head_of(argv), dest="command", metavar="COMMAND") as commands:
        if version := commands.add(
            "version",
            help="show version, interpreter, platform and install method",
            description="Show what this Pilot is: version, interpreter tag, platform tag, archive path and "
                        "install method.",
        ):
            version.add_argument("--json", action="store_true", help="print one JSON object for scripts")
            leaf(version, "pilot.commands.version:run")
        add_daemon_commands(commands)
        add_task_commands(commands)
        add_config_commands(commands)
        add_self_update(commands)
        add_install_commands(commands)
        add_debug(commands)
    return parser


def add_daemon_commands(commands: Commands) -> None:
    if start := commands.add(
        "start", help="run the daemon (headless, or with --dashboard)",
        description="Run the Pilot daemon: it runs queued tasks and checks for updates in the background. "
                    "Headless it logs to $PILOT_HOME/logs/pilot.log and stderr; --dashboard shows the terminal UI "
                    "(u: upgrade when an update is available, q: quit). SIGINT, SIGTERM and SIGHUP stop it: it "
                    "takes no new task, lets running ones finish up to daemon.drain_timeout, then cancels them.",
    ):
        start.add_argument("--dashboard", action="store_true", help="show the terminal dashboard")
        leaf(start, "pilot.commands.start:run")

    if stop := commands.add(
        "stop", help="stop the running daemon",
        description="Ask the daemon of this PILOT_HOME to stop: it takes no new task and lets running ones finish "
                    "(up to daemon.drain_timeout), or cancels them with --cancel-running.",
    ):
        stop.add_argument("--wait", action="store_true", help="wait until it has stopped")
        stop.add_argument("--cancel-running", action="store_true", help="cancel running tasks instead of waiting")
        stop.add_argument("--timeout", type=duration, metavar="DURATION",
                          help="with --wait: give up after this long (e.g. 90s, 2m)")
        stop.add_argument("--json", action="store_true", help="print one JSON object for scripts")
        leaf(stop, "pilot.commands.stop:run")

    if status := commands.add("status", help="token totals, task counts, daemon and update state"):
        status.add_argument("--json", action="store_true", help="print one JSON object for scripts")
        leaf(status, "pilot.commands.tasks:status")


def add_task_commands(commands: Commands) -> None:
    task = commands.add("task", help="queue, list, inspect, cancel and retry tasks")
    if not task:
        return
    with commands.below(task, dest="task_command", metavar="ACTION", required=True) as sub:
        if add := sub.add(
            "add", help="queue a task", usage="pilot task add [--json] TITLE [-- COMMAND ARGS...]",
            description="Queue a task. Without a command the configured executor (daemon.executor, default "
                        "`claude -p --output-format stream-json --verbose`) runs with TITLE as the prompt. "
                        "Everything after -- is the command, exactly as given.",
        ):
            add.add_argument("title", metavar="TITLE",
                             help="what the task is (and the prompt when no command is given)")
            add.add_argument("--json", action="store_true", help="print the queued task as JSON")
            leaf(add, "pilot.commands.tasks:add")
        if listing := sub.add("list", help="list tasks, newest first"):
            listing.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
            listing.add_argument("--json", action="store_true", help="print JSON")
            leaf(listing, "pilot.commands.tasks:list_tasks")
        for name, helptext in (("show", "one task: command, status, times, tokens, cost, why it failed"),
                               ("cancel", "cancel a queued or running task"),
                               ("retry", "queue a new task with the same title and command")):
            if action := sub.add(name, help=helptext, description=helptext[0].upper() + helptext[1:] + "."):
                action.add_argument("task_id", type=positive_int, metavar="ID")
                action.add_argument("--json", action="store_true", help="print JSON")
                leaf(action, f"pilot.commands.task_inspect:{name}")
        if logs := sub.add("log", help="a task's whole output", description="Print a task's whole output."):
            logs.add_argument("task_id", type=positive_int, metavar="ID")
            logs.add_argument("--follow", "-f", action="store_true",
                              help="keep printing new output until the task ends")
            leaf(logs, "pilot.commands.task_inspect:log")


def add_config_commands(commands: Commands) -> None:
    config = commands.add("config", help="show or check the configuration")
    if not config:
        return
    with commands.below(config, dest="config_command", metavar="ACTION", required=True) as sub:
        if show := sub.add("show", help="the effective configuration and where each value comes from",
                           description="Print the effective configuration: each value and whether it comes from "
                                       "the default, the archive's build, $PILOT_HOME/config.yaml or the "
                                       "environment."):
            show.add_argument("--json", action="store_true", help="print JSON")
            leaf(show, "pilot.commands.config:show")
        if check := sub.add("check", help="validate config.yaml and the environment",
                            description="Validate $PILOT_HOME/config.yaml and the PILOT_* variables: one line "
                                        "for the first problem (exit 4), or that all is well."):
            check.add_argument("--json", action="store_true", help="print JSON")
            leaf(check, "pilot.commands.config:check")


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
  pilot self-update --from-file pilot-1.4.2-linux_x86_64.pyz --manifest site/
                                         offline install, same verification
  pilot self-update --rollback           go back to the backup
  pilot self-update --status --json      how the last update ended

The manifest URL comes from --manifest-url, PILOT_MANIFEST_URL, upgrade.manifest_url in
$PILOT_HOME/config.yaml (default ~/.pilot), or the default built into the archive.
"""


def add_self_update(commands: Commands) -> None:
    p = commands.add(
        "self-update", help="update Pilot to the newest signed release", description=SELF_UPDATE_DESCRIPTION,
        epilog=SELF_UPDATE_EPILOG + EPILOG, formatter_class=RawDescriptionHelpFormatter,
    )
    if not p:
        return
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
    p.add_argument("--json", action="store_true", help="print JSON: the check, the status, or how the update went "
                   "(version, and the download: method, bytes_downloaded, bytes_reused)")
    leaf(p, "pilot.commands.self_update:run")


def add_install_commands(commands: Commands) -> None:
    if install := commands.add(
        "install", help="copy this archive to ~/.local/bin/pilot (or --dir), ready to run as `pilot`",
        description="Copy the archive this command runs from to DIR/pilot (default ~/.local/bin), check the copy "
                    "against this build, make it executable and say whether DIR is on PATH (and the line that "
                    "puts it there). An install already there is replaced as an update replaces it: kept as "
                    "pilot.backup.",
    ):
        install.add_argument("--dir", metavar="DIR", help="where to put `pilot` (default ~/.local/bin)")
        install.add_argument("--json", action="store_true", help="print one JSON object for scripts")
        leaf(install, "pilot.commands.installation:install")
    if uninstall := commands.add(
        "uninstall", help="remove this Pilot: the archive, its backup and unpacked copies (--purge: and its data)",
        description="Remove the archive this command runs from, its backup and their unpacked copies, after "
                    "asking. With --purge also PILOT_HOME (default ~/.pilot): every task, its output and history. "
                    "Refused while the daemon runs.",
    ):
        uninstall.add_argument("--purge", action="store_true", help="also remove PILOT_HOME and everything in it")
        uninstall.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        uninstall.add_argument("--json", action="store_true", help="print one JSON object for scripts")
        leaf(uninstall, "pilot.commands.installation:uninstall")


def add_debug(commands: Commands) -> None:
    p = commands.add("debug", help="diagnostics for developers and the updater")
    if not p:
        return
    with commands.below(p, dest="debug_command", metavar="WHAT", required=True) as sub:
        if test := sub.add("self-test", help="import every module, load native code, print version as JSON"):
            leaf(test, "pilot.commands.debug:self_test")
        if points := sub.add("failpoints", help="list the crash points PILOT_FAILPOINT=<name> can SIGKILL Pilot at"):
            leaf(points, "pilot.commands.debug:failpoints")


def dispatch(args: argparse.Namespace) -> int:
    module_name, _, function_name = args.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return int(handler(args) or 0)


def announce_rollback() -> None:
    if not rollback_untold():  # a stat, or a small read after an update: not the update engine's imports
        return
    from pilot.update import take_notice

    notice = take_notice()
    if notice is not None and notice.state == "rolled_back":
        say(f"pilot: rolled back from {notice.to_version} to {notice.from_version}: {notice.reason} "
            "(details: pilot self-update --status)")


def announce_standing() -> None:
    """Below the channel's minimum, yanked or halted: what the last update check said, one line on stderr."""
    from pilot.buildinfo import current_version

    line = standing_of(current_version())
    if line:
        say(f"pilot: {line}")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse the command line; a new version that gets this far has started, even if the arguments are wrong."""
    try:
        args = parse_command_line(parser, argv)
    except SystemExit:  # --help, or a usage error
        settle_trial(lambda update: update.confirm_start(None))
        raise
    settle_trial(lambda update: update.confirm_start(args.command))
    return args


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options are options wherever they stand before `--`; everything after it is a task's command, as given."""
    head, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, None)
    Parser.json_errors = "--json" in head
    args, unknown = parser.parse_known_args(head)
    where = getattr(args, "leaf_parser", parser)
    if unknown:
        where.error(f"unrecognized arguments: {' '.join(unknown)}")
    if command is not None and getattr(args, "task_command", None) != "add":
        where.error("only `pilot task add TITLE -- COMMAND ...` takes a command after --")
    if getattr(args, "task_command", None) == "add":
        if not args.title.strip():
            where.error("TITLE must not be blank")
        if command is not None and not command:
            where.error("no command after --")
        args.command = command
    return args


def settle_trial(action) -> None:
    """Run action(the update's front door) when a new version's trial is open; one stat on every other start."""
    if os.path.exists(trial_path()):
        import pilot.update

        action(pilot.update)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parse(parser, argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    if args.command not in ("self-update", "start"):  # those two tell it their own way
        announce_rollback()
        if args.command != "status":  # its own report has the line
            announce_standing()
    ending, code = run(args)
    if ending is not None:  # `pilot start` that ended before its main loop was up (a no-op otherwise)
        settle_trial(lambda update: update.settle_boot(*ending))
    return code


def run(args: argparse.Namespace) -> tuple[tuple[str, str] | None, int]:
    """Dispatch; every error a user can meet becomes one line. Returns (how it ended early, exit code)."""
    try:
        return ("exited", "it exited") if args.command == "start" else None, dispatch(args)
    except PilotError as error:
        tell(args, error.one_line(), error.exit_code)
        return ("refused", error.one_line()), error.exit_code
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM/SIGHUP where a command turned them into this
        import signal  # here: it pulls in enum (~4 ms), and only an interrupted command needs it

        signum = getattr(interrupt, "signum", signal.SIGINT)
        tell(args, f"interrupted ({signal.Signals(signum).name})", 128 + signum)
        return ("interrupted", "interrupted"), 128 + signum
    except OSError as error:
        if is_unwritable_output(error):  # `pilot task list | head`, a closed terminal, a full disk under stdout
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ("output", "its output could not be written"), EXIT_ERROR
        # An environment problem we did not anticipate (disk, permissions): one line, not a traceback.
        line = f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
        tell(args, line, EXIT_ERROR)
        return ("error", line), EXIT_ERROR


def tell(args: argparse.Namespace, line: str, code: int) -> None:
    """How a command failed: one JSON object on stdout for --json, else one line on stderr."""
    if getattr(args, "json", False):
        print_json_error(line, code)
    else:
        say(f"pilot: {line}")
