"""The one table of the workbench's panels: tab title -> (module, class), eager or lazy.

The Workbench's tabs (``widgets.workbench.TABS``, in this order), its lazy loading and the
names ``widgets`` exports are all read from ``PANELS``. A new panel is one file on
``widgets._panel.Panel`` plus one row here. Eager panels are built with the Workbench, in
table order (the Setup panel first: later panels receive it as ``setup``); lazy ones the first
time their tab opens. This module imports nothing heavy, so ``import widgets`` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class PanelEntry:
    """One tab: its ``title``, the ``module`` and ``cls`` of its panel, built at once (``eager``)
    or when first opened."""

    title: str
    module: str
    cls: str
    eager: bool = False

    def load(self) -> type:
        """The panel class (imports its module)."""
        return getattr(importlib.import_module(self.module), self.cls)


PANELS: tuple[PanelEntry, ...] = (
    PanelEntry("Setup", "widgets.setup", "SetupPanel", eager=True),
    PanelEntry("Train", "widgets.train_panel", "TrainPanel", eager=True),
    PanelEntry("Runs", "widgets.runs", "RunsPanel"),
    PanelEntry("Rate-accuracy", "widgets.ra", "RAPanel"),
    PanelEntry("Ablation", "widgets.ablation", "AblationPanel"),
    PanelEntry("Inspector", "widgets.inspector", "InspectorPanel"),
)


def entry(title: str) -> PanelEntry:
    """The row of tab ``title`` (``KeyError`` naming the tabs when there is none)."""
    for e in PANELS:
        if e.title == title:
            return e
    raise KeyError(f"no tab {title!r}; tabs are {[e.title for e in PANELS]}")


def exports() -> dict[str, str]:
    """Name -> module of what ``widgets`` exports: the Workbench, the base and every panel."""
    return {"Workbench": "widgets.workbench", "Panel": "widgets._panel",
            **{e.cls: e.module for e in PANELS}}


__all__ = ["PANELS", "PanelEntry", "entry", "exports"]
