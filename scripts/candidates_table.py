"""bench_choose_ladders.py --rule candidates results -> ``summary/ladders_candidates.json``, the
table scripts/docs_tables.py puts on the measurements page: each task's candidate anchor sets,
their BD-rate against the best classical pipeline on the validation scenes, and which one the
rule chose.

    python scripts/candidates_table.py benchmarks/results/ladders_val_candidates_semseg.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_modes_table import _bd, _source, results_main  # noqa: E402  (shared)


def candidates_table(paths: list[Path]) -> dict:
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    rows = []
    for d in docs:
        for task, r in d["summary"].items():
            for name, c in r["candidates"].items():
                rows.append([f"{task} {r['metric']}", name,
                             ", ".join(f"{a:g}" for a in c["anchors"]),
                             _bd({"value": c["bd_rate_payload"], "reason": c["reason"]}),
                             f"{min(c['bpp_payload']):.3f}-{max(c['bpp_payload']):.3f}",
                             "chosen" if name == r["choice"]["name"] else ""])
    held = sorted({d["held_out"] for d in docs})
    return {"provenance": docs[0]["provenance"],
            "title": f"Candidate anchors scored on validation scenes, {'; '.join(held)}",
            "source": "; ".join(_source(d) for d in docs),
            "columns": [{"name": "task"}, {"name": "candidate"}, {"name": "anchors (lambda)"},
                        {"name": "BD-rate vs best classical, validation (payload)"},
                        {"name": "bpp range"}, {"name": "rule"}],
            "rows": rows}


def main(argv: list[str]) -> int:
    return results_main(argv, __doc__, candidates_table, "ladders_candidates", __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
