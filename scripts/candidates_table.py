"""bench_choose_ladders.py --rule candidates results -> ``summary/ladders_candidates.json``, the
table scripts/docs_tables.py puts on the measurements page: each task's candidate anchor sets,
their BD-rate against the best classical pipeline on the validation scenes, and which one the
rule chose. ``--rule per-lambda`` results (the per-lambda ladders' candidates) ->
``summary/ladders_per_lambda.json``, the same table.

    python scripts/candidates_table.py benchmarks/results/ladders_val_candidates_semseg.json ...
    python scripts/candidates_table.py benchmarks/results/ladders_val_per_lambda_a.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_modes_table import _bd, _source, results_main  # noqa: E402  (shared)


def _per_lambda(docs: list[dict]) -> bool:
    """Whether the results are ``--rule per-lambda``'s (ladders), not ``candidates``' (anchors)."""
    kinds = {"ladder" in c for d in docs for r in d["summary"].values()
             for c in r["candidates"].values()}
    if len(kinds) != 1:
        raise SystemExit("give results of one rule: --rule candidates or --rule per-lambda")
    return kinds.pop()


def summary_name(paths: list[Path]) -> str:
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    return "ladders_per_lambda" if _per_lambda(docs) else "ladders_candidates"


def candidates_table(paths: list[Path]) -> dict:
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    per_lambda = _per_lambda(docs)
    rows = []
    for d in docs:
        for task, r in d["summary"].items():
            for name, c in r["candidates"].items():
                rows.append([f"{task} {r['metric']}", name,
                             ", ".join(f"{a:g}" for a in c["ladder" if per_lambda else "anchors"]),
                             _bd({"value": c["bd_rate_payload"], "reason": c["reason"]}),
                             f"{min(c['bpp_payload']):.3f}-{max(c['bpp_payload']):.3f}",
                             "chosen" if name == r["choice"]["name"] else ""])
    held = sorted({d["held_out"] for d in docs})
    return {"provenance": docs[0]["provenance"],
            "title": (f"Candidate {'per-lambda ladders' if per_lambda else 'anchors'} scored on "
                      f"validation scenes, {'; '.join(held)}"),
            "source": "; ".join(_source(d) for d in docs),
            "columns": [{"name": "task"}, {"name": "candidate"},
                        {"name": "ladder (lambda)" if per_lambda else "anchors (lambda)"},
                        {"name": "BD-rate vs best classical, validation (payload)"},
                        {"name": "bpp range"}, {"name": "rule"}],
            "rows": rows}


def main(argv: list[str]) -> int:
    return results_main(argv, __doc__, candidates_table, summary_name, __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
