"""Write the tables of docs/measurements.md and README.md from the committed summary JSON.

    .venv/bin/python scripts/docs_tables.py           # rewrite the tables in place
    .venv/bin/python scripts/docs_tables.py --check   # exit 1 if the page is out of date

Every table on the page sits between two markers::

    <!-- table: backbones_uncompressed -->
    ...generated, do not edit...
    <!-- /table -->

and comes from ``benchmarks/results/summary/<name>.json``::

    {"title": "...", "source": "the command that measured it",
     "columns": [{"name": "semseg mIoU", "format": ".2f", "best": "max"}, ...],
     "rows": [["Fixed (synthetic)", 19.37, ...], ...]}

A number is printed with its column's ``format`` (Python's format spec; none: as written),
the best value of a column with ``best`` (``max`` or ``min``) in bold; a string cell is
printed as it is. A summary that is missing or unreadable does not stop the page: its table
is replaced by a note saying which file and why, and the script says so on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from icm_core.files import write_text  # noqa: E402

PAGE = ROOT / "docs" / "measurements.md"
PAGES = (PAGE, ROOT / "README.md")  # every page with marked tables
SUMMARY = ROOT / "benchmarks" / "results" / "summary"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)",
                   re.DOTALL)


class TableError(ValueError):
    """A summary JSON that cannot be turned into a table (the message names the file)."""


def load_summary(path: Path) -> dict:
    """Read and check one summary; raises ``TableError`` naming the file and the problem."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TableError(f"{path} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TableError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), list) \
            or not isinstance(doc.get("rows"), list):
        raise TableError(f"{path}: needs an object with 'columns' and 'rows' lists")
    width = len(doc["columns"])
    for i, col in enumerate(doc["columns"]):
        if not isinstance(col, dict) or not isinstance(col.get("name"), str):
            raise TableError(f"{path}: columns[{i}] needs a 'name' string")
        if col.get("best") not in (None, "max", "min"):
            raise TableError(f"{path}: columns[{i}].best={col.get('best')!r}; "
                             "use 'max', 'min' or leave it out")
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, list) or len(row) != width:
            raise TableError(f"{path}: rows[{i}] has {len(row) if isinstance(row, list) else '?'}"
                             f" cells; the table has {width} columns")
    return doc


def _cell(value, fmt: str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and fmt:
        return format(value, fmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(doc: dict) -> str:
    """The markdown table of one summary (no trailing newline)."""
    cols = doc["columns"]
    best = {}
    for j, col in enumerate(cols):
        nums = [r[j] for r in doc["rows"]
                if isinstance(r[j], (int, float)) and not isinstance(r[j], bool)]
        if col.get("best") and nums:
            best[j] = max(nums) if col["best"] == "max" else min(nums)
    lines = ["| " + " | ".join(c["name"] for c in cols) + " |",
             "| " + " | ".join("---" for _ in cols) + " |"]
    for row in doc["rows"]:
        cells = []
        for j, value in enumerate(row):
            text = _cell(value, cols[j].get("format"))
            if j in best and value == best[j]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    if doc.get("source"):
        lines += ["", f"<small>Measured by `{doc['source']}`.</small>"]
    return "\n".join(lines)


def fill(page: str, summary_dir: Path, warn=lambda msg: None) -> str:
    """``page`` with every marked table regenerated from ``summary_dir``."""

    def replace(m: re.Match) -> str:
        path = summary_dir / f"{m['name']}.json"
        try:
            body = render(load_summary(path))
        except TableError as e:
            warn(str(e))
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            reason = str(e).replace(str(path), f"`{rel}`")
            body = f"!!! warning \"Not available\"\n    This table is not available: {reason}."
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return BLOCK.sub(replace, page)


def table_names(page: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(page)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--page", type=Path, default=None, help="one page (default: every page)")
    p.add_argument("--summary", type=Path, default=SUMMARY)
    p.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    args = p.parse_args(argv)
    stale = 0
    for path in [args.page] if args.page else PAGES:
        page = path.read_text(encoding="utf-8")
        new = fill(page, args.summary,
                   warn=lambda msg: print(f"docs_tables: {msg}", file=sys.stderr))
        if args.check:
            if new != page:
                print(f"{path} is out of date: run python scripts/docs_tables.py",
                      file=sys.stderr)
                stale = 1
            continue
        if new != page:
            write_text(path, new)
        print(f"{path}: {len(table_names(new))} tables")
    return stale


if __name__ == "__main__":
    sys.exit(main())
