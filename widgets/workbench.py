"""The workbench: one tabbed app over a workspace folder of runs.

    from widgets import Workbench
    Workbench("runs/").show()

Setup and Train are built at once; the other panels are imported and built the first time
their tab is opened (or ``panel(title)`` is called), so the app appears quickly and a panel
module that is missing shows a note in its tab instead of breaking the others.
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
from pathlib import Path

import ipywidgets as W

from icm_core.workspace.queue import RunQueue
from widgets.setup import SetupPanel
from widgets.train_panel import TrainPanel

log = logging.getLogger(__name__)

TABS = ("Setup", "Train", "Runs", "Rate-accuracy", "Ablation", "Inspector")
LAZY = {"Runs": ("widgets.runs", "RunsPanel"), "Rate-accuracy": ("widgets.ra", "RAPanel"),
        "Ablation": ("widgets.ablation", "AblationPanel"),
        "Inspector": ("widgets.inspector", "InspectorPanel")}


class Workbench:
    """Args:
    workspace: folder of run folders (created when missing); the queue trains into it.
    overrides: initial settings of the Setup panel.
    """

    def __init__(self, workspace: str | Path = "runs", overrides=()):
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.queue = RunQueue(self.workspace)
        self.setup = SetupPanel(overrides)
        self.train = TrainPanel(self.queue, self.setup)
        self.panels: dict[str, object] = {"Setup": self.setup, "Train": self.train}
        self._boxes = {t: W.VBox([W.HTML(f"<i>{t}: opens when selected</i>")]) for t in LAZY}
        self.tabs = W.Tab(children=[self.setup.widget, self.train.widget,
                                    *(self._boxes[t] for t in TABS[2:])], titles=TABS,
                          layout=W.Layout(width="100%"))
        self.tabs.observe(self._on_tab, names="selected_index")

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
        kwargs = {"workspace": self.workspace, "queue": self.queue, "setup": self.setup}
        params = inspect.signature(cls).parameters
        try:
            panel = cls(**{k: v for k, v in kwargs.items() if k in params})
        except Exception as e:  # one broken panel must not take the workbench down
            log.exception("building the %s panel", title)
            self._boxes[title].children = [W.HTML(
                f"<div style='color:#b00020'>The {title} panel failed to open: "
                f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</div>")]
            return None
        self._boxes[title].children = [panel.widget]
        return panel

    def panel(self, title: str):
        """The panel of tab ``title`` (built on first use); None when it cannot be built."""
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
        title = TABS[change["new"]] if change["new"] is not None else None
        if title in LAZY:
            self.panel(title)
        elif title == "Train":
            self.train.show_command()

    def show(self) -> None:
        from IPython.display import display

        display(self.tabs)

    def _ipython_display_(self) -> None:
        self.show()


__all__ = ["Workbench", "TABS"]
