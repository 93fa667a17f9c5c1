"""The workbench's ipywidgets panels; they call ``icm_core`` and hold no model math.

``from widgets import Workbench; Workbench("runs/").show()``. Every panel is one file on
``widgets._panel.Panel`` (its docstring is the panel contract) and one row of
``widgets.registry.PANELS``, from which the exported names below come. Names are imported on
first use, so ``import widgets`` stays light.
"""

from __future__ import annotations

import importlib

from widgets.registry import exports

_EXPORTS = exports()
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")
