"""Ablation panel: choose a grid of adapter settings, see its measured cost, run it through the
background queue, get the paper's Fig. 5-style charts (saved as HTML and CSV).

Grid, cost and charts come from ``icm_core.studies.ablation``; this file only wires widgets to it.
The base settings are the Setup panel's (when given) or the overrides typed here.
"""

from __future__ import annotations

import html
import shlex
from pathlib import Path

import ipywidgets as w
import plotly.graph_objects as go

from icm_core.config.schema import ADAPTER_MODES
from icm_core.errors import ConfigError, ICMError
from icm_core.studies import ablation as ab
from icm_core.viz.figures import fig5_figure
from icm_core.workspace.runs import read_run
from widgets._panel import Panel


def _finished(run_dir: Path) -> bool:

    try:
        return read_run(run_dir).status == "done"
    except (ICMError, OSError):
        return False


class AblationPanel(Panel):
    """``points()`` the grid, ``estimate()`` its cost, ``run()`` submits it; ``rows``, ``figure``
    and ``saved`` (HTML, CSV) are refreshed as its runs finish."""

    def __init__(self, workspace: str | Path, queue, setup=None, base=("experiment=quick",),
                 name: str = "ablation"):
        super().__init__()  # the message line
        self.workspace = Path(workspace)
        self.queue = queue
        self.setup = setup
        self.jobs: list = []
        self.run_dirs: list[Path] = []  # the grid's run folders, in grid order
        self.cost: ab.GridCost | None = None
        self.rows: list[dict] = []
        self.saved: tuple[Path, Path] | None = None
        self.modes = w.SelectMultiple(options=ADAPTER_MODES, value=("dora",), rows=5,
                                      description="modes")
        self.ranks = w.Text(value="4, 8", description="ranks",
                            tooltip="dora/lora ranks, comma separated")
        self.targets = w.Text(value="q,v; q,k,v", description="targets",
                              tooltip="target sets separated by ';' (q, k, v, o, up, down)")
        self.lambdas = w.Text(value="1", description="lambdas",
                              tooltip="comma separated; with variable rate the anchors of one "
                              "training per configuration (empty: the base's model.rate_lambdas)")
        self.base = w.Text(value=" ".join(base), description="base",
                           tooltip="overrides every run starts from (the Setup panel's, if any)",
                           layout=w.Layout(width="80%", display="none" if setup else "flex"))
        self.name = w.Text(value=name, description="name",
                           tooltip="prefix of this grid's run folders; its charts go to "
                           "workspace/<name>/")
        self.estimate_button = w.Button(description="Estimate cost", icon="clock-o")
        self.run_button = w.Button(description="Run grid", icon="play", button_style="success")
        self.cost_text = w.HTML()
        self.figure = go.FigureWidget()
        self.links = w.HTML()
        self.estimate_button.on_click(lambda _: self._guard(self.estimate))
        self.run_button.on_click(lambda _: self._guard(self.run))
        self.widget = w.VBox([
            w.HBox([self.modes, w.VBox([self.ranks, self.targets, self.lambdas, self.name])]),
            self.base, w.HBox([self.estimate_button, self.run_button]), self.cost_text,
            self.message, self.figure, self.links])
        if queue is not None:
            queue.subscribe(self._on_queue)

    # -- the grid ---------------------------------------------------------------------------
    def base_overrides(self) -> list[str]:
        return list(self.setup.overrides()) if self.setup is not None else \
            shlex.split(self.base.value)

    def points(self) -> list[ab.GridPoint]:
        return ab.expand_grid(self.modes.value,
                              ab.parse_numbers(self.ranks.value, int, "ranks"),
                              ab.parse_target_sets(self.targets.value),
                              ab.parse_numbers(self.lambdas.value, float, "lambdas"),
                              base=self.base_overrides())

    @property
    def out_dir(self) -> Path:
        return self.workspace / self.name.value.strip()

    def estimate(self) -> ab.GridCost:
        """Measure (or reuse the cached measurement of) the first run's step time."""
        points = self.points()
        self._say(f"timing real steps of {points[0].name} ...")
        busy = getattr(self.queue, "current", None) is not None
        step = ab.measure_step_time(points[0].overrides, cache_dir=self.workspace)
        self.cost = ab.estimate_cost(points, step)
        note = " <i>(timed while another run trained: slower than alone)</i>" \
            if busy and not step.cached else ""
        self.cost_text.value = f"<b>Cost:</b> {html.escape(self.cost.describe())}{note}"
        self._say("")
        return self.cost

    def run(self) -> list:
        """Submit the grid to the queue, one run folder each (``<name>-<point>``).

        A point whose folder already holds a finished run is not trained again (re-running
        a notebook reuses its runs); any other existing folder refuses the whole grid before
        anything is queued, since half a grid is worse than none.
        """
        points = self.points()
        prefix = self.name.value.strip()
        self.run_dirs = [self.workspace / f"{prefix}-{p.name}" for p in points]
        taken = [d.name for d in self.run_dirs if d.exists() and not _finished(d)]
        if taken:
            raise ConfigError(f"run folders {taken[:3]} exist in {str(self.workspace)!r} and are "
                              "not finished runs; give this grid another name")
        todo = [(p, d) for p, d in zip(points, self.run_dirs) if not d.exists()]
        if todo and (self.cost is None or self.cost.runs != len(points)):
            self.estimate()
        self.jobs = [self.queue.submit(list(p.overrides), name=d.name) for p, d in todo]
        if self.jobs:
            self._say(f"queued {len(self.jobs)} runs ({len(points) - len(todo)} done already); "
                      "charts appear as they finish")
        else:
            self._say(f"all {len(points)} runs of this grid are done already: charts from them")
            self.update_charts()
        return self.jobs

    # -- results ----------------------------------------------------------------------------
    def _on_queue(self, job, event) -> None:
        """A grid run ended (the queue's StatusEvent, on its thread): redraw and save."""
        if job in self.jobs and getattr(event, "status", None) in ("done", "failed", "stopped"):
            self._guard(self.update_charts)

    def update_charts(self) -> list[dict]:
        """Fig. 5 rows of the grid's finished runs, drawn and saved (HTML + CSV)."""
        finished = [d for d in self.run_dirs if d.exists() and _finished(d)]
        failed = [f"{Path(j.run_dir).name}: {j.error}" for j in self.jobs if j.status == "failed"]
        self.rows = ab.fig5_rows(finished)
        fig = fig5_figure(self.rows, title=f"{self.name.value}: {len(finished)} of "
                          f"{len(self.run_dirs)} runs finished")
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.layout = fig.layout
            self.figure.add_traces(fig.data)
        if self.rows:
            self.saved = ab.save_ablation(self.rows, self.out_dir, fig=fig)
            self.links.value = "saved: " + ", ".join(
                f"<code>{html.escape(str(p))}</code>" for p in self.saved)
        if failed:
            self._say("failed: " + "; ".join(failed), error=True)
        return self.rows

    def _guard(self, fn) -> None:
        """A bad value shows its one-line error in the panel, never a traceback."""
        try:
            fn()
        except (ICMError, OSError) as e:
            self._say(f"{type(e).__name__}: {e}", error=True)


__all__ = ["AblationPanel"]
