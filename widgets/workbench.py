"""The workbench: one tabbed app over a workspace folder of runs.

    from widgets import Workbench
    Workbench("runs/").show()

Its tabs are the rows of ``widgets.registry.PANELS``, in order. The eager panels (Setup,
Train) are built at once; the others are imported and built the first time their tab is
opened (or ``panel(title)`` is called), so the app appears quickly and a panel module that is
missing or fails shows a note in its tab instead of breaking the others. Every tab shows its
panel's ``widget`` (the contract in ``widgets._panel.Panel``).
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
from pathlib import Path

import ipywidgets as W
from IPython.display import display

from icm_core.workspace.queue import RunQueue
from widgets._panel import check_panel
from widgets.registry import PANELS, entry

log = logging.getLogger(__name__)

TABS = tuple(e.title for e in PANELS)
LAZY = {e.title: (e.module, e.cls) for e in PANELS if not e.eager}


class Workbench:
    """Args:
    workspace: folder of run folders (created when missing); the queue trains into it.
    overrides: initial settings of the Setup panel.
    """

    def __init__(self, workspace: str | Path = "runs", overrides=()):
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.queue = RunQueue(self.workspace)
        self.overrides = list(overrides)
        self.panels: dict[str, object] = {}
        for title in TABS:  # eager ones in table order: Setup before the panels that take it
            if title not in LAZY:
                self.panels[title] = self._make(title, entry(title).load())
        self.setup = self.panels["Setup"]
        self.train = self.panels["Train"]
        self._boxes = {t: W.VBox([W.HTML(f"<i>{t}: opens when selected</i>")]) for t in LAZY}
        self.tabs = W.Tab(children=[self._boxes[t] if t in LAZY else self.panels[t].widget
                                    for t in TABS], titles=TABS, layout=W.Layout(width="100%"))
        self.tabs.observe(self._on_tab, names="selected_index")

    def _make(self, title: str, cls):
        """Build ``cls`` with the arguments its constructor names, check it keeps the contract."""
        offered = {"workspace": self.workspace, "queue": self.queue, "overrides": self.overrides}
        if "Setup" in self.panels:
            offered["setup"] = self.panels["Setup"]
        params = inspect.signature(cls).parameters
        panel = cls(**{k: v for k, v in offered.items() if k in params})
        return check_panel(panel, f"the {title!r} row of widgets.registry.PANELS")

    def _build(self, title: str):
        """The panel of a lazy tab, or None with a note in the tab when it cannot be built."""
        module_name, cls_name = LAZY[title]
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            self._boxes[title].children = [W.HTML(
                f"<i>The {title} panel is not there yet ({module_name.replace('.', '/')}.py is "
                "missing).</i>")]
            return None
        try:
            panel = self._make(title, cls)
        except Exception as e:  # one broken panel must not take the workbench down
            log.exception("building the %s panel", title)
            self._boxes[title].children = [W.HTML(
                f"<div style='color:#b00020'>The {title} panel failed to open: "
                f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</div>")]
            return None
        self._boxes[title].children = [panel.widget]
        return panel

    def panel(self, title: str):
        """The panel of tab ``title`` (built on first use; its ``widget`` is what the tab
        shows); None when it cannot be built (the tab says why)."""
        if title not in TABS:
            raise KeyError(f"no tab {title!r}; tabs are {list(TABS)}")
        if title not in self.panels:
            self.panels[title] = self._build(title)
            self._wire()
        return self.panels[title]

    def _wire(self) -> None:
        """Runs -> compare in Rate-accuracy, open in the Inspector (where both panels exist)."""
        runs = self.panels.get("Runs")
        if runs is None or getattr(self, "_wired", False):
            return
        self._wired = True
        if hasattr(runs, "on_compare"):
            runs.on_compare(lambda paths: self._goto("Rate-accuracy", "set_runs", paths))
        if hasattr(runs, "on_open"):
            runs.on_open(lambda path: self._goto("Inspector", "open", path))

    def _goto(self, title: str, method: str, arg) -> None:
        panel = self.panel(title)
        if panel is not None and hasattr(panel, method):
            getattr(panel, method)(arg)
        self.select(title)

    def compare(self, runs=None):
        """Show ``runs`` (default: every run this workbench's queue trained) in the
        Rate-accuracy tab and open it; returns that panel (None if it cannot be built)."""
        runs = [j.run_dir for j in self.queue.jobs if j.status == "done"] if runs is None else runs
        panel = self.panel("Rate-accuracy")
        if panel is not None:
            panel.set_runs(list(dict.fromkeys(runs)))
        self.select("Rate-accuracy")
        return panel

    def compare_when_done(self, block: bool = False):
        """Open the Rate-accuracy tab with the queue's runs once no run is queued or running.

        ``block=False`` (in a notebook) returns at once and compares from the queue's thread
        when the last run ends: a cell that blocks holds the kernel's shell channel, and widget
        clicks (Stop) would wait until it ends. ``block=True`` waits here (scripts, CI).
        """
        if block:
            self.queue.wait()
            return self.compare()

        def on_event(job, event) -> None:
            if event.kind == "status" and event.status in ("done", "stopped", "failed") and not any(
                    j.status in ("queued", "running") for j in self.queue.jobs):
                self.queue.unsubscribe(on_event)
                self.compare()

        self.queue.subscribe(on_event)
        if not any(j.status in ("queued", "running") for j in self.queue.jobs):
            self.queue.unsubscribe(on_event)
            return self.compare()
        return None

    def select(self, title: str) -> None:
        """Open tab ``title``."""
        self.tabs.selected_index = TABS.index(title)

    def _on_tab(self, change) -> None:
        if change["new"] is None:
            return
        panel = self.panel(TABS[change["new"]])
        if panel is not None:
            panel.on_tab_opened()

    def show(self) -> None:
        display(self.tabs)

    def _ipython_display_(self) -> None:
        self.show()


__all__ = ["Workbench", "TABS"]
