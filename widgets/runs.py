"""Runs panel: every run of a workspace folder, to compare, delete, export or inspect.

Reads the folder through ``icm_core.workspace.runs`` (runs started by the queue and by ``icm train``
on the command line alike) and holds no state of its own beyond the selection. Other panels
listen: ``on_compare(fn(paths))`` (the rate-accuracy panel) and ``on_open(fn(path))`` (the
inspector).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ipywidgets as w

from icm_core.errors import ICMError
from icm_core.workspace.runs import RunInfo, delete_run, export_run, list_runs
from widgets._panel import Panel

COLUMNS = ("name", "status", "steps", "tasks", "adapter", "rank", "targets", "lmbda",
           "compression", "weights_source", "bpp", "metric")
_STATUS_COLOURS = {"running": "#1f77b4", "done": "#2ca02c", "stopped": "#ff7f0e",
                   "failed": "#d62728", "queued": "#7f7f7f", "empty": "#7f7f7f"}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def run_row(run: RunInfo) -> dict:
    """A run as one table row of plain values (what the panel shows and tests read)."""
    s = run.settings
    res = run.results[0] if run.results else None
    steps = f"{run.steps_done}/{run.max_steps}" if run.max_steps else str(run.steps_done)
    return {"name": run.name, "path": str(run.path), "status": run.status, "steps": steps,
            "tasks": s.get("tasks"), "adapter": s.get("adapter"), "rank": s.get("rank"),
            "targets": s.get("targets"), "lmbda": s.get("lmbda"),
            "compression": s.get("compression"), "weights_source": s.get("weights_source"),
            "bpp": res.bpp if res else None,
            "metric": f"{res.metric} {res.value:.4g}" if res else None, "note": run.note}


class RunsPanel(Panel):
    """Table of runs with refresh, compare, delete (confirmed), export and open-in-inspector."""

    def __init__(self, workspace: str | Path, queue=None, refresh_every_s: float = 5.0):
        super().__init__()  # the message line
        self.workspace = Path(workspace)
        self.queue = queue
        self.runs: list[RunInfo] = []
        self.skipped = []
        self._compare_fns: list[Callable] = []
        self._open_fns: list[Callable] = []
        self._pending_delete: list[Path] = []
        self._refresh_every_s = refresh_every_s
        self._last_refresh = 0.0
        self._lock = threading.Lock()  # refreshes come from the UI and from the queue's thread
        self.table = w.HTML()
        self.select = w.SelectMultiple(options=[], rows=8, description="select",
                                       layout=w.Layout(width="100%"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.compare_button = w.Button(description="Compare", icon="line-chart",
                                       tooltip="plot the selected runs in the rate-accuracy panel")
        self.open_button = w.Button(description="Open in inspector", icon="search")
        self.delete_button = w.Button(description="Delete", icon="trash", button_style="danger")
        self.export_dest = w.Text(value=str(self.workspace.parent / "exports"),
                                  description="export to", layout=w.Layout(width="50%"))
        self.export_format = w.Dropdown(options=["zip", "folder"], value="zip",
                                        layout=w.Layout(width="auto"))
        self.export_button = w.Button(description="Export", icon="download")
        self.confirm_text = w.HTML()
        self.confirm_button = w.Button(description="Yes, delete", button_style="danger")
        self.cancel_button = w.Button(description="Cancel")
        self.confirm_box = w.HBox([self.confirm_text, self.confirm_button, self.cancel_button],
                                  layout=w.Layout(display="none"))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.compare_button.on_click(lambda _: self._compare())
        self.open_button.on_click(lambda _: self._open())
        self.delete_button.on_click(lambda _: self._ask_delete())
        self.confirm_button.on_click(lambda _: self._delete())
        self.cancel_button.on_click(lambda _: self._cancel_delete())
        self.export_button.on_click(lambda _: self._export())
        self.widget = w.VBox([
            w.HBox([self.refresh_button, self.compare_button, self.open_button,
                    self.delete_button]),
            self.table, self.select,
            w.HBox([self.export_dest, self.export_format, self.export_button]),
            self.confirm_box, self.message])
        if queue is not None:
            queue.subscribe(self._on_queue)
        self.refresh()

    # -- callbacks for other panels ---------------------------------------------------------
    def on_compare(self, fn: Callable[[list[Path]], None]) -> None:
        self._compare_fns.append(fn)

    def on_open(self, fn: Callable[[Path], None]) -> None:
        self._open_fns.append(fn)

    # -- state ------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        return [run_row(r) for r in self.runs]

    @property
    def selected(self) -> list[Path]:
        return [Path(p) for p in self.select.value]

    def select_runs(self, paths) -> None:
        """Select runs by folder (or by name relative to the workspace)."""
        known = {str(r.path): r for r in self.runs} | {r.name: r for r in self.runs}
        missing = [str(p) for p in paths if str(p) not in known]
        if missing:
            raise ValueError(f"not runs of {str(self.workspace)!r}: {missing}")
        self.select.value = tuple(str(known[str(p)].path) for p in paths)

    def refresh(self) -> None:
        """Re-read the workspace; the selection keeps the runs that still exist."""
        with self._lock:
            self._last_refresh = time.monotonic()
            self.runs, self.skipped = list_runs(self.workspace)
            keep = [v for v in self.select.value if any(str(r.path) == v for r in self.runs)]
            self.select.options = [(f"{r.name}  [{r.status}]", str(r.path)) for r in self.runs]
            self.select.value = tuple(keep)
            self.table.value = self._table_html()

    def _table_html(self) -> str:
        if not self.runs:
            body = f"<p>No runs in {html.escape(str(self.workspace))} yet.</p>"
        else:
            head = "".join(f"<th style='padding:2px 8px'>{c}</th>" for c in COLUMNS)
            lines = []
            for row in self.rows():
                cells = []
                for c in COLUMNS:
                    text = html.escape(_fmt(row[c]))
                    if c == "status":
                        colour = _STATUS_COLOURS.get(row[c], "#000")
                        tip = html.escape(row["note"] or "")
                        text = f"<b style='color:{colour}' title='{tip}'>{text}</b>"
                    cells.append(f"<td style='padding:2px 8px'>{text}</td>")
                lines.append(f"<tr>{''.join(cells)}</tr>")
            body = (f"<table style='border-collapse:collapse;font-size:12px'><tr>{head}</tr>"
                    f"{''.join(lines)}</table>")
        if self.skipped:
            items = "".join(f"<li>{html.escape(str(s.path))}: {html.escape(s.reason)}</li>"
                            for s in self.skipped)
            body += f"<details><summary>{len(self.skipped)} folder(s) skipped</summary>" \
                    f"<ul>{items}</ul></details>"
        return body

    def _on_queue(self, job, event) -> None:
        """Queue events arrive on the queue's thread; step events refresh at most every few
        seconds (reading every run's config each step would slow the table down)."""
        kind = getattr(event, "kind", event)
        if kind == "log" or (kind == "step" and
                             time.monotonic() - self._last_refresh < self._refresh_every_s):
            return
        self.refresh()

    # -- actions ----------------------------------------------------------------------------
    def _need_selection(self) -> bool:
        if not self.select.value:
            self._say("Select one or more runs first.", error=True)
            return False
        return True

    def _compare(self) -> None:
        if not self._need_selection():
            return
        for fn in self._compare_fns:
            fn(self.selected)
        self._say(f"Comparing {len(self.selected)} run(s).")

    def _open(self) -> None:
        if not self._need_selection():
            return
        for fn in self._open_fns:
            fn(self.selected[0])

    def _ask_delete(self) -> None:
        if not self._need_selection():
            return
        self._pending_delete = self.selected
        names = ", ".join(p.name for p in self._pending_delete)
        self.confirm_text.value = f"Delete {len(self._pending_delete)} run(s) ({html.escape(names)})" \
                                  " and all their files?"
        self.confirm_box.layout.display = "flex"

    def _cancel_delete(self) -> None:
        self._pending_delete = []
        self.confirm_box.layout.display = "none"

    def _delete(self) -> None:
        done, errors = [], []
        for p in self._pending_delete:
            try:
                delete_run(self.workspace, p)
                done.append(p.name)
            except (ICMError, OSError) as e:
                errors.append(str(e))
        self._cancel_delete()
        self.refresh()
        self._say("; ".join(errors) if errors else f"Deleted {', '.join(done)}.", bool(errors))

    def _export(self) -> None:
        if not self._need_selection():
            return
        dest, made, errors = Path(self.export_dest.value).expanduser(), [], []
        by_path = {str(r.path): r for r in self.runs}
        for p in self.selected:
            name = by_path[str(p)].name.replace("/", "_") if str(p) in by_path else p.name
            try:
                made.append(str(export_run(self.workspace, p, dest / name,
                                           self.export_format.value)))
            except (ICMError, OSError) as e:
                errors.append(str(e))
        self._say("; ".join(errors) if errors else f"Exported to {', '.join(made)}.", bool(errors))


__all__ = ["RunsPanel", "run_row", "COLUMNS"]
