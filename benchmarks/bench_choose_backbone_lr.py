"""Choose ``train.backbone_lr`` (full fine-tuning's learning rate) on VALIDATION scenes.

Issue 21 ("every choice is re-made on validation scenes ... ``train.backbone_lr``"). Full
fine-tuning (``adapter=full``) moves the pretrained backbone at ``train.backbone_lr``; the quick
preset's value must be chosen on scenes no report uses. For each candidate learning rate this
runs ``bench_backbones.py --rows "Full FT" --split val --set train.backbone_lr=<lr>``: the quick
preset on every task, uncompressed and at one lambda, scored on ``--images`` validation scenes
(the compressed cells through real bitstreams). The rule: the learning rate with the best mean
rank over those (task, setting) cells (rank 1 = the best metric in the cell's direction; ties
share the better rank), ties broken by the smaller learning rate.

Writes ``results/backbone_lr_val.json`` (every cell's value per learning rate, the ranks and
``choice``); ``icm_core/conf/experiment/quick.yaml``'s ``train.backbone_lr`` follows it
(``tests/test_learning_rates.py`` checks they agree). Trainings are cached as bench_backbones caches.

    OMP_NUM_THREADS=1 python benchmarks/bench_choose_backbone_lr.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _runs import results_doc, write_results
from bench_backbones import TASKS
from bench_backbones import main as backbones
from scipy.stats import rankdata

RESULTS = Path(__file__).parent / "results"


def ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, int]:
    """Rank 1 = best; equal values share the better rank."""
    keys = list(values)
    sign = -1 if higher_is_better else 1
    return dict(zip(keys, (int(r) for r in rankdata([sign * values[k] for k in keys],
                                                    method="min"))))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="train.seed of every training")
    p.add_argument("--steps", type=int, default=None, help="default: the quick preset's")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "choose_backbone_lr")
    p.add_argument("--summary", type=Path, default=RESULTS / "backbone_lr_val.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    lrs = args.lrs.split(",")
    cells: dict[tuple, dict] = {}  # (setting, task) -> {lr: value}, direction
    for lr in lrs:
        doc = backbones(["--rows", "Full FT", "--split", "val", "--tasks", args.tasks,
                         "--images", str(args.images), "--seeds", str(args.seed),
                         "--set", f"train.backbone_lr={lr}", "--jobs", str(args.jobs),
                         "--out", str(args.out), "--name", f"full_ft_lr_{lr}",
                         *(["--steps", str(args.steps)] if args.steps else [])])
        for c in doc["cells"]:
            cell = cells.setdefault((c["setting"], c["task"]),
                                    {"setting": c["setting"], "task": c["task"],
                                     "metric": c["metric"],
                                     "higher_is_better": c["higher_is_better"], "by_lr": {}})
            cell["by_lr"][lr] = c["mean"]
    for cell in cells.values():
        cell["ranks"] = ranks(cell["by_lr"], cell["higher_is_better"])
    mean_rank = {lr: statistics.fmean(c["ranks"][lr] for c in cells.values()) for lr in lrs}
    best = min(lrs, key=lambda lr: (mean_rank[lr], float(lr)))
    choice = {"backbone_lr": float(best),
              "why": f"best mean rank {mean_rank[best]:.2f} over {len(cells)} validation cells "
                     f"(of {', '.join(lrs)})"}
    summary = results_doc(
        args, t0, held_out=f"{args.images} val scenes at 128 px (bench_backbones.py --split val)",
        rule="the learning rate with the best mean rank over the (task, setting) cells; ties: "
             "the smaller learning rate",
        cells=sorted(cells.values(), key=lambda c: (c["setting"], c["task"])),
        mean_rank=mean_rank, choice=choice)
    write_results(summary, args.summary, print, f": backbone_lr {best} ({choice['why']})")
    return summary


if __name__ == "__main__":
    main()
