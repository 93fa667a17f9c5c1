"""Rate-accuracy panel: one plot per task for the selected runs and any results file, and the
BD-rate of every curve against an anchor the user picks.

Points come from ``icm_core.studies.ra_curves.run_points`` (real bytes, cached in each run folder)
and ``icm_core.evaluation.results.load_results`` (CompressAI layout: ``icm compare``, ``icm eval``);
curves (``group_runs``) and the BD-rate table (``bd_rows``) from ``icm_core.evaluation.results``.
With a queue, finished runs that are on the plot are re-read when they finish.

A variable-rate run is a whole curve (``DEFAULT_RATE_POINTS`` rates). The rate slider marks
one variable-rate run's point at any rate on its curve (a star): evaluated through real
streams by ``run_points(run, rates=[r])`` and cached in the run folder like the other points.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path

import ipywidgets as w
import plotly.graph_objects as go
from plotly.colors import qualitative

from icm_core.errors import ICMError
from icm_core.evaluation.results import Curve, bd_rows, group_runs, load_results
from icm_core.studies.ra_curves import run_points
from widgets._panel import Panel

_HOVER_KEYS = ("adapter", "rank", "targets", "decoder", "inter_sup", "compression",
               "weights_source", "steps", "size")


def _hover(curve: Curve, i: int) -> str:
    lines = [f"<b>{html.escape(curve.name, quote=False)}</b>"]
    text, runs = curve.texts[i], curve.runs
    if text:
        lines.append(html.escape(text, quote=False))
    if runs and runs[i]:
        lines.append(html.escape(str(runs[i]), quote=False))
    lines += [f"{k}: {html.escape(str(curve.settings[k]), quote=False)}" for k in _HOVER_KEYS
              if k in curve.settings]
    if curve.source:
        lines.append(html.escape(curve.source, quote=False))
    return "<br>".join(lines)


def _bd_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def _bd_note(row: dict, metric: str) -> str:
    """The reason a row has no number, or the accuracy range its rates were averaged over."""
    return row["reason"] or f"{metric} range {row['metric_lo']:.4g}-{row['metric_hi']:.4g}"


class RAPanel(Panel):
    """``set_runs(paths)``, ``add_results(path)``, ``refresh()``; ``figures`` (task ->
    FigureWidget), ``curves`` and ``bd_rows`` hold what is shown."""

    def __init__(self, workspace: str | Path, queue=None, max_images: int | None = None):
        super().__init__()  # the message line
        self.workspace = Path(workspace)
        self.max_images = max_images
        self.runs: list[Path] = []
        self.results: list[Path] = []
        self.curves: list[Curve] = []
        self.bd_rows: list[dict] = []
        self.errors: list[str] = []
        self.figures: dict[str, go.FigureWidget] = {}
        self._lock = threading.Lock()  # refreshes come from the UI and from the queue's thread
        self.path_box = w.Text(placeholder="results JSON (icm compare / icm eval)",
                               description="results", layout=w.Layout(width="60%"))
        self.found = w.Dropdown(options=[], description="found", layout=w.Layout(width="60%"))
        self.add_button = w.Button(description="Add", icon="plus")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.anchor = w.Dropdown(options=[], description="anchor",
                                 tooltip="BD-rate of every curve against this one")
        self.plots = w.VBox()
        self.rate_run = w.Dropdown(options=[], description="rate of", disabled=True,
                                   tooltip="a variable-rate run on the plot: the slider marks "
                                   "its point at one rate")
        self.rate = w.FloatSlider(1.0, min=0, max=1, step=0.05, description="rate",
                                  disabled=True, continuous_update=False, readout_format=".2f",
                                  tooltip="0: the run's lowest trained rate, 1: its highest")
        self.rate_text = w.HTML()
        self.marks: list[Curve] = []  # the marked point, one per task of the rate's run
        self._quiet = False  # options set by a refresh: no re-marking from their observers
        self.rate_run.observe(lambda _: self._on_rate(), "value")
        self.rate.observe(lambda _: self._on_rate(), "value")
        self.table = w.HTML()
        self.add_button.on_click(lambda _: self._add_clicked())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.found.observe(lambda ch: self.path_box.set_trait("value", ch["new"] or ""), "value")
        self.anchor.observe(lambda _: self._update_table(), "value")
        self.widget = w.VBox([w.HBox([self.path_box, self.add_button, self.refresh_button]),
                              self.found, self.plots, w.HBox([self.rate_run, self.rate]),
                              self.rate_text, self.anchor, self.table, self.message])
        if queue is not None:
            queue.subscribe(self._on_queue)
        self._scan_results()

    # -- inputs -----------------------------------------------------------------------------
    def set_runs(self, paths) -> None:
        self.runs = [Path(p) for p in paths]
        self.refresh()

    def add_results(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        load_results(path)  # refuse a bad file here, with its reason, before keeping it
        if path not in self.results:
            self.results.append(path)
        self.refresh()

    def _add_clicked(self) -> None:
        try:
            self.add_results(self.path_box.value.strip())
        except (ICMError, OSError) as e:
            self._say(str(e), error=True)

    def _scan_results(self) -> None:
        """Offer the results files found in the workspace (a file picker that needs no upload)."""
        found = sorted(str(p) for p in self.workspace.rglob("*.json") if p.name.startswith(
            "results") or (p.parent / "bd_rate.csv").is_file()) if self.workspace.is_dir() else []
        self.found.options = [""] + found

    def _on_queue(self, job, event) -> None:
        """A plotted run finished training (the queue's StatusEvent): re-read its points."""
        run_dir = getattr(job, "run_dir", None)
        if getattr(event, "status", None) == "done" and run_dir is not None \
                and Path(run_dir) in self.runs:
            self.refresh()

    # -- computing and drawing --------------------------------------------------------------
    def refresh(self) -> None:
        """Read every run's RA points (cached) and every results file, redraw, re-table."""
        with self._lock:  # the later of two refreshes reads the later files and draws last
            self._refresh()

    def _refresh(self) -> None:
        points, self.errors, variable = [], [], []
        for run in self.runs:
            try:
                mine = run_points(run, max_images=self.max_images)
            except (ICMError, OSError) as e:
                self.errors.append(f"{run}: {e}")
                continue
            points += mine
            if any(p.settings.get("variable_rate") for p in mine):
                variable.append(str(run))
        self._offer_rate_runs(variable)
        self._mark()
        curves = group_runs(points)
        for path in self.results:
            try:
                curves.append(load_results(path))
            except (ICMError, OSError) as e:
                self.errors.append(f"{path}: {e}")
        self.curves = curves
        self._draw()
        labels = list(dict.fromkeys(c.name for c in curves))
        keep = self.anchor.value if self.anchor.value in labels else (labels[0] if labels else None)
        self.anchor.options = labels
        self.anchor.value = keep
        self._update_table()
        self._scan_results()
        self._say("; ".join(self.errors), error=True) if self.errors else self._say(
            f"{len(self.runs)} run(s), {len(self.results)} results file(s).")

    # -- the rate slider ----------------------------------------------------------------------
    def _offer_rate_runs(self, variable: list[str]) -> None:
        """The variable-rate runs on the plot, for the slider (the one chosen kept if it is)."""
        self._quiet = True
        try:
            keep = self.rate_run.value if self.rate_run.value in variable else \
                (variable[0] if variable else None)
            names = [Path(v).name for v in variable]
            self.rate_run.options = [(n if names.count(n) == 1 else v, v)
                                     for n, v in zip(names, variable)]
            self.rate_run.value = keep
            self.rate_run.disabled = self.rate.disabled = not variable
        finally:
            self._quiet = False

    def mark_rate(self, rate: float, run: str | Path | None = None) -> list[Curve]:
        """Move the slider to ``rate`` (of ``run``, default the one chosen): its marked points."""
        if run is not None:
            self.rate_run.value = str(Path(run))
        self.rate.value = rate
        return self.marks

    def _on_rate(self) -> None:
        if self._quiet:
            return
        with self._lock:
            self._mark()
            self._draw()

    def _mark(self) -> None:
        """The chosen variable-rate run's point at the slider's rate, per task (cached)."""
        self.marks = []
        run = self.rate_run.value
        if run is None:
            self.rate_text.value = ("<small>rate slider: no variable-rate run on the plot (a "
                                    "per-lambda run has one rate; experiment=quick_vr trains "
                                    "one model for every rate)</small>")
            return
        try:
            self.marks = run_points(run, rates=[self.rate.value], max_images=self.max_images)
        except (ICMError, OSError) as e:
            self.rate_text.value = f"<small>{html.escape(f'{run}: {e}', quote=False)}</small>"
            return
        self.rate_text.value = "<small>marked (star): " + "; ".join(
            f"{html.escape(m.task)} at r={m.points[0]['rate']:.3g} (λ={m.points[0]['lmbda']:.3g}): "
            f"{m.bpp[0]:.4f} bpp, {html.escape(m.metric)} {m.values[0]:.4g}"
            for m in self.marks) + "</small>"

    def _draw(self) -> None:
        tasks = list(dict.fromkeys(c.task for c in self.curves))
        labels = list(dict.fromkeys(c.name for c in self.curves))
        colours = {lab: qualitative.Plotly[i % len(qualitative.Plotly)]
                   for i, lab in enumerate(labels)}
        for task in tasks:
            fig = self.figures.get(task)
            if fig is None:
                fig = self.figures[task] = go.FigureWidget()
            mine = [c for c in self.curves if c.task == task]
            metric = mine[0].metric
            better = "higher is better" if mine[0].higher_is_better else "lower is better"
            with fig.batch_update():
                fig.data = []
                fig.layout.shapes, fig.layout.annotations = (), ()
                for c in mine:
                    idx = [i for i, b in enumerate(c.bpp) if b is not None]
                    if idx:
                        dashed = bool(c.source)
                        texts = c.texts
                        fig.add_scatter(
                            x=[c.bpp[i] for i in idx], y=[c.values[i] for i in idx],
                            mode="lines+markers" + ("" if dashed else "+text"), name=c.name,
                            text=[texts[i] for i in idx],
                            textposition="top center",
                            line=dict(color=colours[c.name], dash="dash" if dashed else None),
                            hovertext=[_hover(c, i) for i in idx], hoverinfo="text+x+y")
                    flat = [c.values[i] for i, b in enumerate(c.bpp) if b is None]
                    if c.uncompressed is not None:
                        flat.append(c.uncompressed)
                    for v in flat:  # no rate: an uncompressed reference, drawn as a level
                        fig.add_hline(y=v, line_dash="dot", line_color=colours[c.name],
                                      annotation_text=f"{c.name} (uncompressed)")
                for m in self.marks:
                    if m.task == task and m.bpp[0] is not None:
                        self._draw_mark(fig, m, mine, colours)
                fig.update_layout(title=f"{task}: {metric} ({better})", template="plotly_white",
                                  xaxis_title="bpp (real bytes)", yaxis_title=metric, height=380,
                                  margin=dict(l=60, r=20, t=50, b=50))
        for task in [t for t in self.figures if t not in tasks]:
            del self.figures[task]
        self.plots.children = [self.figures[t] for t in tasks]

    @staticmethod
    def _draw_mark(fig, m: Curve, curves: list[Curve], colours: dict) -> None:
        """A star at the marked point, in the colour of the curve its run belongs to."""
        run = m.points[0]["run"]
        owner = next((c for c in curves if run in (c.runs or [])), None)
        label = owner.name if owner is not None else m.name
        rate = m.points[0]["rate"]
        fig.add_scatter(
            x=[m.bpp[0]], y=[m.values[0]], mode="markers", name=f"{label} at r={rate:.3g}",
            marker=dict(symbol="star", size=16, color=colours.get(label, "black"),
                        line=dict(width=1, color="black")),
            hovertext=[f"<b>{html.escape(label, quote=False)}</b><br>rate {rate:.3g}, λ="
                       f"{m.points[0]['lmbda']:.3g}<br>{html.escape(run, quote=False)}"],
            hoverinfo="text+x+y")

    def _update_table(self) -> None:
        anchor = self.anchor.value
        self.bd_rows = bd_rows(self.curves, [c for c in self.curves if c.name == anchor]) \
            if anchor else []
        metrics = {(c.task, c.name): c.metric for c in self.curves}
        if not self.bd_rows:
            self.table.value = "<p>BD-rate: pick an anchor with at least one other curve.</p>"
            return
        head = "".join(f"<th style='padding:2px 8px'>{h}</th>"
                       for h in ("task", "curve", f"BD-rate vs {html.escape(anchor)}", "note"))
        body = "".join(
            f"<tr><td style='padding:2px 8px'>{html.escape(r['task'])}</td>"
            f"<td style='padding:2px 8px'>{html.escape(r['method'])}</td>"
            f"<td style='padding:2px 8px'>{_bd_text(r['bd_rate_percent'])}</td>"
            f"<td style='padding:2px 8px'>{html.escape(_bd_note(r, metrics[r['task'], r['method']]))}</td>"
            "</tr>"
            for r in self.bd_rows)
        self.table.value = (f"<table style='border-collapse:collapse;font-size:12px'>"
                            f"<tr>{head}</tr>{body}</table><small>negative: fewer bits than "
                            "the anchor for the same accuracy (Pareto fronts, PCHIP)</small>")


__all__ = ["RAPanel"]
