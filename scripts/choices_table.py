"""The validation choices of single settings -> ``summary/choices_val.json``, the table
scripts/docs_tables.py puts on the measurements page: each candidate value, its score on the
validation scenes, and the one the rule chose.

- ``bench_choose_preprocessor.py`` (``results/preprocessor_val.json``): the pre-processor's
  rate weight, scored by the BD-rate of the pre-processed JPEG envelope against plain JPEG;
- ``bench_choose_backbone_lr.py`` (``results/backbone_lr_val.json``): full fine-tuning's
  learning rate, scored by its mean rank over the (task, setting) cells.

    python scripts/choices_table.py benchmarks/results/preprocessor_val.json \
        benchmarks/results/backbone_lr_val.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_modes_table import _source, results_main  # noqa: E402  (shared)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


def _rows(doc: dict) -> list[list]:
    if "per_lambda" in doc:  # the pre-processor
        chosen = doc["choice"]["lmbda"]
        return [["pre-processor lmbda", f"{c['lmbda']:g}",
                 "; ".join(f"{t} {_pct(r['preproc_vs_jpeg_payload'])}"
                           for t, r in c["tasks"].items()) + f"; mean {_pct(c['mean_bd_rate'])}",
                 "chosen" if c["lmbda"] == chosen else ""]
                for c in doc["per_lambda"].values()]
    chosen = doc["choice"]["backbone_lr"]  # full fine-tuning's learning rate
    return [["train.backbone_lr (Full FT)", lr,
             f"mean rank {rank:.2f} over {len(doc['cells'])} cells",
             "chosen" if float(lr) == chosen else ""]
            for lr, rank in doc["mean_rank"].items()]


def choices_table(paths: list[Path]) -> dict:
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    held = sorted({d["held_out"] for d in docs})
    return {"provenance": docs[0]["provenance"],
            "title": f"Settings chosen on validation scenes, {'; '.join(held)}",
            "source": "; ".join(_source(d) for d in docs),
            "columns": [{"name": "setting"}, {"name": "candidate"},
                        {"name": "validation score (lower is better)"}, {"name": "rule"}],
            "rows": [row for d in docs for row in _rows(d)]}


def main(argv: list[str]) -> int:
    return results_main(argv, __doc__, choices_table, "choices_val", __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
