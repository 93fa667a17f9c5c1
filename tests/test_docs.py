"""The docs site: it builds offline with ``mkdocs build --strict``, it has the five notebooks as
pages, its measurement tables are the committed summary JSON, and the helpers that render
tables and notebook figures behave on bad or missing input."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _script("docs_tables")
execnb = _script("execute_notebooks")


# -- the measurement tables ---------------------------------------------------------------------
def test_measurements_page_is_up_to_date_with_the_json():
    page = tables.PAGE.read_text(encoding="utf-8")
    assert tables.fill(page, tables.SUMMARY) == page, \
        "docs/measurements.md is stale: run python scripts/docs_tables.py"
    names = tables.table_names(page)
    assert len(names) >= 7 and len(set(names)) == len(names)
    for name in names:  # every table comes from a committed summary, none is a placeholder
        doc = tables.load_summary(tables.SUMMARY / f"{name}.json")
        body = re.search(rf"<!-- table: {name} -->\n(.*?)<!-- /table -->", page, re.DOTALL)[1]
        rows = [r for r in body.splitlines() if r.startswith("| ")][2:]
        assert len(rows) == len(doc["rows"])
        for line, row in zip(rows, doc["rows"]):
            cells = [c.strip().strip("*") for c in line.strip("|").split(" | ")]
            assert cells[0] == str(row[0])
            assert len(cells) == len(doc["columns"])


def test_readme_tables_come_from_the_committed_json():
    readme = ROOT / "README.md"
    assert readme in tables.PAGES
    page = readme.read_text(encoding="utf-8")
    assert tables.table_names(page), "the README shows measured tables"
    assert tables.fill(page, tables.SUMMARY) == page, \
        "README.md is stale: run python scripts/docs_tables.py"
    assert "not available" not in page.lower()


def test_generated_summaries_are_what_their_script_makes_of_the_committed_results(tmp_path):
    """Every summary a script made from a committed results JSON (``generated_by``) is
    regenerated from that JSON into a temporary folder and must be the committed file."""
    made = []
    for path in sorted(tables.SUMMARY.glob("*.json")):
        command = json.loads(path.read_text()).get("generated_by")
        if not command:
            continue  # transcribed summaries (say so in their title) have no generator
        words = shlex.split(command)
        assert words[:2] == ["python", words[1]] and words[1].startswith("scripts/"), command
        script = _script(Path(words[1]).stem)
        out = tmp_path / Path(words[1]).stem
        out.mkdir(exist_ok=True)
        assert script.main([*words[2:], "--summary-dir", str(out)]) == 0
        assert (out / path.name).read_text() == path.read_text(), \
            f"{path.name} is stale: run {command}"
        made.append(path.name)
    assert {"compare_test.json", "costs_paper.json", "rate_goal.json",
            "rate_modes.json", "rate_levers.json", "rate_six.json", "rate_valcand.json",
            "ladders_candidates.json", "ladders_per_lambda.json", "choices_val.json",
            "backbones_lr.json"} <= set(made)


def test_numbers_are_formatted_per_column_and_the_best_is_bold():
    page = tables.PAGE.read_text(encoding="utf-8")
    # backbones_uncompressed: depth RMSE is lower-is-better, Full FT's 1.027 the best
    assert "| Full FT (synthetic) | 99.98 | 19.70 | **1.027** | **24.54** |" in page
    assert "| DoRA r8 qkv (synthetic) | 2.02 | **20.77** | 1.052 |" in page


def test_render_formats_bolds_and_escapes():
    doc = {"columns": [{"name": "row"}, {"name": "bpp", "format": ".3f", "best": "min"},
                       {"name": "mIoU", "format": ".1f", "best": "max"}],
           "rows": [["a|b", 0.12345, 20.0], ["c", 0.1, 19.96], ["d", None, "n/a"]],
           "source": "python bench.py"}
    out = tables.render(doc).splitlines()
    assert out[0] == "| row | bpp | mIoU |"
    assert out[2] == "| a\\|b | 0.123 | **20.0** |"
    assert out[3] == "| c | **0.100** | 20.0 |"
    assert out[4] == "| d | n/a | n/a |"
    assert out[-1] == "<small>Measured by `python bench.py`.</small>"


def test_missing_or_broken_summaries_become_notes(tmp_path):
    (tmp_path / "good.json").write_text(json.dumps(
        {"columns": [{"name": "x"}], "rows": [["1"]]}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "short.json").write_text(json.dumps(
        {"columns": [{"name": "x"}, {"name": "y"}], "rows": [["1"]]}))
    page = "".join(f"<!-- table: {n} -->\nold\n<!-- /table -->\n"
                   for n in ("good", "missing", "broken", "short"))
    said = []
    out = tables.fill(page, tmp_path, warn=said.append)
    blocks = dict(re.findall(r"<!-- table: (\w+) -->\n(.*?)<!-- /table -->", out, re.DOTALL))
    assert blocks["good"] == "| x |\n| --- |\n| 1 |\n"
    assert "missing.json" in blocks["missing"] and "is missing" in blocks["missing"]
    assert "not readable JSON" in blocks["broken"]
    assert "rows[0] has 1 cells; the table has 2 columns" in blocks["short"]
    assert all(b.startswith('!!! warning "Not available"') for k, b in blocks.items() if k != "good")
    assert len(said) == 3
    assert tables.fill(out, tmp_path) == out  # idempotent


def test_bad_best_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"columns": [{"name": "x", "best": "largest"}], "rows": []}))
    with pytest.raises(tables.TableError, match=r"t\.json: columns\[0\]\.best='largest'"):
        tables.load_summary(path)


def test_check_mode_exit_codes(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"columns": [{"name": "x"}], "rows": [["1"]]}))
    page = tmp_path / "page.md"
    page.write_text("<!-- table: t -->\n<!-- /table -->\n")
    args = ["--page", str(page), "--summary", str(tmp_path)]
    assert tables.main([*args, "--check"]) == 1
    assert tables.main(args) == 0
    assert tables.main([*args, "--check"]) == 0


# -- the executed notebooks ---------------------------------------------------------------------
def _figure_state(data):
    return {"model_name": "AnyModel", "model_module": "anywidget",
            "state": {"_esm": "x" * 5000, "_widget_data": data,
                      "_widget_layout": {"title": {"text": "t"}}}}


def _panel_notebook():
    nb = nbformat.v4.new_notebook()
    state = {"box": {"model_name": "VBoxModel", "state": {
                 "children": ["IPY_MODEL_fig1", "IPY_MODEL_label", "IPY_MODEL_tab"]}},
             "tab": {"model_name": "TabModel", "state": {"children": ["IPY_MODEL_fig2"]}},
             "label": {"model_name": "LabelModel", "state": {"value": "hi"}},
             "fig1": _figure_state([{"type": "scatter", "y": [1, 2]}]),
             "fig2": _figure_state([{"type": "bar", "y": [3]}])}
    nb.metadata["widgets"] = {execnb.WIDGET_STATE: {"version_major": 2, "version_minor": 0,
                                                    "state": state}}
    cell = nbformat.v4.new_code_cell("panel")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            execnb.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0},
            "text/plain": "VBox(...)"}),
        nbformat.v4.new_output("display_data", data={
            execnb.PLOTLY_MIME: {"data": [{"type": "scatter", "y": [5]}], "layout": {}}}),
        nbformat.v4.new_output("display_data", data={
            execnb.WIDGET_VIEW: {"model_id": "label"}, "text/plain": "Label"}),
    ]
    nb.cells.append(cell)
    return nb


def test_widget_figures_walks_children_in_order():
    nb = _panel_notebook()
    figs = execnb.widget_figures(execnb._widget_states(nb), "box")
    assert [f["data"][0]["type"] for f in figs] == ["scatter", "bar"]
    assert figs[0]["layout"] == {"title": {"text": "t"}}
    assert execnb.widget_figures(execnb._widget_states(nb), "nope") == []


def test_static_views_and_bundle_stripping():
    nb = _panel_notebook()
    assert execnb.strip_bundles(nb) == 10000
    state = execnb._widget_states(nb)
    assert state["fig1"]["state"]["_esm"] == execnb.BUNDLE_NOTE
    assert state["fig1"]["state"]["_widget_data"] == [{"type": "scatter", "y": [1, 2]}]
    assert execnb.add_static_views(nb) == 2
    panel, plot, label = nb.cells[0].outputs
    # the panel: static figures first, the widget view moved to the output's metadata
    assert execnb.WIDGET_VIEW not in panel["data"]
    assert panel["metadata"]["icm"]["widget_view"]["model_id"] == "box"
    assert panel["data"]["text/html"].count('class="icm-plotly"') == 2
    assert panel["data"][execnb.PLOTLY_MIME]["data"][0]["type"] == "scatter"
    # a bare plotly output gets its html; a widget without figures is left alone
    assert 'Plotly.newPlot' in plot["data"]["text/html"]
    assert label["data"][execnb.WIDGET_VIEW] == {"model_id": "label"}
    again = copy.deepcopy(nb)  # --restatic: our renderings are redone, nothing else changes
    assert execnb.add_static_views(again) == 2
    assert again.cells[0].outputs[2] == label
    assert again.cells[0].outputs[0]["metadata"] == panel["metadata"]
    assert again.cells[0].outputs[0]["data"]["text/html"].count('class="icm-plotly"') == 2
    nbformat.validate(nb)


def test_figure_html_takes_the_page_width_and_keeps_its_height():
    html = execnb.figure_html({"data": [], "layout": {"width": 1500, "height": 420}})
    fig = json.loads(re.search(r"var fig = (.*);\n", html)[1])
    assert "width" not in fig["layout"] and fig["layout"]["autosize"] is True
    assert fig["layout"]["height"] == 420 and "height:420px" in html


def test_figure_html_cannot_close_its_script():
    html = execnb.figure_html({"data": [{"type": "scatter", "name": "</script><b>x"}]})
    assert html.count("</script>") == 1
    assert "<\\/script>" in html


def test_quick_inserts_a_tagged_cell_after_parameters():
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("QUICK = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("import x"), params, nbformat.v4.new_code_cell("run")]
    execnb.quick(nb)
    assert nb.cells[2].source.startswith("QUICK = True")
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    with pytest.raises(SystemExit, match="tagged 'parameters'"):
        execnb.quick(nbformat.v4.new_notebook())


def test_committed_executed_notebooks():
    """Each notebook has an executed copy for the docs: same code cells, outputs, no errors,
    small; the sources stay output-free."""
    for name in NOTEBOOKS:
        src = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert not any(c.get("outputs") for c in src.cells if c.cell_type == "code"), name
        path = ROOT / "docs" / "notebooks" / f"{name}.ipynb"
        assert path.stat().st_size < 2_000_000, f"{path} is over 2 MB"
        done = nbformat.read(path, as_version=4)
        code = [c.source for c in done.cells if c.cell_type == "code"
                and "injected-parameters" not in c.metadata.get("tags", [])]
        assert code == [c.source for c in src.cells if c.cell_type == "code"], \
            f"{path} is older than notebooks/{name}.ipynb: run scripts/execute_notebooks.py"
        outs = [o for c in done.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert outs and not any(o.get("output_type") == "error" for o in outs), name
        assert "icm_executed" in done.metadata


def test_preset_table_reads_every_experiment():
    hooks = _script("mkdocs_hooks")
    rows = {name: (what, sets) for name, what, sets in hooks.preset_rows()}
    assert set(rows) == {p.stem for p in (ROOT / "icm_core/conf/experiment").glob("*.yaml")}
    assert "`adapter=full`" in rows["full_ft"][1] and "starts from `paper`" in rows["full_ft"][1]
    assert "`model.inter_sup=False`" in rows["no_intersup"][1]
    assert rows["quick"][0].startswith("The CPU default")


# -- the site -----------------------------------------------------------------------------------
DOCS_TOOLS = ("mkdocs", "material", "mkdocs_jupyter", "mkdocstrings_handlers", "latex2mathml")
MISSING = [m for m in DOCS_TOOLS if importlib.util.find_spec(m) is None]
needs_docs_tools = pytest.mark.skipif(
    bool(MISSING), reason=f"{MISSING} not installed: pip install -e '.[dev]' brings mkdocs, "
    "mkdocs-material, mkdocs-jupyter, mkdocstrings and latex2mathml")
MATH_PAGES = ("method/backbone", "method/decoder", "method/entropy", "method/training",
              "teaching/dora", "teaching/entropy-hyperprior", "teaching/rate-lambda",
              "notebooks/05_dora_explained")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for the tests below with ``mkdocs build --strict``."""
    site = tmp_path_factory.mktemp("docs") / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return site


@needs_docs_tools
def test_site_builds_offline_with_the_notebooks(site):
    assert (site / "index.html").exists()
    for name in NOTEBOOKS:
        page = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
        assert "jupyter-wrapper" in page  # rendered by mkdocs-jupyter
        assert "unpkg.com" not in page  # every panel has a static rendering: no widget loader
    assert (site / "javascripts" / "plotly.min.js").stat().st_size > 1_000_000
    assert 'class="icm-plotly"' in (site / "notebooks/05_dora_explained/index.html").read_text()
    measured = (site / "measurements" / "index.html").read_text(encoding="utf-8")
    assert "1,253,376 (0.41 %)" in measured and "Not available" not in measured
    for page in ("teaching/rate-lambda", "teaching/entropy-hyperprior", "teaching/checkerboard",
                 "teaching/downscaled-codecs", "teaching/dora", "teaching/bd-rate"):
        assert "Try it" in (site / page / "index.html").read_text(encoding="utf-8"), page
    html = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "fonts.googleapis.com" not in html


@needs_docs_tools
def test_site_math_is_mathml_with_no_latex_left(site):
    pages = {p.parent.relative_to(site).as_posix(): p.read_text(encoding="utf-8")
             for folder in ("method", "teaching", "notebooks") for p in (site / folder).rglob(
                 "index.html")}
    for name, page in pages.items():
        text = re.sub(r'alttext="[^"]*"', "", page)
        if name in MATH_PAGES:
            assert "<math " in page, name
        else:
            assert "<math " not in page, name
        for cls in re.findall(r'class="arithmatex">(.{0,2})', text):  # converted, not \( or \[
            assert cls == "<m", (name, cls)
        assert "\\lVert" not in text and "\\frac" not in text, name
    # DoRA's eq. 1: display math, a fraction with the column norm below, the LaTeX kept as alttext
    eq1 = re.search(r'<div class="arithmatex">(<math .*?</math>)</div>',
                    pages["method/backbone"], re.DOTALL)[1]
    assert 'display="block"' in eq1 and "<mfrac>" in eq1
    assert "&#x02016;" in eq1  # the norm bars
    assert 'alttext="W&#x27; = m \\, \\frac{W_0 + s B A}' in eq1
    inline = re.findall(r'<span class="arithmatex">(<math .*?</math>)</span>',
                        pages["method/backbone"])
    assert inline and all('display="inline"' in m for m in inline)
    assert "<msup><mi>&#x0211D;</mi>" in pages["method/backbone"]  # \mathbb{R}^{d x r}
    # the notebook's Markdown $-math too, and the code cells' $ is left alone
    nb = pages["notebooks/05_dora_explained"]
    assert nb.count("<math ") >= 10 and "<mfrac>" in nb


def test_missing_screenshots_become_notes_and_present_ones_stay(tmp_path):
    hooks = _script("mkdocs_hooks")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "here.png").write_bytes(b"png")
    page = type("Page", (), {"file": type("File", (), {"src_path": "sub/page.md"})()})()
    md = "![Here](../img/here.png)\n\n![Setup tab](../img/workbench-setup.png)\n\ntext ![x](y.png)\n"
    out = hooks.on_page_markdown(md, page, {"docs_dir": str(tmp_path)}, None)
    assert "![Here](../img/here.png)" in out
    assert '!!! note "Screenshot to come: Setup tab"' in out
    assert "`docs/img/workbench-setup.png`" in out
    assert "text ![x](y.png)" in out  # only whole-line img/ screenshots are handled


def test_math_to_mathml_converts_leaves_code_and_warns_on_what_does_not_convert(caplog):
    hooks = _script("mkdocs_hooks")
    page = ('<p>a <span class="arithmatex">\\(x &lt; \\frac{1}{2}\\)</span></p>'
            '<div class="arithmatex">\\[\\unknowncmd x\\]</div>'
            '<div class="jp-RenderedHTMLCommon jp-RenderedMarkdown jp-MarkdownOutput">'
            "<p>$$a^2$$ and $b$ but <code>echo $HOME $PATH</code></p></div>")
    with caplog.at_level("WARNING"):
        out = hooks.math_to_mathml(page, "p.md")
    frac = re.search(r'<span class="arithmatex">(<math .*?</math>)</span>', out)[1]
    assert "<mfrac><mrow><mn>1</mn></mrow><mrow><mn>2</mn></mrow></mfrac>" in frac and "&#x0003C;" in frac
    assert 'alttext="x &lt; \\frac{1}{2}"' in frac
    # an unknown command stays as LaTeX text (delimiters and all), with a warning naming it
    assert '<div class="arithmatex">\\[\\unknowncmd x\\]</div>' in out
    assert "p.md" in caplog.text and "unknowncmd" in caplog.text
    assert '<math alttext="a^2" xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in out
    assert 'display="inline"><mrow><mi>b</mi></mrow></math>' in out
    assert "<code>echo $HOME $PATH</code>" in out


IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+\.(?:png|jpe?g|gif|svg))\)")


def test_every_image_a_page_shows_is_committed():
    """Each image a docs page (or the README) shows is a file in docs/img: no page falls back
    to a 'Screenshot to come' note (scripts/ui_check.py --docs takes them)."""
    pages = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    shown = [(page, m["path"]) for page in pages
             for m in IMAGE.finditer(page.read_text(encoding="utf-8"))]
    assert len(shown) >= 11
    missing = [f"{page.relative_to(ROOT)}: {path}" for page, path in shown
               if not (page.parent / path).resolve().is_file()]
    assert not missing, "missing images (scripts/ui_check.py --docs):\n" + "\n".join(missing)
    img = (ROOT / "docs" / "img").resolve()
    assert all((page.parent / path).resolve().parent == img for page, path in shown)
