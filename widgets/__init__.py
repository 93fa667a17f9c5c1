"""The workbench's ipywidgets panels; they call ``icm_core`` and hold no model math.

``from widgets import Workbench; Workbench("runs/").show()``. Names are imported on first use,
so ``import widgets`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Workbench": "widgets.workbench", "SetupPanel": "widgets.setup",
            "TrainPanel": "widgets.train_panel", "RunsPanel": "widgets.runs", "RAPanel": "widgets.ra",
            "AblationPanel": "widgets.ablation", "InspectorPanel": "widgets.inspector"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")
