"""Dashboard widgets: one job each; the app feeds them, they only render.

Everything is laid out to hold at 80x24: fixed text fits in 76 columns, METRICS breaks its
task counts between items when the width runs out, and TASKS gives the title column what
the other columns leave, cutting long titles and reasons with an ellipsis.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, ProgressBar, Static
from textual.widgets.data_table import CellDoesNotExist

LOGO = """\
█▀█ █ █   █▀█ ▀█▀
█▀▀ █ █▄▄ █▄█  █ """

ELLIPSIS = "…"
UNFINISHED = ("failed", "cancelled", "interrupted")  # the statuses a task shows a reason for


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
    """How the last update ended, why an upgrade failed, or a question; hidden when there is nothing to say."""

    def show(self, kind: str | None, text: str | None) -> None:
        self.set_classes(kind or "")
        self.update(Text(text or ""))
        self.display = bool(text)


class UpdateNotice(Static):
    """`⬆ Update available: vX (press 'u' to upgrade)`, or the last check's quiet status.

    installed: vX is at the install path already (updated by hand) while this daemon runs
    `running`, so 'u' restarts into it."""

    def show(self, available: str | None, quiet_status: str | None, *, installed: bool = False,
             running: str | None = None, standing: str | None = None) -> None:
        """standing: what the manifest says of the running version (below the minimum, yanked, halted)."""
        if standing and not installed:
            self.set_classes("available")
            self.update(Text(f"⚠ {standing}"))
            self.display = True
            return
        if available and installed:
            self.set_classes("available")
            self.update(Text(f"⬆ v{available} is installed but this daemon runs v{running} (press 'u' to restart)"))
        elif available:
            self.set_classes("available")
            self.update(Text(f"⬆ Update available: v{available} (press 'u' to upgrade)"))
        else:
            self.set_classes("quiet")
            self.update(Text(quiet_status or ""))
        self.display = bool(available or quiet_status)


class UpgradeProgress(Vertical):
    """`Upgrading to vX... [progress] N%`, and the current step on the line below (it may be a question)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="upgrade-line"):
            yield Label("", id="upgrade-title")
            yield ProgressBar(total=100, show_eta=False, id="upgrade-bar")
        yield Label("", id="upgrade-step")

    def start(self, version: str) -> None:
        self.query_one("#upgrade-title", Label).update(f"Upgrading to v{version}...")
        self.query_one("#upgrade-step", Label).update("")
        self.query_one(ProgressBar).update(total=100, progress=0)
        self.display = True

    def step(self, text: str, percent: float | None = None) -> None:
        self.query_one("#upgrade-step", Label).update(Text(text))
        if percent is not None:
            self.query_one(ProgressBar).update(progress=percent)

    def stop(self) -> None:
        self.display = False


def fit(text: str, width: int) -> str:
    """Pure: text on one line, cut to width with an ellipsis when longer, at a space when one is near."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    if width <= 1:
        return ELLIPSIS[:width]
    space = line.rfind(" ", 0, width)  # the last space that leaves room for the ellipsis after it
    # A word is dropped whole rather than split, unless that loses half the room.
    cut = line[:space] if space >= width // 2 else line[:width - 1]
    return cut.rstrip() + ELLIPSIS


def wrap_items(items: list[str], width: int, *, gap: str = "  ") -> list[str]:
    """Pure: items joined by gap, broken between items (never inside one) so each line fits width.

    width <= 0 means unknown: one line."""
    lines: list[str] = []
    for item in items:
        if lines and (width <= 0 or len(lines[-1]) + len(gap) + len(item) <= width):
            lines[-1] += gap + item
        else:
            lines.append(item)
    return lines


class Metrics(Static):
    """METRICS: tokens, cost and task counts over all tasks, three lines that fit in 80 columns."""

    LABEL = "Tasks"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._totals = None

    def on_mount(self) -> None:
        self.border_title = "METRICS"

    def on_resize(self) -> None:
        self._render_totals()

    def show(self, totals) -> None:
        self._totals = totals
        self._render_totals()

    def _render_totals(self) -> None:
        if self._totals is None:
            return
        self.update(Text("\n".join(self.lines(self._totals, self.content_size.width))))

    @classmethod
    def lines(cls, totals, width: int) -> list[str]:
        """Pure: the text for these totals at this content width (0: unknown)."""
        usage = totals.usage
        grid = [
            ("Input tokens", f"{usage.input_tokens:,}", "Cache read", f"{usage.cache_read_tokens:,}",
             "Cost", f"${usage.cost_usd:,.4f}"),
            ("Output tokens", f"{usage.output_tokens:,}", "Cache write", f"{usage.cache_write_tokens:,}", "", ""),
        ]
        widths = [max(len(row[column]) for row in grid) for column in range(6)]
        rows = []
        for row in grid:
            cells = [f"{row[c]:<{widths[c]}}  {row[c + 1]:>{widths[c + 1]}}" for c in range(0, 6, 2)]
            rows.append("   ".join(cells).rstrip())
        counts = [("running", totals.running), ("queued", totals.queued), ("done", totals.done),
                  ("failed", totals.failed)]
        counts += [(name, count) for name, count in (("cancelled", totals.cancelled),
                                                     ("interrupted", totals.interrupted)) if count]
        lead = f"{cls.LABEL:<{widths[0]}}  "
        items = wrap_items([f"{count:,} {name}" for name, count in counts], width - len(lead) if width else 0)
        rows += [(lead if index == 0 else " " * len(lead)) + line for index, line in enumerate(items)]
        return rows


def failure_reason(task) -> str | None:
    """Pure: why a failed, cancelled or interrupted task ended, on one line; None for the others.

    The task's own `failure_reason` when it has one; for a record without one (kept from before
    reasons were recorded), the last line of its output tail (the runner's "cancelled",
    "cannot run ..." or "[interrupted: ...]" note, or the program's last words), or its exit
    status when that line is structured output or there is none."""
    if task.status not in UNFINISHED:
        return None
    reason = task.failure_reason
    if reason and reason.strip():
        return " ".join(reason.split())
    lines = [line.strip() for line in (task.log_tail or "").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if last.startswith("[") and last.endswith("]"):
        last = last[1:-1].strip()
    if last and not last.startswith("{"):
        return " ".join(last.split())
    if task.exit_code is not None:
        return f"exit status {task.exit_code}"
    return task.status


class TaskTable(DataTable):
    """TASKS: running first, then history, newest first; a failed task's reason on a second line."""

    COLUMNS = ("id", "status", "title", "in", "out", "cost")
    NUMERIC = frozenset({"in", "out", "cost"})
    MIN_TITLE = 8
    STATUS_STYLE: ClassVar = {"running": "bold green", "failed": "red", "cancelled": "yellow",
                              "interrupted": "yellow"}

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._tasks: list = []
        self._shown = None
        self._widths: tuple[int, ...] | None = None

    def on_resize(self) -> None:
        self.show(self._tasks)

    def show(self, tasks) -> None:
        self._tasks = list(tasks)
        ordered = sorted(self._tasks, key=lambda t: (t.status != "running", -t.id))
        cells = [(str(t.id), t.status, " ".join(t.title.split()), f"{t.usage.input_tokens:,}",
                  f"{t.usage.output_tokens:,}", f"${t.usage.cost_usd:.4f}", failure_reason(t)) for t in ordered]
        widths = self.column_widths(cells, self.scrollable_content_region.width)
        shown = (widths, cells)
        if shown == self._shown:
            return  # unchanged: keep the cursor and skip a redraw
        self._shown = shown
        selected = self._selected_key()
        if widths != self._widths:
            self.clear(columns=True)
            for name, width in zip(self.COLUMNS, widths, strict=True):
                self.add_column(Text(name, justify="right" if name in self.NUMERIC else "left"), width=width,
                                key=name)
            self._widths = widths
        else:
            self.clear()
        title_width = widths[2]
        for task_id, status, title, tokens_in, tokens_out, cost, reason in cells:
            label = Text(fit(title, title_width))
            if reason == status:
                reason = None  # "cancelled" says no more than the status does: one line is enough
            if reason is not None:
                label.append("\n")
                label.append(fit(f"↳ {reason}", title_width), style="italic")
            self.add_row(Text(task_id), Text(status, style=self.STATUS_STYLE.get(status, "")), label,
                         *(Text(value, justify="right") for value in (tokens_in, tokens_out, cost)),
                         key=task_id, height=1 if reason is None else 2)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)

    def _selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:  # a cursor past the rows: nothing selected
            return None

    def column_widths(self, cells: list[tuple], width: int) -> tuple[int, ...]:
        """Each column's content width: the widest value, the title taking whatever is left of width."""
        padding = 2 * self.cell_padding
        fixed = [max([len(name)] + [len(row[index]) for row in cells]) for index, name in enumerate(self.COLUMNS)]
        others = sum(w + padding for index, w in enumerate(fixed) if index != 2)
        title = max(width - others - padding, self.MIN_TITLE) if width > 0 else fixed[2]
        return (*fixed[:2], title, *fixed[3:])
