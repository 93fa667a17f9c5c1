"""Execute the notebooks and store copies with their outputs for the docs site.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/execute_notebooks.py            # QUICK, all five
    .venv/bin/python scripts/execute_notebooks.py --full notebooks/05_dora_explained.ipynb

The sources in ``notebooks/`` stay output-free; the executed copies go to ``docs/notebooks/``
(same names), which mkdocs-jupyter renders as pages without running a kernel. One notebook at
a time, each in a fresh kernel with one intra-op thread, in a temporary working folder (the
runs it trains are thrown away).

``--quick`` (the default) inserts ``QUICK = True`` after the cell tagged ``parameters``, as
``tests/test_notebooks.py`` does; the inserted cell is kept and tagged ``injected-parameters``
(papermill's convention), so a reader sees which setting produced the outputs. ``--full`` runs
the notebook's own parameters.

What is kept so a reader sees the figures without a kernel:

- plotly figures are displayed as ``application/vnd.plotly.v1+json`` (``PLOTLY_RENDERER=
  plotly_mimetype`` in the kernel), and each gets a ``text/html`` rendering that draws it with
  the ``Plotly`` object the docs site loads (``docs/hooks.py`` serves plotly.min.js from the
  installed plotly package: no network);
- the ipywidgets state is stored in the notebook (``store_widget_state=True``), less the
  JavaScript bundle every plotly FigureWidget carries (anywidget's ``_esm``, 5 MB per figure):
  it is code, not state, and any JupyterLab with plotly installed has it;
- a displayed panel (a widget view) that contains FigureWidgets is given a static rendering of
  those figures (text/html plus the first figure's plotly JSON); the widget view itself is kept
  in the output's metadata (``icm.widget_view``), so the static rendering is what a page or a
  code host shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from icm_core.files import write_text  # noqa: E402

SOURCE = ROOT / "notebooks"
TARGET = ROOT / "docs" / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BUNDLE_KEYS = ("_esm", "_css", "_anywidget_esm")
"""Widget-state fields that hold code (anywidget's JavaScript/CSS bundle), not state."""
BUNDLE_NOTE = "(omitted by scripts/execute_notebooks.py: the front-end bundle, not state)"


def quick(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Insert ``QUICK = True`` after the cell tagged ``parameters`` (which must exist)."""
    tagged = [i for i, c in enumerate(nb.cells)
              if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged or "QUICK" not in nb.cells[tagged[0]].source:
        raise SystemExit("the notebook needs a code cell tagged 'parameters' that sets QUICK")
    cell = nbformat.v4.new_code_cell("QUICK = True  # inserted by scripts/execute_notebooks.py")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def figure_html(figure: dict, height: int | None = None) -> str:
    """A ``<div>`` and a script that draw ``figure`` (plotly JSON: data, layout) with the page's
    ``Plotly`` once the page has loaded (the docs site loads plotly.js at the end of the page).

    The figure takes the page's width (a fixed ``layout.width`` is dropped) and keeps its
    ``layout.height``, which also sizes the ``<div>`` so figures never overlap."""
    div = f"icm-fig-{uuid.uuid4().hex[:12]}"
    layout = {k: v for k, v in (figure.get("layout") or {}).items() if k != "width"}
    layout["autosize"] = True
    height = height or layout.get("height")
    style = f"height:{int(height)}px;" if isinstance(height, (int, float)) else ""
    payload = json.dumps({"data": figure.get("data", []), "layout": layout})
    payload = payload.replace("</", "<\\/")  # never closes the script element early
    return (f'<div id="{div}" class="icm-plotly" style="width:100%;{style}"></div>\n'
            f'<script type="text/javascript">\n'
            f'window.addEventListener("load", function () {{\n'
            f'  if (!window.Plotly) {{ document.getElementById("{div}").textContent = '
            f'"(plotly.js is not loaded: open the notebook in JupyterLab to see this figure)"; '
            f'return; }}\n'
            f'  var fig = {payload};\n'
            f'  Plotly.newPlot("{div}", fig.data, fig.layout, {{responsive: true}});\n'
            f'}});\n</script>')


def _widget_states(nb: nbformat.NotebookNode) -> dict:
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def strip_bundles(nb: nbformat.NotebookNode) -> int:
    """Replace the code bundles in the stored widget state by a note; returns the characters
    removed."""
    removed = 0
    for model in _widget_states(nb).values():
        state = model.get("state", {})
        for key in BUNDLE_KEYS:
            if isinstance(state.get(key), str) and len(state[key]) > len(BUNDLE_NOTE):
                removed += len(state[key])
                state[key] = BUNDLE_NOTE
    return removed


def _is_figure(model: dict) -> bool:
    state = model.get("state", {})
    return "_widget_data" in state and "_widget_layout" in state


def widget_figures(states: dict, model_id: str) -> list[dict]:
    """The plotly figures (data, layout) inside the widget ``model_id``, depth first in the
    order a reader sees them (children, tab pages), each once."""
    found, seen = [], set()

    def walk(mid: str) -> None:
        if mid in seen or mid not in states:
            return
        seen.add(mid)
        model = states[mid]
        if _is_figure(model):
            s = model["state"]
            found.append({"data": s.get("_widget_data") or [],
                          "layout": s.get("_widget_layout") or {}})
            return
        for value in model.get("state", {}).values():
            refs = value if isinstance(value, list) else [value]
            for ref in refs:
                if isinstance(ref, str) and ref.startswith("IPY_MODEL_"):
                    walk(ref[len("IPY_MODEL_"):])

    walk(model_id)
    return found


def _ours(html) -> bool:
    return isinstance(html, str) and 'class="icm-plotly"' in html


def add_static_views(nb: nbformat.NotebookNode) -> int:
    """Give every plotly output and every widget view holding FigureWidgets a static
    ``text/html`` rendering (see the module docstring); returns how many outputs changed.
    Renderings made here before are made again (so a change of ``figure_html`` reaches the
    committed copies without running them: ``--restatic``)."""
    states = _widget_states(nb)
    changed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data")
            if out.get("output_type") not in ("display_data", "execute_result") or not data:
                continue
            view = data.get(WIDGET_VIEW) or out.get("metadata", {}).get("icm", {}).get(
                "widget_view")
            if view:
                figures = widget_figures(states, view.get("model_id", ""))
                if not figures:
                    continue
                note = ('<p class="icm-static-note"><em>A static rendering of the panel\'s '
                        f'{len(figures)} figure{"s" if len(figures) > 1 else ""}; run the '
                        'notebook for the interactive panel.</em></p>')
                html = note + "\n".join(figure_html(f) for f in figures)
                if data.get("text/html") and not _ours(data["text/html"]):
                    continue
                data["text/html"] = html
                data[PLOTLY_MIME] = figures[0]
                out.setdefault("metadata", {}).setdefault("icm", {})["widget_view"] = view
                data.pop(WIDGET_VIEW, None)
                changed += 1
            elif PLOTLY_MIME in data and ("text/html" not in data or _ours(data["text/html"])):
                data["text/html"] = figure_html(data[PLOTLY_MIME])
                changed += 1
    return changed


def text_of(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb)


def execute(path: Path, out_dir: Path, full: bool, timeout: int) -> dict:
    """Run one notebook in a fresh kernel; write the executed copy; return what happened."""
    nb = nbformat.read(path, as_version=4)
    if not full:
        nb = quick(nb)
    env_before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PLOTLY_RENDERER")}
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernel inherits the environment
    os.environ["PLOTLY_RENDERER"] = "plotly_mimetype"
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="icm-nb-") as work:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    store_widget_state=True,
                                    resources={"metadata": {"path": work}})
            client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = round(time.perf_counter() - t0, 1)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    removed = strip_bundles(nb)
    static = add_static_views(nb)
    nb.metadata["icm_executed"] = {"quick": not full, "seconds": seconds,
                                   "by": "scripts/execute_notebooks.py",
                                   "date": time.strftime("%Y-%m-%d")}
    nb.metadata.pop("kernelspec", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    text = text_of(nb)
    out = out_dir / path.name
    write_text(out, text)
    return {"notebook": path.name, "quick": not full, "seconds": seconds,
            "errors": len(errors), "bytes": len(text.encode()), "bundle_chars_removed": removed,
            "static_views": static, "out": str(out)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    p.add_argument("--out", type=Path, default=TARGET)
    p.add_argument("--full", action="store_true", help="the notebooks' own parameters "
                   "(QUICK = False); default: QUICK = True, as the tests run them")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--restatic", action="store_true", help="run no kernel: redo the static "
                   "renderings of the executed copies already in --out")
    args = p.parse_args(argv)
    paths = args.notebooks or sorted(SOURCE.glob("*.ipynb"))
    reports = []
    if args.restatic:
        for path in paths:
            out = args.out / path.name
            nb = nbformat.read(out, as_version=4)
            n = add_static_views(nb)
            write_text(out, text_of(nb))
            print(f"{out}: {n} static renderings redone")
        return reports
    for path in paths:
        print(f"executing {path.name} ({'full' if args.full else 'QUICK'}) ...", flush=True)
        r = execute(path, args.out, args.full, args.timeout)
        print(json.dumps(r), flush=True)
        reports.append(r)
    return reports


if __name__ == "__main__":
    main()
