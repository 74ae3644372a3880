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
    return parser


def dispatch(args: argparse.Namespace) -> int:
    module_name, _, function_name = args.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return int(handler(args) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
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
