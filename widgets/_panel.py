"""The one base of every workbench panel, and the contract it stands for."""

from __future__ import annotations

import html

import ipywidgets as W
from IPython.display import display

from icm_core.errors import ICMError


class PanelContractError(ICMError, TypeError):
    """A panel class that does not keep the contract of ``Panel``."""


class Panel:
    """Base of every panel of the workbench. The contract a panel keeps:

    - **One file, one class.** ``widgets/<name>.py`` holds one ``Panel`` subclass, registered
      by one row in ``widgets/registry.PANELS`` (its tab title, module, class; eager or lazy).
    - **``widget``**: the panel's whole ipywidgets layout, one ``ipywidgets.Widget`` set in
      ``__init__``. The Workbench puts exactly this in the panel's tab; a notebook displays it.
    - **``message``**: one ``ipywidgets.HTML`` line for status and one-line errors, made here
      (call ``super().__init__()`` first) and placed by the panel in its ``widget``. Written
      only through ``_say(text, error=False)``: escaped, red when ``error``, cleared by ``""``.
      An ``ICMError`` met in a callback is said there, never raised into the browser.
    - **``show()``** and **``_ipython_display_``**: display ``widget``, so a panel that is the
      last value of a cell shows itself.
    - **``on_tab_opened()``**: called by the Workbench each time the panel's tab is opened
      (default: nothing; the Train panel shows the Setup panel's current command line).
    - **Construction**: the Workbench passes the keyword arguments the constructor names, of
      ``workspace`` (the runs folder), ``queue`` (the background ``RunQueue``), ``setup`` (the
      Setup panel) and ``overrides`` (the Workbench's initial settings).
    - **No model math**: every number shown comes from ``icm_core`` (figures from
      ``icm_core.viz``); a panel wires controls to library calls.
    """

    widget: W.Widget
    message: W.HTML

    def __init__(self) -> None:
        self.message = W.HTML(layout=W.Layout(width="100%"))

    def _say(self, text: str, error: bool = False) -> None:
        """Write the message line (``""`` clears it)."""
        if not text:
            self.message.value = ""
            return
        colour = "#b00020" if error else "#333"
        self.message.value = (f"<span style='color:{colour};white-space:pre-wrap'>"
                              f"{html.escape(text, quote=False)}</span>")

    def on_tab_opened(self) -> None:
        """The panel's tab was opened in the Workbench."""

    def show(self) -> None:
        display(self.widget)

    def _ipython_display_(self) -> None:
        self.show()


def check_panel(panel, where: str) -> Panel:
    """``panel`` if it keeps the contract (a ``Panel`` with an ipywidgets ``widget``), else a
    ``PanelContractError`` that names ``where`` (the registry row) and what is missing."""
    if not isinstance(panel, Panel):
        raise PanelContractError(f"{where}: {type(panel).__name__} is not a widgets._panel.Panel; "
                                 "derive the panel class from Panel (its docstring is the contract)")
    widget = getattr(panel, "widget", None)
    if not isinstance(widget, W.Widget):
        raise PanelContractError(f"{where}: {type(panel).__name__}.widget is "
                                 f"{type(widget).__name__}, not an ipywidgets Widget; set "
                                 "self.widget to the panel's layout in __init__")
    return panel


__all__ = ["Panel", "PanelContractError", "check_panel"]
