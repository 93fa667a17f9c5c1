"""MkDocs hooks (mkdocs.yml ``hooks:``): what the site generates at build time, offline.

- ``javascripts/plotly.min.js`` is served from the installed plotly package (no CDN, no copy
  in git): the executed notebooks draw their figures with the page's ``Plotly`` (see
  scripts/execute_notebooks.py).
- ``<!-- generated: presets -->`` in a page becomes the table of the Hydra experiment presets,
  read from ``icm_core/conf/experiment/*.yaml`` (each file's leading comment and what it sets).
- A screenshot ``![alt](img/NAME.png)`` on a line of its own whose file is not in ``docs/img/``
  yet becomes a note naming the file, so the site builds before the browser check has run.
- A notebook page none of whose outputs is a live widget view (execute_notebooks.py gives
  every panel a static rendering) loses nbconvert's widget loader, which would fetch the
  ipywidgets HTML manager from unpkg.com, and the copy of the widget state it would feed: the
  state stays in the committed notebook, the page needs no network.
- LaTeX math becomes MathML at build time (latex2mathml), which browsers render natively, so
  no MathJax/KaTeX is loaded: in Markdown pages, what ``pymdownx.arithmatex`` (generic) wraps
  as ``<span class="arithmatex">\\(...\\)</span>`` or ``<div class="arithmatex">\\[...\\]</div>``;
  in a notebook's Markdown cells, ``$...$`` and ``$$...$$`` outside code. The LaTeX stays as
  the ``<math>``'s ``alttext``. A formula latex2mathml cannot convert (a syntax error, or a
  command it does not know) is left as its LaTeX text with a warning naming the page, which
  fails ``mkdocs build --strict``: rewrite it with commands that convert.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import plotly
import yaml
from latex2mathml.converter import convert as latex_to_mathml
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.math")

ROOT = Path(__file__).resolve().parent.parent
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
SITE_PLOTLY = "javascripts/plotly.min.js"
EXPERIMENTS = ROOT / "icm_core" / "conf" / "experiment"
WIDGET_VIEW = '<script type="application/vnd.jupyter.widget-view+json">'
WIDGET_LOADER = re.compile(r"<script>\s*\(function\(\) \{\s*function addWidgetsRenderer\(\).*?"
                           r"\}\(\)\);\s*</script>", re.DOTALL)
WIDGET_STATE = re.compile(r'<script type="application/vnd\.jupyter\.widget-state\+json">'
                          r".*?</script>", re.DOTALL)
SCREENSHOT = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>(?:\.\./)*img/[\w.-]+\.png)\)\s*$",
                        re.MULTILINE)
ARITHMATEX = re.compile(r'<(?P<tag>span|div) class="arithmatex">\\[(\[](?P<tex>.*?)\\[)\]]'
                        r"</(?P=tag)>", re.DOTALL)
NB_MARKDOWN = re.compile(r'(<div class="jp-RenderedHTMLCommon jp-RenderedMarkdown[^>]*>)(.*?)'
                         r"(</div>)", re.DOTALL)
NB_CODE = re.compile(r"(<(?:code|pre)\b.*?</(?:code|pre)>)", re.DOTALL)
NB_MATH = re.compile(r"\$\$(?P<block>.+?)\$\$|\$(?P<inline>[^$\n]+?)\$", re.DOTALL)


def on_files(files, config):
    if files.get_file_from_path(SITE_PLOTLY) is None:
        files.append(File.generated(config, SITE_PLOTLY, abs_src_path=str(PLOTLY_JS)))
    return files


def preset_rows(folder: Path = EXPERIMENTS) -> list[tuple[str, str, str]]:
    """(name, description, what it sets) for every experiment preset, by file name."""
    rows = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        comment = []
        for line in text.splitlines():
            if line.startswith("#"):
                if "@package" not in line:
                    comment.append(line.lstrip("#").strip())
            elif line.strip():
                break
        doc = yaml.safe_load(text) or {}
        sets = []
        for d in doc.get("defaults", []) or []:
            if isinstance(d, dict):
                sets += [f"`{k.replace('override /', '')}={v}`" for k, v in d.items()]
            elif d != "_self_":
                sets.append(f"starts from `{d}`")

        def leaves(obj, prefix=""):
            for k, v in obj.items():
                if isinstance(v, dict):
                    yield from leaves(v, f"{prefix}{k}.")
                else:
                    yield f"`{prefix}{k}={v}`".replace("'", "")

        sets += [s for k, v in doc.items() if k not in ("defaults", "name")
                 for s in (leaves(v, f"{k}.") if isinstance(v, dict) else [f"`{k}={v}`"])]
        rows.append((path.stem, " ".join(comment), ", ".join(sets)))
    return rows


def presets_table() -> str:
    lines = ["| `experiment=` | what | sets |", "| --- | --- | --- |"]
    lines += [f"| `{n}` | {d.replace('|', '/')} | {s.replace('|', '/')} |"
              for n, d, s in preset_rows()]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if "<!-- generated: presets -->" in markdown:
        markdown = markdown.replace("<!-- generated: presets -->", presets_table())
    docs = Path(config["docs_dir"])
    page_dir = (docs / page.file.src_path).parent

    def screenshot(m: re.Match) -> str:
        target = (page_dir / m["path"]).resolve()
        if target.exists():
            return m.group(0)
        rel = target.relative_to(docs.resolve()) if target.is_relative_to(docs.resolve()) \
            else m["path"]
        return (f'!!! note "Screenshot to come: {m["alt"]}"\n'
                f"    `docs/{rel}` is not in the repository yet (`scripts/ui_check.py --out "
                f"ui_shots` takes it in a real browser).\n")

    return SCREENSHOT.sub(screenshot, markdown)


def without_widget_loader(html: str) -> str:
    """``html`` less nbconvert's widget loader and widget-state copy, when no output needs them."""
    if WIDGET_VIEW in html:
        return html
    return WIDGET_STATE.sub("", WIDGET_LOADER.sub("", html))


def mathml(tex: str, display: bool) -> str | None:
    """The MathML of the LaTeX ``tex`` (already HTML-unescaped), with ``tex`` as its alttext;
    None when latex2mathml cannot convert it (it raises, or passes an unknown command through)."""
    try:
        out = latex_to_mathml(tex.strip(), display="block" if display else "inline")
    except Exception:  # latex2mathml raises its own exception classes for every syntax error
        return None
    if re.search(r">\\[A-Za-z]", out):  # an unknown \command comes out as <mi>\command</mi>
        return None
    alt = html.escape(" ".join(tex.split()), quote=True)
    return out.replace("<math ", f'<math alttext="{alt}" ', 1)


def math_to_mathml(content: str, where: str = "") -> str:
    """``content`` (a page's HTML) with its LaTeX math as MathML: arithmatex's spans and divs,
    and ``$``-math in notebook Markdown cells. A formula that does not convert stays as text,
    with a warning naming ``where`` (fatal under ``mkdocs build --strict``)."""

    def convert(tex: str, display: bool, original: str) -> str:
        out = mathml(html.unescape(tex), display)
        if out is None:
            log.warning("%s: the formula %r does not convert to MathML (latex2mathml); write it "
                        "with commands latex2mathml knows", where, html.unescape(tex))
            return original
        return out

    def arithmatex(m: re.Match) -> str:
        out = convert(m["tex"], m["tag"] == "div", "")
        return f'<{m["tag"]} class="arithmatex">{out}</{m["tag"]}>' if out else m.group(0)

    def nb_math(m: re.Match) -> str:
        block = m["block"] is not None
        return convert(m["block"] if block else m["inline"], block, m.group(0))

    def nb_cell(m: re.Match) -> str:
        parts = NB_CODE.split(m[2])  # odd items are code: their $ is not math
        parts[::2] = [NB_MATH.sub(nb_math, p) for p in parts[::2]]
        return m[1] + "".join(parts) + m[3]

    content = ARITHMATEX.sub(arithmatex, content)
    return NB_MARKDOWN.sub(nb_cell, content)


def on_page_content(html_, page, config, files):
    return math_to_mathml(html_, page.file.src_uri)


def on_post_page(output, page, config):
    if page.file.src_uri.endswith(".ipynb"):
        return without_widget_loader(output)
    return output
