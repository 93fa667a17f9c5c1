"""Plotly figures of the inspector's views, built from what ``icm_core.inspection.image*`` computed.

Only drawing here: every number comes from ``icm_core``. Images are drawn in pixel
coordinates (y down), and overlays are heatmaps on the same axes, so a click on an overlay
reports an image pixel.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icm_core.viz.images import colorize, image_to_uint8


def picture(rgb: np.ndarray, name: str) -> go.Image:
    """An (H, W, 3) uint8 picture as a PNG source: far lighter for the widget than z arrays."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return go.Image(source=uri, name=name, hoverinfo="skip")


GRID = 8  # pixels per overlay cell: clicks resolve to 8 px, the finest decoder query spacing
SECTION_COLOURS = {"header": "#999999", "z": "#1f77b4", "step 1": "#ff7f0e", "step 2": "#2ca02c"}


def _axes(fig: go.Figure, height: int, width: int, row=None, col=None) -> None:
    fig.update_xaxes(range=[-0.5, width - 0.5], showticklabels=False, row=row, col=col)
    fig.update_yaxes(range=[height - 0.5, -0.5], showticklabels=False, scaleanchor=None,
                     row=row, col=col)


def cells(values: np.ndarray, spacing: int, name: str, colorscale: str = "Turbo",
          opacity: float = 0.6, zmin=None, zmax=None, hover: str = "%{z:.4g}") -> go.Heatmap:
    """A heatmap whose cells are ``spacing`` image pixels wide, centred where they belong."""
    return go.Heatmap(z=values, x0=(spacing - 1) / 2, dx=spacing, y0=(spacing - 1) / 2, dy=spacing,
                      colorscale=colorscale, opacity=opacity, zmin=zmin, zmax=zmax, name=name,
                      hovertemplate=f"y %{{y:.0f}} x %{{x:.0f}}<br>{name} {hover}<extra></extra>")


def downsample(over_image: np.ndarray, g: int = GRID) -> np.ndarray:
    """(H, W) -> one value per g x g cell (the cell's top-left pixel: maps are piecewise
    constant over cells at least this large)."""
    return over_image[::g, ::g]


def predictions_figure(task: str, image, target, preliminary, prediction, error: np.ndarray | None,
                       error_name: str) -> go.Figure:
    """Input, ground truth, preliminary and final prediction, error map."""
    titles = ["input", "ground truth", "preliminary", "prediction", error_name]
    fig = make_subplots(1, 5, subplot_titles=titles, horizontal_spacing=0.01)
    H, W = image.shape[-2:]
    fig.add_trace(picture(image_to_uint8(image), "input"), 1, 1)
    if target is not None:
        fig.add_trace(picture(colorize(task, target), "ground truth"), 1, 2)
    fig.add_trace(picture(colorize(task, preliminary), "preliminary"), 1, 3)
    fig.add_trace(picture(colorize(task, prediction), "prediction"), 1, 4)
    if error is not None:
        fig.add_trace(go.Heatmap(z=error, colorscale="Reds", name="error", showscale=True,
                                 hovertemplate="y %{y} x %{x}<br>error %{z:.4g}<extra></extra>"),
                      1, 5)
    for c in range(1, 6):
        _axes(fig, H, W, 1, c)
        fig.update_yaxes(scaleanchor="x" if c == 1 else f"x{c}", constrain="domain", row=1, col=c)
    fig.update_layout(height=260, margin=dict(l=5, r=5, t=30, b=5))
    return fig


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


def overlay_figure(image, values: np.ndarray, spacing: int, name: str, opacity: float = 0.6,
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


def channel_bars(bits_per_channel: np.ndarray, order: list[int]) -> go.Figure:
    fig = go.Figure(go.Bar(x=[f"{c}" for c in order], y=bits_per_channel[order],
                           hovertemplate="channel %{x}: %{y:.2f} bits<extra></extra>"))
    fig.update_layout(xaxis_title="channel of y (most bits first)", yaxis_title="bits",
                      height=260, margin=dict(l=40, r=5, t=20, b=40))
    return fig


def planes_figure(planes: dict[str, np.ndarray], names: list[str], cols: int = 5) -> go.Figure:
    """A grid of (h, w) latent planes, one heatmap each, shared orientation (row 0 on top)."""
    rows = -(-len(names) // cols)
    fig = make_subplots(rows, cols, subplot_titles=names, horizontal_spacing=0.02,
                        vertical_spacing=0.08)
    for i, n in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Heatmap(z=planes[n], coloraxis=None, showscale=False, name=n,
                                 colorscale="RdBu" if "mean" in n or n in ("y_hat", "residual")
                                 else "Viridis",
                                 hovertemplate=f"{n}<br>row %{{y}} col %{{x}}: %{{z:.3g}}"
                                               "<extra></extra>"), r, c)
        fig.update_yaxes(autorange="reversed", showticklabels=False, row=r, col=c)
        fig.update_xaxes(showticklabels=False, row=r, col=c)
    fig.update_layout(height=170 * rows + 30, margin=dict(l=5, r=5, t=30, b=5))
    return fig


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
