"""bench_backbones.py results of the Full FT row at several ``train.backbone_lr`` values, the
same code and scenes -> ``summary/backbones_lr.json``, the table scripts/docs_tables.py puts on
the measurements page: one row per (learning rate, setting), one column per task.

    python scripts/backbone_lr_table.py benchmarks/results/backbones_fullft_3e-4.json \
        benchmarks/results/backbones_fullft_1e-4.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_modes_table import _source, results_main  # noqa: E402  (shared)

TASKS = ("semseg", "depth", "normals", "boundary", "human_parts", "saliency")
FORMATS = {"depth": ".3f"}  # RMSE in metres; the others in percent or degrees


def _lr(doc: dict, path: Path) -> str:
    """The run's Full FT learning rate, from its ``--set train.backbone_lr=...``."""
    for s in doc["args"]["extra"]:
        if s.startswith("train.backbone_lr="):
            return s.split("=", 1)[1]
    raise SystemExit(f"{path}: run without --set train.backbone_lr=...: its rate is not recorded")


def backbone_lr_table(paths: list[Path]) -> dict:
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    for d, p in zip(docs, paths):
        if d["args"]["rows"] != "Full FT":
            raise SystemExit(f"{p}: not a Full FT run (--rows {d['args']['rows']!r})")
    lrs = [_lr(d, p) for d, p in zip(docs, paths)]
    metric = {}
    rows = []
    for setting in ("uncompressed", f"lambda={docs[0]['args']['lmbda']:g}"):
        for d, lr in zip(docs, lrs):
            cells = {c["task"]: c for c in d["cells"] if c["setting"] == setting}
            metric.update({t: c["metric"] for t, c in cells.items()})
            rows.append([f"Full FT, backbone_lr {lr}, {setting.replace('=', ' ')}",
                         *(cells[t]["mean"] if t in cells else "n/a" for t in TASKS)])
    held = sorted({f"{d['args']['images']} {d['args']['split']} scenes at {d['args']['size']} px"
                   for d in docs})
    return {"provenance": docs[0]["provenance"],
            "title": f"Full fine-tuning at each learning rate, {'; '.join(held)}",
            "source": "; ".join(_source(d) for d in docs),
            "columns": [{"name": "row"},
                        *({"name": f"{t} {metric.get(t, '')}".strip(),
                           "format": FORMATS.get(t, ".2f")} for t in TASKS)],
            "rows": rows}


def main(argv: list[str]) -> int:
    return results_main(argv, __doc__, backbone_lr_table, "backbones_lr", __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
