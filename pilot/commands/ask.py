"""Ask the person at the terminal before a command changes something they cannot take back."""

from __future__ import annotations

import sys

from pilot.errors import UsageError


def ask(question: str, assume_yes: bool, *, doing: str) -> None:
    """Return when the answer is yes (or --yes was given); UsageError otherwise, never a silent default.

    doing: what is not done without an answer, e.g. "updating" ("not updating without confirmation")."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"not {doing} without confirmation", hint="add --yes to go ahead without asking")
    try:
        answer = input(f"{question} [y/N] ").strip().lower()
    except EOFError:
        answer = ""
    if answer not in ("y", "yes"):
        raise UsageError("cancelled: nothing was changed")
