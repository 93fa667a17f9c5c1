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
"""

from __future__ import annotations

import re
from pathlib import Path

import plotly
import yaml
from mkdocs.structure.files import File

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


def on_post_page(output, page, config):
    if page.file.src_uri.endswith(".ipynb"):
        return without_widget_loader(output)
    return output
