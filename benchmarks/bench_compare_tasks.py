"""The learned codec against the best classical pipeline and the pre-processor, on every task.

Issue 12 ("BD-rate of the learned codec against the best classical pipeline + baseline and
against the pre-processor, for every task"). Per task, with the quick preset:

- the uncompressed baseline and the learned codec at the task's lambda ladder
  (``icm_core.studies.demo.TASK_LAMBDAS``), trained once and cached exactly as
  ``bench_ra_synthetic.py`` caches them (``benchmarks/_runs.py``, ``results/ra_runs``);
- ``icm_core.studies.compare.compare`` on the same held-out test scenes: every classical codec at every
  scale of the resolution ladder + the baseline, and a pre-processor (Lu et al.) trained
  against each task's frozen baseline in front of every codec at every scale + the baseline.

Prints and writes (``results/compare_tasks/summary.json``, beside compare's own files) the
BD-rate of the learned codec against ``best-classical`` (the Pareto envelope of every classical
pipeline) and against ``best-preproc`` (the envelope of every pre-processor pipeline), and of
``best-preproc`` against ``best-classical``. Boundary's odsF uses 19 thresholds here (a subset
of the metric's 99, about 5x faster; ``--boundary-thresholds``).

    OMP_NUM_THREADS=1 python benchmarks/bench_compare_tasks.py --tasks semseg,depth
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _runs import (  # benchmarks/_runs.py (run as scripts)
    QUICK_SETTINGS,
    provenance,
    timed_log,
    train_cached,
)

from icm_core.baselines.classical import DEFAULT_CODECS, available_codecs
from icm_core.baselines.preprocessor import PreprocessorConfig
from icm_core.files import write_text
from icm_core.studies.compare import ENVELOPE, PREPROC_ENVELOPE, compare
from icm_core.studies.demo import default_lambdas
from icm_core.tasks.registry import get_task

RESULTS = Path(__file__).parent / "results"
ALL_TASKS = "semseg,depth,normals,human_parts,saliency,boundary"


def _bd(rows: list[dict], task: str, method: str, anchor: str, rate: str = "payload") -> dict:
    for r in rows:
        if (r["task"], r["method"], r["anchor"], r["rate"]) == (task, method, anchor, rate):
            return {"value": r["bd_rate_percent"], "range": [r["metric_lo"], r["metric_hi"]],
                    "reason": r["reason"] or None}
    return {"value": None, "range": None, "reason": "no such curve"}


def _fmt(bd: dict) -> str:
    return f"{bd['value']:+.1f} %" if bd["value"] is not None else "n/a"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=ALL_TASKS)
    p.add_argument("--images", type=int, default=16, help="held-out test scenes")
    p.add_argument("--size", type=int, default=256, help="evaluation size (square)")
    p.add_argument("--backbone", default="tiny_synthetic")
    p.add_argument("--codecs", default=",".join(c for c in DEFAULT_CODECS
                                                if c in available_codecs()),
                   help="default: every registered default codec found here (VVC when its apps "
                   "are on PATH or in ICM_VVENC/ICM_VVDEC)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--seed", type=int, default=7, help="seed of the held-out scenes")
    p.add_argument("--preprocessor", choices=("train", "none"), default="train")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: quick's)")
    p.add_argument("--summary", type=Path, default=None,
                   help="the small JSON to commit (default: results/compare_<split>.json)")
    p.add_argument("--scales", default="1,0.5,0.25")
    p.add_argument("--pp-lambda", type=float, default=PreprocessorConfig().lmbda,
                   help="pre-processor rate weight (default: the package's, chosen on "
                   "validation scenes by bench_choose_preprocessor.py)")
    p.add_argument("--pp-steps", type=int, default=200, help="pre-processor training steps")
    p.add_argument("--pp-size", type=int, default=128, help="pre-processor training crop (px)")
    p.add_argument("--boundary-thresholds", type=int, default=19)
    p.add_argument("--retrain", action="store_true", help="ignore the cached runs")
    p.add_argument("--out", type=Path, default=RESULTS / "compare_tasks")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0, log = time.perf_counter(), timed_log()

    root = RESULTS / "ra_runs"
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    common = [f"backbone={args.backbone}"]
    if args.steps:
        common.append(f"train.max_steps={args.steps}")
    learned, baselines, ladders = [], [], {}
    for task in tasks:
        ladders[task] = list(default_lambdas(task))
        baselines.append(train_cached([f"task={task}", "model.compression=false", *common], root,
                                      settings=QUICK_SETTINGS, retrain=args.retrain, log=log)[2])
        for lm in ladders[task]:
            learned.append(train_cached([f"task={task}", f"lmbda={lm}", *common], root,
                                        settings=QUICK_SETTINGS, retrain=args.retrain, log=log)[2])
    pcfg = PreprocessorConfig(lmbda=args.pp_lambda, steps=args.pp_steps, batch_size=2,
                              size=args.pp_size)
    result = compare(learned, baselines, codecs=args.codecs.split(","),
                     scales=[float(s) for s in args.scales.split(",")],
                     preprocessor=args.preprocessor, preprocessor_config=pcfg,
                     images=args.images, size=args.size, out=args.out, split=args.split,
                     seed=args.seed, log=log,
                     metric_options={"boundary": {"n_thresholds": args.boundary_thresholds}})

    summary = {}
    print(f"\n{'task':<12}{'metric':>7}{'learned vs best-classical':>34}"
          f"{'learned vs best-preproc':>34}{'best-preproc vs best-classical':>34}")
    for task in tasks:
        spec = get_task(task)
        row = {"metric": spec.metric, "lambdas": ladders[task],
               "learned_vs_classical": _bd(result.bd_rates, task, "learned", ENVELOPE),
               "learned_vs_preproc": _bd(result.bd_rates, task, "learned", PREPROC_ENVELOPE),
               "preproc_vs_classical": _bd(result.bd_rates, task, PREPROC_ENVELOPE, ENVELOPE),
               "learned_vs_classical_file": _bd(result.bd_rates, task, "learned", ENVELOPE,
                                                "file"),
               "uncompressed": next((c.uncompressed for c in result.curves[task]
                                     if c.uncompressed is not None), None),
               "curves": {f"{c.name}@{c.rate}": {"bpp": c.bpp, "bpp_payload": c.bpp_payload,
                                                 "values": c.values}
                          for c in result.curves[task] if c.kind in ("learned", "envelope")},
               "classical_pipelines": sorted({p.get("codec", "") + (f"@{p['scale']:g}" if p.get(
                   "scale", 1) != 1 else "") for c in result.curves[task]
                   if c.kind == "classical" for p in c.points})}
        summary[task] = row
        print(f"{task:<12}{spec.metric:>7}{_fmt(row['learned_vs_classical']):>34}"
              f"{_fmt(row['learned_vs_preproc']):>34}{_fmt(row['preproc_vs_classical']):>34}")
    for task, row in summary.items():  # why a cell says n/a
        for key in ("learned_vs_classical", "learned_vs_preproc", "preproc_vs_classical"):
            if row[key]["value"] is None:
                print(f"  {task} {key}: n/a, {row[key]['reason']}")
    doc = {"provenance": provenance(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "held_out": result.curves[tasks[0]][0].description.rsplit(", ", 1)[-1],
           "rates": "BD-rates between codecs count the payload (no container bytes); "
                    "*_file counts every byte stored",
           "summary": summary, "seconds": round(time.perf_counter() - t0, 1)}
    write_text(args.out / "summary.json", json.dumps(doc, indent=2))
    committed = args.summary or RESULTS / f"compare_{args.split}.json"
    write_text(committed, json.dumps(doc, indent=2) + "\n")
    log(f"wrote {committed} (commit it: the README's and the docs' tables read it)")
    log(f"wrote {args.out}/summary.json (and compare's files: bd_rate.csv, ra-<task>.html, ...)")
    return doc


if __name__ == "__main__":
    main()
