"""FigureWidgets that know whether their view in the browser has drawn.

plotly's FigureWidget (6.x-7.x) has a race: a figure changed from Python while its view is
still drawing (``newPlot`` pending, e.g. a cell that displays a figure and updates it at once,
or "Run All Cells") never registers its click, hover and relayout handlers, so clicks on it
never reach Python again; the figure still redraws. Measured in a real JupyterLab with
``scripts/ui_check.py``: the inspector's attention figure, updated right after it was shown,
ignored every click. A figure whose view has drawn reports its traces back once
(``_js2py_traceDeltas``); until then, a panel builds a new figure instead of changing it.
"""

from __future__ import annotations

import plotly.graph_objects as go


def live_figure(fig: go.Figure) -> go.FigureWidget:
    """``go.FigureWidget(fig)`` that records when a browser view has drawn it."""
    widget = go.FigureWidget(fig)
    widget._icm_drawn = False

    def drawn(change) -> None:
        if change["new"] is not None:
            widget._icm_drawn = True

    widget.observe(drawn, names="_js2py_traceDeltas")
    return widget


def drawn(widget) -> bool:
    """Has a browser view finished drawing ``widget`` (so changing it in place is safe)?
    False without a frontend (tests, scripts): callers then build a new figure."""
    return bool(getattr(widget, "_icm_drawn", False))


__all__ = ["drawn", "live_figure"]
