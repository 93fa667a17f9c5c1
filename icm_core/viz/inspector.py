"""Plotly figures and captions of the inspector's views, from what ``icm_core.inspection``
computed (the Inspector panel, widgets/inspector.py, only wires controls to these).

Only drawing here: every number comes from the inspection objects, passed in as they are
(tensors or arrays; nothing is imported from the inspection layer, which sits above this one).
Images are drawn in pixel coordinates (y down), and overlays are heatmaps on the same axes, so
a click on an overlay reports an image pixel.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from icm_core.errors import ConfigError
from icm_core.viz.images import colorize, image_to_uint8

GRID = 8  # pixels per overlay cell: clicks resolve to 8 px, the finest decoder query spacing
SECTION_COLOURS = {"header": "#999999", "z": "#1f77b4", "step 1": "#ff7f0e", "step 2": "#2ca02c"}
BITS_MAPS = ("total", "step1", "step2")


def picture(rgb: np.ndarray, name: str) -> go.Image:
    """An (H, W, 3) uint8 picture as a PNG source: far lighter for the widget than z arrays."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return go.Image(source=uri, name=name, hoverinfo="skip")


def _axes(fig: go.Figure, height: int, width: int, row=None, col=None) -> None:
    fig.update_xaxes(range=[-0.5, width - 0.5], showticklabels=False, row=row, col=col)
    fig.update_yaxes(range=[height - 0.5, -0.5], showticklabels=False, scaleanchor=None,
                     row=row, col=col)


def cells(values, spacing: int, name: str, colorscale: str = "Turbo", opacity: float = 0.6,
          zmin=None, zmax=None, hover: str = "%{z:.4g}") -> go.Heatmap:
    """A heatmap whose cells are ``spacing`` image pixels wide, centred where they belong."""
    return go.Heatmap(z=np.asarray(values), x0=(spacing - 1) / 2, dx=spacing, y0=(spacing - 1) / 2,
                      dy=spacing, colorscale=colorscale, opacity=opacity, zmin=zmin, zmax=zmax,
                      name=name,
                      hovertemplate=f"y %{{y:.0f}} x %{{x:.0f}}<br>{name} {hover}<extra></extra>")


def downsample(over_image, g: int = GRID) -> np.ndarray:
    """(H, W) -> one value per g x g cell (the cell's top-left pixel: maps are piecewise
    constant over cells at least this large)."""
    return np.asarray(over_image)[::g, ::g]


def same_shape(trace_z, values) -> bool:
    """Does a drawn heatmap trace's ``z`` have the shape of ``values`` (so it can be updated
    in place)?"""
    return np.shape(trace_z) == np.shape(values)


def predictions_figure(task: str, image, target, preliminary, prediction, error,
                       error_name: str) -> go.Figure:
    """Input, ground truth, preliminary and final prediction, error map (``error`` None: no
    label)."""
    titles = ["input", "ground truth", "preliminary", "prediction", error_name]
    fig = make_subplots(1, 5, subplot_titles=titles, horizontal_spacing=0.01)
    H, W = image.shape[-2:]
    fig.add_trace(picture(image_to_uint8(image), "input"), 1, 1)
    if target is not None:
        fig.add_trace(picture(colorize(task, target), "ground truth"), 1, 2)
    fig.add_trace(picture(colorize(task, preliminary), "preliminary"), 1, 3)
    fig.add_trace(picture(colorize(task, prediction), "prediction"), 1, 4)
    if error is not None:
        fig.add_trace(go.Heatmap(z=np.asarray(error), colorscale="Reds", name="error",
                                 showscale=True,
                                 hovertemplate="y %{y} x %{x}<br>error %{z:.4g}<extra></extra>"),
                      1, 5)
    for c in range(1, 6):
        _axes(fig, H, W, 1, c)
        fig.update_yaxes(scaleanchor="x" if c == 1 else f"x{c}", constrain="domain", row=1, col=c)
    fig.update_layout(height=260, margin=dict(l=5, r=5, t=30, b=5))
    return fig


def error_caption(error, unit: str) -> str:
    """The line under the predictions: the mean of the error map over labelled pixels."""
    return "" if error is None else f"mean {unit}: {np.nanmean(np.asarray(error)):.4g}"


def sections_figure(sections: dict[str, int], estimate: dict[str, float]) -> go.Figure:
    """Stacked bytes per section: the real stream beside the entropy model's estimate."""
    fig = go.Figure()
    for name, colour in SECTION_COLOURS.items():
        fig.add_trace(go.Bar(x=["stream", "estimate"], y=[sections[name], estimate[name]],
                             name=name, marker_color=colour,
                             hovertemplate=f"{name}: %{{y:.1f}} bytes<extra></extra>"))
    fig.update_layout(barmode="stack", yaxis_title="bytes", height=300, width=320,
                      margin=dict(l=40, r=5, t=30, b=30))
    return fig


def overlay_figure(image, values, spacing: int, name: str, opacity: float = 0.6,
                   colorscale: str = "Turbo", zmax=None, marker=([], [])) -> go.Figure:
    """The image with a coarse map over it (trace 0: image, trace 1: the map, trace 2: a
    marker at ``marker`` = (xs, ys), e.g. the attention query)."""
    H, W = image.shape[-2:]
    fig = go.Figure([picture(image_to_uint8(image), "image"),
                     cells(values, spacing, name, colorscale, opacity, zmin=0, zmax=zmax)])
    fig.add_trace(go.Scatter(x=list(marker[0]), y=list(marker[1]), mode="markers", name="query",
                             marker=dict(symbol="x", size=12, color="white",
                                         line=dict(width=2, color="black"))))
    _axes(fig, H, W)
    fig.update_layout(height=max(260, int(360 * H / max(W, 1))), width=380,
                      margin=dict(l=5, r=5, t=30, b=5), title=name, showlegend=False)
    return fig


def bits_figure(image, bits, which: str = "total", opacity: float = 0.6) -> go.Figure:
    """The image under one bit map of a ``BitAllocation`` (``which``: total, step1 or step2),
    cropped to the latent positions that cover the image; one colour scale for all three."""
    if which not in BITS_MAPS:
        raise ConfigError(f"bits map {which!r}: choose one of {BITS_MAPS}")
    m = {"total": bits.bits_map, "step1": bits.step1_map, "step2": bits.step2_map}[which]
    h, w = bits.valid_hw
    zmax = float(np.asarray(bits.bits_map)[:h, :w].max())
    return overlay_figure(image, np.asarray(m)[:h, :w], bits.latent_stride,
                          "bits per latent position", opacity, zmax=zmax)


def bits_caption(bits) -> str:
    """The stream's sections and rates of a ``BitAllocation`` in one line."""
    b = bits
    at = "" if b.rate is None else f" at rate {b.rate:.3g}"
    return (f"stream{at} {b.total_bytes} bytes = header {b.header_bytes} + z {b.z_bytes} + "
            f"step 1 {b.step1_bytes} + step 2 {b.step2_bytes}; {b.bpp:.4f} bpp real, "
            f"{b.bpp_estimated:.4f} bpp estimated ({b.estimated_bits:.1f} bits)")


def channel_bars(bits_per_channel, order: list[int]) -> go.Figure:
    """Bits per channel of y, in ``order`` (most bits first)."""
    y = np.asarray(bits_per_channel)[order]
    fig = go.Figure(go.Bar(x=[f"{c}" for c in order], y=y,
                           hovertemplate="channel %{x}: %{y:.2f} bits<extra></extra>"))
    fig.update_layout(xaxis_title="channel of y (most bits first)", yaxis_title="bits",
                      height=260, margin=dict(l=40, r=5, t=20, b=40))
    return fig


def planes_figure(planes: dict, names: list[str], cols: int = 5) -> go.Figure:
    """A grid of (h, w) latent planes, one heatmap each, shared orientation (row 0 on top)."""
    rows = -(-len(names) // cols)
    fig = make_subplots(rows, cols, subplot_titles=names, horizontal_spacing=0.02,
                        vertical_spacing=0.08)
    for i, n in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Heatmap(z=np.asarray(planes[n]), coloraxis=None, showscale=False, name=n,
                                 colorscale="RdBu" if "mean" in n or n in ("y_hat", "residual")
                                 else "Viridis",
                                 hovertemplate=f"{n}<br>row %{{y}} col %{{x}}: %{{z:.3g}}"
                                               "<extra></extra>"), r, c)
        fig.update_yaxes(autorange="reversed", showticklabels=False, row=r, col=c)
        fig.update_xaxes(showticklabels=False, row=r, col=c)
    fig.update_layout(height=170 * rows + 30, margin=dict(l=5, r=5, t=30, b=5))
    return fig


def channels_figure(y_hat, order: list[int], n: int = 10) -> go.Figure:
    """The ``n`` most expensive channels of one image's (M, h, w) ``y_hat``, one plane each."""
    y = np.asarray(y_hat)
    grid = {f"ch {c}": y[c] for c in order[:n]}
    return planes_figure(grid, list(grid))


def dora_figure(view) -> go.Figure:
    """m against ||W0||, the direction cosine per output unit, singular values of the update."""
    fig = make_subplots(1, 3, horizontal_spacing=0.08, subplot_titles=[
        "magnitude m vs ||W0||", "direction: cos(W0, W')", "singular values"])
    lo, hi = float(min(view.w0_norms.min(), view.magnitude.min())), \
        float(max(view.w0_norms.max(), view.magnitude.max()))
    fig.add_trace(go.Scatter(x=view.w0_norms, y=view.magnitude, mode="markers", name="units",
                             hovertemplate="||W0|| %{x:.4g}<br>m %{y:.4g}<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="m = ||W0||",
                             line=dict(dash="dot", color="grey")), 1, 1)
    fig.add_trace(go.Scatter(y=view.direction_cosine, mode="lines", name="cosine"), 1, 2)
    k = np.arange(1, len(view.delta_singular_values) + 1)
    fig.add_trace(go.Scatter(x=k, y=view.delta_singular_values, mode="lines+markers",
                             name="W' - W0"), 1, 3)
    fig.add_trace(go.Scatter(x=k, y=view.lora_singular_values, mode="lines+markers",
                             name="s B A"), 1, 3)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_xaxes(title="||W0|| (row)", row=1, col=1)
    fig.update_xaxes(title="output unit", row=1, col=2)
    fig.update_xaxes(title="index", row=1, col=3)
    fig.update_layout(height=320, width=1000, margin=dict(l=40, r=5, t=40, b=40))
    return fig


def dora_caption(view) -> str:
    """One adapted layer in a line: rank, scaling, the ranks of the update, the mean magnitude
    change and the smallest direction cosine of a ``DoraView``."""
    change = np.abs(np.asarray(view.magnitude) - np.asarray(view.w0_norms)).mean()
    return (f"{view.mode.upper()} rank {view.rank}, s = {view.scaling:g}: rank of s B A "
            f"{view.rank_of('lora')}, rank of W' - W0 {view.rank_of('delta')}; mean |m - ||W0||| "
            f"{change:.3g}, min cosine {np.asarray(view.direction_cosine).min():.6f}")


__all__ = ["GRID", "BITS_MAPS", "bits_caption", "bits_figure", "cells", "channel_bars",
           "channels_figure", "dora_caption", "dora_figure", "downsample", "error_caption",
           "overlay_figure", "picture", "planes_figure", "predictions_figure", "same_shape",
           "sections_figure"]
