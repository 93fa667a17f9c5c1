"""Plotly figures of results: rate-accuracy curves (``ra_figure``), ``icm compare``'s chart of
one task (``comparison_figure``) and the ablation's Fig. 5 view (``fig5_figure``).

Pure functions: curves or rows in, a ``plotly.graph_objects.Figure`` out; nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from icm_core.evaluation.results import ENVELOPE, PREPROC_ENVELOPE, Curve

ENVELOPE_COLOURS = {ENVELOPE: "#555555", PREPROC_ENVELOPE: "#d62728"}
MAX_SHOWN = 8  # more curves than this: single pipelines start hidden (click the legend)


def ra_figure(curves: dict[str, tuple[list, list]], metric: str, title: str = "") -> go.Figure:
    """Rate-accuracy curves: name -> (bpp list, metric list), one plotly line per name."""
    fig = go.Figure()
    for name, (bpp, acc) in curves.items():
        order = np.argsort(bpp)
        fig.add_trace(go.Scatter(x=np.asarray(bpp)[order], y=np.asarray(acc)[order],
                                 mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="bits per pixel", yaxis_title=metric,
                      template="plotly_white", width=720, height=460)
    return fig


def comparison_figure(curves: Sequence[Curve], title: str = "") -> go.Figure:
    """The RA figure of one task of ``icm compare``: every method, the uncompressed baseline
    dotted, the learned codec bold, the envelopes wide and pale, pipelines at a reduced scale
    dashed and pre-processor pipelines dash-dotted.

    With more than ``MAX_SHOWN`` curves (every codec at every scale, with and without the
    pre-processor: 26) the single pipelines start hidden, listed in the legend, and the
    learned codec and the envelopes are what one sees."""
    c0 = curves[0]
    fig = ra_figure({c.name: (c.bpp, c.values) for c in curves}, c0.metric, title)
    crowded = len(curves) > MAX_SHOWN
    for trace in fig.data:
        if trace.name.startswith("learned"):
            trace.update(line={"width": 4})
        elif trace.name in ENVELOPE_COLOURS:
            trace.update(line={"width": 6, "color": ENVELOPE_COLOURS[trace.name]}, opacity=0.45,
                         marker={"color": ENVELOPE_COLOURS[trace.name]})
        else:  # one classical or pre-processor pipeline
            if "@" in trace.name or trace.name.startswith("preproc+"):
                trace.update(line={"dash": "dash" if "@" in trace.name else "dashdot"})
            if crowded:
                trace.update(visible="legendonly")
    if c0.uncompressed is not None:
        fig.add_hline(y=c0.uncompressed, line_dash="dot",
                      annotation_text=f"uncompressed baseline ({c0.uncompressed:.3g})")
    fig.update_xaxes(type="log")
    return fig


def fig5_figure(rows: list[dict], title: str = "Ablation (Fig. 5 style)") -> go.Figure:
    """Per task, a row of two charts: metric against trainable % (one marker per run,
    labelled by lambda) and the RA curve of each configuration across lambdas
    (``icm_core.studies.ablation.fig5_rows``' rows)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows)) or ["(no finished run)"]
    titles = []
    for t in tasks:
        metric = next((r["metric"] for r in rows if r["task"] == t), "")
        titles += [f"{t}: {metric} vs trainable backbone %", f"{t}: {metric} vs real bpp"]
    fig = make_subplots(rows=len(tasks), cols=2, subplot_titles=titles, horizontal_spacing=0.12,
                        vertical_spacing=0.25 / max(len(tasks), 1))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colors = {lab: qualitative.Plotly[i % len(qualitative.Plotly)] for i, lab in enumerate(labels)}
    for i, task in enumerate(tasks, start=1):
        for lab in labels:
            pts = sorted((r for r in rows if r["task"] == task and r["label"] == lab),
                         key=lambda r: (r["bpp"] is None, r["bpp"] or 0.0, r["lmbda"]))
            if not pts:
                continue
            text = [f"λ={r['lmbda']:g}" for r in pts]
            common = dict(name=lab, legendgroup=lab, marker=dict(color=colors[lab], size=9),
                          text=text, hovertemplate="%{fullData.name}<br>%{text}<br>"
                          "x=%{x:.4g}<br>y=%{y:.4g}<extra></extra>")
            fig.add_trace(go.Scatter(x=[r["trainable_percent"] for r in pts],
                                     y=[r["value"] for r in pts], mode="markers",
                                     showlegend=(i == 1), **common), row=i, col=1)
            fig.add_trace(go.Scatter(x=[r["bpp"] for r in pts], y=[r["value"] for r in pts],
                                     mode="lines+markers+text", textposition="top center",
                                     showlegend=False, **common), row=i, col=2)
        metric = next((r["metric"] for r in rows if r["task"] == task), "")
        fig.update_xaxes(title_text="trainable backbone parameters (%)", row=i, col=1)
        fig.update_xaxes(title_text="bpp (real bytes)", row=i, col=2)
        fig.update_yaxes(title_text=metric, row=i, col=1)
        fig.update_yaxes(title_text=metric, row=i, col=2)
    fig.update_layout(title=title, height=380 * len(tasks) + 80, template="plotly_white",
                      legend=dict(title="configuration"))
    return fig


__all__ = ["ra_figure", "comparison_figure", "fig5_figure", "ENVELOPE_COLOURS", "MAX_SHOWN"]
