"""benchmarks/results/compare_<split>.json (bench_compare_tasks.py) -> the docs table
benchmarks/results/summary/compare_<split>.json that scripts/docs_tables.py puts on the
measurements page.

    python scripts/compare_table.py benchmarks/results/compare_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"


def _pct(bd: dict) -> str:
    return "n/a" if bd.get("value") is None else f"{bd['value']:+.1f} %"


def table(doc: dict) -> dict:
    """The measurements-page table of one bench_compare_tasks result."""
    rows = []
    for task, r in doc["summary"].items():
        learned = r["curves"].get("learned@file", {})
        pts = " / ".join(f"{b:.3f}: {v:.4g}" for b, v in zip(learned.get("bpp", []),
                                                                learned.get("values", [])))
        rows.append([f"{task} {r['metric']}", ", ".join(f"{v:g}" for v in r["lambdas"]), pts,
                     f"{r['uncompressed']:.4g}", _pct(r["learned_vs_classical"]),
                     _pct(r["learned_vs_classical_file"]), _pct(r["learned_vs_preproc"])])
    prov = doc["provenance"]
    return {"provenance": prov, "title": f"Rate-accuracy with VVC, {doc['held_out']}",
            "source": prov["command"] + f" (commit {prov['commit'][:10]})",
            "columns": [{"name": "task"}, {"name": "ladder"},
                        {"name": "learned codec (file bpp: metric)"}, {"name": "uncompressed"},
                        {"name": "BD-rate vs best classical (payload)"},
                        {"name": "same, file rate"}, {"name": "vs best pre-processor (payload)"}],
            "rows": rows}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="*",
                   default=[Path("benchmarks/results/compare_test.json")])
    p.add_argument("--summary-dir", type=Path, default=SUMMARY)
    args = p.parse_args(argv)
    for path in args.results:
        out = args.summary_dir / path.name
        doc = {**table(json.loads((ROOT / path).read_text())),
               "generated_by": f"python scripts/compare_table.py {path.as_posix()}"}
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
