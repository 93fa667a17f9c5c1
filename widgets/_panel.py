"""What every panel with a ``widget`` and a ``message`` line shares: showing itself and
writing one status or error line."""

from __future__ import annotations

import html


class MessagePanel:
    """Base of the panels that own ``self.widget`` (their layout) and ``self.message`` (an
    HTML line for status and one-line errors)."""

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#d62728" if error else "#333"
        self.message.value = f"<span style='color:{colour}'>{html.escape(text, quote=False)}</span>"

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.show()
