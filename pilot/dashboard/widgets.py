"""Dashboard widgets: one job each; the app feeds them, they only render."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Label, ProgressBar, Static

LOGO = """\
█▀█ █ █   █▀█ ▀█▀
█▀▀ █ █▄▄ █▄█  █ """


class Logo(Static):
    """The Pilot logo with the running version and PID."""

    def __init__(self, version: str, pid: int) -> None:
        super().__init__(id="logo")
        self.version = version
        self.pid = pid

    def render(self) -> str:
        first, second = LOGO.splitlines()
        return f"{first}   v{self.version}\n{second}   pid {self.pid}"


class Banner(Static):
    """How the last update ended, or why an upgrade failed; hidden when there is nothing to say."""

    def show(self, kind: str | None, text: str | None) -> None:
        self.set_classes(kind or "")
        self.update(text or "")
        self.display = bool(text)


class UpdateNotice(Static):
    """`⬆ Update available: vX (press 'u' to upgrade)`, or the last check's quiet status.

    installed: vX is at the install path already (updated by hand), so 'u' restarts into it."""

    def show(self, available: str | None, quiet_status: str | None, *, installed: bool = False) -> None:
        if available and installed:
            self.set_classes("available")
            self.update(f"⬆ Pilot v{available} is installed; this dashboard still runs an older one "
                        "(press 'u' to restart into it)")
        elif available:
            self.set_classes("available")
            self.update(f"⬆ Update available: v{available} (press 'u' to upgrade)")
        else:
            self.set_classes("quiet")
            self.update(quiet_status or "")
        self.display = bool(available or quiet_status)


class UpgradeProgress(Horizontal):
    """`Upgrading to vX... [progress] N%` and the current step."""

    def compose(self) -> ComposeResult:
        yield Label("", id="upgrade-title")
        yield ProgressBar(total=100, show_eta=False, id="upgrade-bar")
        yield Label("", id="upgrade-step")

    def start(self, version: str) -> None:
        self.query_one("#upgrade-title", Label).update(f"Upgrading to v{version}...")
        self.query_one(ProgressBar).update(total=100, progress=0)
        self.display = True

    def step(self, text: str, percent: float | None = None) -> None:
        self.query_one("#upgrade-step", Label).update(text)
        if percent is not None:
            self.query_one(ProgressBar).update(progress=percent)

    def stop(self) -> None:
        self.display = False


class Metrics(Static):
    """METRICS: tokens, cost and task counts over all tasks."""

    def show(self, totals) -> None:
        usage = totals.usage
        self.update(
            "[b]METRICS[/b]\n"
            f"Input tokens   {usage.input_tokens:>12,}    Cache read    {usage.cache_read_tokens:>12,}\n"
            f"Output tokens  {usage.output_tokens:>12,}    Cache write   {usage.cache_write_tokens:>12,}\n"
            f"Cost           {'$' + format(usage.cost_usd, ',.4f'):>12}    "
            f"Tasks done {totals.done}  failed {totals.failed}  running {totals.running}  queued {totals.queued}"
        )


class TaskTable(DataTable):
    """TASKS: running first, then history, newest first."""

    COLUMNS = ("id", "status", "title", "in", "out", "cost", "exit")

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns(*self.COLUMNS)

    def show(self, tasks) -> None:
        ordered = sorted(tasks, key=lambda t: (t.status != "running", -t.id))
        rows = [(str(t.id), t.status, t.title[:60], f"{t.usage.input_tokens:,}", f"{t.usage.output_tokens:,}",
                 f"${t.usage.cost_usd:.4f}", "" if t.exit_code is None else str(t.exit_code)) for t in ordered]
        if rows == getattr(self, "_shown", None):
            return  # unchanged: keep the cursor and skip a redraw
        self._shown = rows
        self.clear()
        for row in rows:
            self.add_row(*row, key=row[0])
