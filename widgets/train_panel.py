"""Train panel: Start / Stop / Resume runs of the Setup panel's settings in the background
queue (``icm_core.workspace.queue.RunQueue``), with live progress, curves and log.

Queue events arrive on the queue's worker thread. ipywidgets (8, on ipykernel 6+) sends a
trait change from any thread straight to the kernel's IOPub thread, so the browser sees the
progress and curves while other cells execute (checked against a running kernel: comm
updates from the worker arrive between another cell's busy and idle). Redraws are throttled
to ``redraw_s`` (a plot update re-sends its traces), and forced at evaluations and status
changes; curves keep at most ``MAX_POINTS`` points (older ones thinned) so a long run stays fast.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque

import ipywidgets as W
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icm_core.errors import ICMError
from icm_core.workspace.queue import Job, RunQueue
from widgets._panel import Panel
from widgets.setup import SetupPanel

MAX_POINTS = 3000


def _eta(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Curves:
    """What the plots show for one run folder (steps and values), thinned past MAX_POINTS."""

    def __init__(self):
        self.step, self.loss, self.bpp = [], [], []
        self.evals: dict[str, dict[str, list]] = {}  # task -> step, value, bpp
        self.metric: dict[str, str] = {}

    def add_step(self, ev) -> None:
        while self.step and self.step[-1] >= ev.step:  # resumed from an earlier checkpoint
            for lst in (self.step, self.loss, self.bpp):
                lst.pop()
        self.step.append(ev.step)
        self.loss.append(ev.loss)
        self.bpp.append(ev.bpp)
        if len(self.step) > MAX_POINTS:  # every other point, the newest kept
            keep = sorted({*range(0, len(self.step), 2), len(self.step) - 1})
            for lst in (self.step, self.loss, self.bpp):
                lst[:] = [lst[i] for i in keep]

    def add_eval(self, ev) -> None:
        e = self.evals.setdefault(ev.task, {"step": [], "value": [], "bpp": []})
        while e["step"] and e["step"][-1] >= ev.step:
            for lst in e.values():
                lst.pop()
        e["step"].append(ev.step)
        e["value"].append(ev.value)
        e["bpp"].append(ev.bpp)
        self.metric[ev.task] = ev.metric


class TrainPanel(Panel):
    """Args:
    queue: the background run queue.
    setup: the Setup panel whose settings Start submits (default: a fresh one).
    redraw_s: least seconds between two redraws of the plots and progress.
    """

    def __init__(self, queue: RunQueue, setup=None, redraw_s: float = 0.5):
        super().__init__()  # the message line: a refused Start, a failed run
        if setup is None:
            setup = SetupPanel()
        self.queue, self.setup, self.redraw_s = queue, setup, redraw_s
        self.job: Job | None = None  # the run shown
        self._lock = threading.RLock()
        self._curves = _Curves()
        self._lines: deque[str] = deque(maxlen=200)
        self._last_draw = 0.0
        self.run_name = W.Text(placeholder="run name (blank: derived from the settings)",
                               tooltip="folder name in the workspace", layout=W.Layout(width="320px"))
        self.start_button = W.Button(description="Start", icon="play", button_style="success",
                                     tooltip="train the Setup panel's settings (queued if a run "
                                     "is training)")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True, tooltip="end the run at the next step, with a "
                                    "resumable checkpoint")
        self.resume_button = W.Button(description="Resume", icon="forward", disabled=True,
                                      tooltip="continue the stopped run from its checkpoint")
        self.start_button.on_click(lambda _b: self.start())
        self.stop_button.on_click(lambda _b: self.stop())
        self.resume_button.on_click(lambda _b: self.resume())
        self.command = W.HTML(layout=W.Layout(width="100%"))
        self.progress = W.IntProgress(min=0, max=1, value=0, layout=W.Layout(width="100%"))
        self.status = W.HTML("no run yet")
        self.queue_html = W.HTML()
        self.log = W.HTML(layout=W.Layout(width="100%"))
        self.figure = self._make_figure()
        self.widget = W.VBox([
            W.HBox([self.start_button, self.stop_button, self.resume_button, self.run_name],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            self.command, self.progress, self.status, self.message, self.queue_html, self.figure,
            W.HTML("<b>Log</b> (newest first)"), self.log], layout=W.Layout(width="100%"))
        queue.subscribe(self._on_event)
        if queue.current is not None:  # a run already training: show it from its start
            self._follow(queue.current)
        self.show_command()
        self._draw(force=True)

    # -- figure -----------------------------------------------------------------------------
    @staticmethod
    def _make_figure() -> go.FigureWidget:
        fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                            subplot_titles=("loss", "bits per pixel", "task metric (real streams)"))
        fig.add_scatter(x=[], y=[], mode="lines", name="loss", row=1, col=1)
        fig.add_scatter(x=[], y=[], mode="lines", name="bpp (estimated)", row=1, col=2)
        fig.add_scatter(x=[], y=[], mode="markers", name="bpp (real bytes)",
                        marker={"size": 8, "symbol": "diamond"}, row=1, col=2)
        fig.update_xaxes(title_text="step")
        fig.update_layout(height=300, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                          template="plotly_white", legend={"orientation": "h", "y": -0.25},
                          font={"size": 12})
        return go.FigureWidget(fig)

    def _draw(self, force: bool = False) -> None:
        """Push the curves, progress and status to the widgets (throttled unless ``force``)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < self.redraw_s:
                return
            self._last_draw = now
            c, fig = self._curves, self.figure
            tasks = list(c.evals)
            with fig.batch_update():
                fig.data[0].x, fig.data[0].y = list(c.step), list(c.loss)
                fig.data[1].x, fig.data[1].y = list(c.step), list(c.bpp)
                real = [(s, b) for t in tasks for s, b in zip(c.evals[t]["step"], c.evals[t]["bpp"])
                        if b is not None]
                fig.data[2].x, fig.data[2].y = [s for s, _ in real], [b for _, b in real]
                for t in tasks:
                    trace = next((d for d in fig.data[3:] if d.name == t), None)
                    if trace is None:
                        fig.add_scatter(x=[], y=[], mode="lines+markers", name=t, row=1, col=3)
                        trace = fig.data[-1]
                    trace.x, trace.y = list(c.evals[t]["step"]), list(c.evals[t]["value"])
                if tasks:
                    names = sorted(set(c.metric.values()))
                    fig.layout.annotations[2].text = f"{', '.join(names)} (real streams)"
            self._draw_progress()
            self.log.value = ("<pre style='max-height:160px;overflow:auto;margin:0;font-size:12px;"
                              "white-space:pre-wrap'>" + html.escape("\n".join(self._lines)) + "</pre>")

    def _draw_progress(self) -> None:
        job = self.job
        if job is None:
            return
        step = job.last.get("step")
        self.progress.max = job.max_steps
        self.progress.value = min(job.steps, job.max_steps)
        text = f"<b>{html.escape(job.name)}</b>: {job.status}, step {job.steps} / {job.max_steps}"
        if step is not None and job.status == "running" and step.steps_per_s > 0:
            eta = (job.max_steps - job.steps) / step.steps_per_s
            text += f" &middot; {step.steps_per_s:.2f} steps/s &middot; ETA {_eta(eta)}"
        if step is not None:
            text += f" &middot; loss {step.loss:.4g}, {step.bpp:.4g} bpp (estimated)"
        self.status.value = text
        self.progress.bar_style = {"done": "success", "failed": "danger", "stopped": "warning"}.get(
            job.status, "info")
        self.stop_button.disabled = not any(j.status == "running" for j in self.queue.jobs)
        self.resume_button.disabled = job.status not in ("stopped", "failed")
        queued = [j.name for j in self.queue.jobs if j.status == "queued"]
        self.queue_html.value = ("" if not queued else "queued: " + ", ".join(
            html.escape(n) for n in queued))

    # -- actions ----------------------------------------------------------------------------
    def show_command(self) -> None:
        """Show what Start would submit (the Setup panel's command line)."""
        self.command.value = (f"<code style='font-size:12px;word-break:break-all'>"
                              f"{html.escape(self.setup.command_line())}</code>")

    def on_tab_opened(self) -> None:
        self.show_command()

    def start(self) -> Job | None:
        """Submit the Setup panel's settings (what the Start button does)."""
        self.show_command()
        try:
            self.setup.config()  # an invalid combination: its error, not a queued failure
            job = self.queue.submit(self.setup.overrides(), name=self.run_name.value.strip() or None)
        except ICMError as e:
            self._say(f"{type(e).__name__}: {e}", error=True)
            return None
        self._say("")
        self._log(f"queued {job.name}: {' '.join(job.overrides)}")
        if self.job is None or self.job.status != "running":
            self._follow(job)
        self._draw(force=True)
        return job

    def stop(self) -> None:
        if self.queue.current is not None:
            self._log(f"stopping {self.queue.current.name} at the next step boundary")
            self.queue.stop()

    def resume(self) -> Job | None:
        """Continue the shown run from its checkpoint (what the Resume button does)."""
        if self.job is None or self.job.status not in ("stopped", "failed"):
            self._say("nothing to resume: the shown run is not stopped", error=True)
            return None
        try:
            job = self.queue.resume(self.job)
        except ICMError as e:
            self._say(f"{type(e).__name__}: {e}", error=True)
            return None
        self._say("")
        self._log(f"resume queued: {job.name}")
        if self.job.status != "running":
            self._follow(job)
        self._draw(force=True)
        return job

    # -- events -----------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        """One line at the top of the log, with the time."""
        self._lines.appendleft(f"{time.strftime('%H:%M:%S')} {line}")

    def _follow(self, job: Job) -> None:
        """Show ``job``: a new run folder starts empty curves, a resumed one continues them."""
        with self._lock:
            if self.job is None or self.job.run_dir != job.run_dir:
                self._curves = _Curves()
            self.job = job
            for ev in list(job.events):
                self._record(job, ev, say=False)

    def _record(self, job: Job, ev, say: bool = True) -> None:
        kind = ev.kind
        if kind == "step":
            self._curves.add_step(ev)
        elif kind == "eval":
            self._curves.add_eval(ev)
            if say:
                bpp = "no compression" if ev.bpp is None else f"{ev.bpp:.4f} bpp (real bytes)"
                self._log(f"step {ev.step} {ev.task}: {ev.metric} {ev.value:.4g} at {bpp}, "
                          f"{ev.images} images")
        elif say and kind == "checkpoint":
            self._log(f"step {ev.step}: checkpoint {ev.path}")
        elif say and kind == "log":
            self._log(f"{ev.level}: {ev.message}")
        elif say and kind == "status":
            self._log(f"{job.name}: {ev.status}" + (f" at step {ev.step}" if ev.step else ""))
            if ev.status == "failed":
                self._say(f"{job.name} failed: {ev.error}", error=True)

    def _on_event(self, job: Job, ev) -> None:
        """Queue subscriber (worker thread)."""
        with self._lock:
            if ev.kind == "status" and ev.status == "running" and job is not self.job and (
                    self.job is None or self.job.status != "running"):
                self._follow(job)  # an earlier run's error stays until the next Start
            if job is self.job:
                self._record(job, ev)
            elif ev.kind == "status" and ev.status == "failed":
                self._log(f"{job.name} failed: {ev.error}")
        self._draw(force=ev.kind != "step")


__all__ = ["TrainPanel"]
