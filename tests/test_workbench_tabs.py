"""Every Workbench tab built for real, each panel on the one Panel contract, and the one table
of panels (widgets/registry.py) that the tabs, the lazy loading and ``widgets``' names come from."""

import ipywidgets as W
import pytest
import torch

import widgets
from icm_core.models.icm import build_model
from icm_core.training.checkpoint import save_checkpoint
from widgets import registry
from widgets import workbench as wb
from widgets._panel import Panel, PanelContractError, check_panel
from widgets.inspector import VIEWS, InspectorPanel

from .helpers import TINY, tiny_config


def _descendants(widget):
    """Every widget reachable from ``widget`` through ``children``."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _descendants(child)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return wb.Workbench(tmp_path_factory.mktemp("ws"), overrides=TINY)


def test_every_tab_is_its_panels_widget(bench):
    assert wb.TABS == tuple(e.title for e in registry.PANELS)
    assert [bench.tabs.get_title(i) for i in range(len(wb.TABS))] == list(wb.TABS)
    for index, title in enumerate(wb.TABS):
        bench.select(title)  # what a click on the tab does: lazy panels are built here
        panel = bench.panel(title)
        row = registry.entry(title)
        assert type(panel) is row.load(), title
        assert isinstance(panel, Panel) and isinstance(panel.widget, W.Widget), title
        tab = bench.tabs.children[index]
        shown = tab if title not in wb.LAZY else tab.children[0]
        assert shown is panel.widget, f"the {title} tab does not show its panel's widget"
        assert any(w is panel.message for w in _descendants(panel.widget)), \
            f"the {title} panel's message line is not in its widget"
        assert bench.panel(title) is panel  # built once
    assert isinstance(bench.panel("Inspector"), InspectorPanel)  # the tab that used to raise
    assert bench.train.setup is bench.setup and bench.train.queue is bench.queue
    assert bench.panel("Ablation").setup is bench.setup


def test_tabs_lazy_loading_and_exports_come_from_the_one_table():
    eager = [e.title for e in registry.PANELS if e.eager]
    assert eager == ["Setup", "Train"] and list(wb.TABS[:2]) == eager
    assert wb.LAZY == {e.title: (e.module, e.cls) for e in registry.PANELS if not e.eager}
    for e in registry.PANELS:
        assert e.cls in widgets.__all__ and getattr(widgets, e.cls) is e.load()
    assert widgets.Workbench is wb.Workbench and widgets.Panel is Panel
    with pytest.raises(KeyError, match="tabs are"):
        registry.entry("Nope")


def test_runs_open_in_inspector_opens_the_run_in_the_inspector_tab(bench):
    model = build_model(tiny_config())
    with torch.no_grad():
        for h in model.heads.values():
            h.proj.weight.mul_(40)
    run = bench.workspace / "inspect-me"
    save_checkpoint(run, model, step=1)
    runs = bench.panel("Runs")
    runs.refresh()
    runs.select.value = (str(run),)
    runs.open_button.click()
    inspector = bench.panel("Inspector")
    assert bench.tabs.selected_index == wb.TABS.index("Inspector")
    assert inspector.run_dir == run and inspector.insp is not None
    assert "inspect-me" in inspector.message.value and "bpp" in inspector.message.value
    assert inspector.task.options == tuple(model.tasks)


class _UiOnly:
    """What the Inspector used to be: a layout under ``.ui`` and no ``.widget``."""

    def __init__(self, workspace=None):
        self.ui = W.VBox()


class _NoWidget(Panel):
    def __init__(self):
        super().__init__()


def test_a_panel_off_the_contract_is_refused_with_a_note_in_its_tab(tmp_path, monkeypatch):
    with pytest.raises(PanelContractError, match="not a widgets._panel.Panel"):
        check_panel(_UiOnly(), "row X")
    with pytest.raises(PanelContractError, match=r"_NoWidget.widget is NoneType.*set self.widget"):
        check_panel(_NoWidget(), "row X")
    monkeypatch.setitem(wb.LAZY, "Inspector", (__name__, "_UiOnly"))
    bench = wb.Workbench(tmp_path / "ws", overrides=TINY)
    bench.select("Inspector")
    assert bench.panel("Inspector") is None
    note = bench.tabs.children[wb.TABS.index("Inspector")].children[0].value
    assert "The Inspector panel failed to open: PanelContractError" in note
    assert "_UiOnly is not a widgets._panel.Panel" in note


def test_the_message_line_escapes_and_clears():
    p = _NoWidget()
    p._say("<b>1 < 2</b>")
    assert "&lt;b&gt;1 &lt; 2&lt;/b&gt;" in p.message.value and "#333" in p.message.value
    p._say("ConfigError: x", error=True)
    assert "#b00020" in p.message.value and "ConfigError: x" in p.message.value
    p._say("")
    assert p.message.value == ""


def test_inspector_show_displays_and_show_view_selects(monkeypatch):
    panel = InspectorPanel()
    shown = []
    monkeypatch.setattr("widgets._panel.display", shown.append)
    panel.show()
    panel._ipython_display_()
    assert shown == [panel.widget, panel.widget]
    panel.show("Bits")  # notebooks 03 and 05 select a view so
    assert VIEWS[panel.tabs.selected_index] == "Bits"
    with pytest.raises(KeyError, match="views are"):
        panel.select_view("Nope")
