"""Is the shipped synthetic-pretrained backbone really pretrained? Six rows, six tasks.

Issue 11's evidence. Every row gets the same short budget (the quick preset: 200 steps at
128 px, heads at ``train.head_lr``) on every task, uncompressed and with compression at one
lambda, and is scored on held-out ``test`` scenes (seeds no training or pretraining uses);
compressed rows are scored through real bitstreams (encode -> bytes -> decode):

- Fixed (synthetic):  the shipped backbone, frozen (``backbone=tiny_synthetic adapter=fixed``)
- Fixed (random):     a random backbone, frozen (``backbone=tiny_random adapter=fixed``)
- Scratch:            random initialization, everything trains (``adapter=scratch``)
- DoRA r8 qkv, LoRA r16 qv, Full FT: on the synthetic-pretrained backbone

The synthetic rows must beat Fixed (random) and Scratch on every task, or the pretraining is
not good enough. ``--seeds 0,1,2`` trains every cell once per seed and compares means;
``--split val`` scores on validation scenes, to choose a setting (``--set train.backbone_lr=...``)
without looking at the test scenes. Trainings are cached under
``benchmarks/results/backbone_runs/`` (``benchmarks/_runs.py``: keyed by their overrides,
retrained when the preset they resolve to has changed); ``--jobs 2`` trains two at a time, one thread each. Writes
``benchmarks/results/backbones.json`` and ``.csv`` and prints a table per setting.

    python benchmarks/bench_backbones.py --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TASKS = ("semseg", "depth", "normals", "boundary", "human_parts", "saliency")
ROWS = {  # row name -> overrides on top of experiment=quick
    "Fixed (synthetic)": ["backbone=tiny_synthetic", "adapter=fixed"],
    "Fixed (random)": ["backbone=tiny_random", "adapter=fixed"],
    "Scratch": ["backbone=tiny_random", "adapter=scratch"],
    "DoRA r8 qkv": ["backbone=tiny_synthetic", "adapter=dora_r8_qkv"],
    "LoRA r16 qv": ["backbone=tiny_synthetic", "adapter=lora_r16_qv"],
    "Full FT": ["backbone=tiny_synthetic", "adapter=full"],
}
SYNTHETIC_ROWS = ("Fixed (synthetic)", "DoRA r8 qkv", "LoRA r16 qv", "Full FT")


def _job(row: str, task: str, lmbda: float | None, seed: int, common: list[str], root: str,
         test_images: int, test_size: int, split: str, retrain: bool) -> dict:
    """Train one (row, task, setting) with the quick preset, or load it from the cache, and score
    it on the held-out test scenes. Runs in its own process with one thread."""
    import torch

    torch.set_num_threads(1)
    from _runs import train_cached  # benchmarks/_runs.py (a spawned process keeps sys.path)

    from icm_core.data.synthetic import SyntheticScenes
    from icm_core.evaluation.cost import model_info
    from icm_core.evaluation.evaluate import evaluate

    comp = ["model.compression=false"] if lmbda is None else [f"lmbda={lmbda}"]
    seeded = [f"train.seed={seed}"] if seed else []  # seed 0 keeps the key of earlier runs
    overrides = ["experiment=quick", f"task={task}", *ROWS[row], *comp, *seeded, *common]
    model, trained, run = train_cached(overrides, root, retrain=retrain,
                                       settings=("data.workers=0", "data.val_length=2"))
    info = model_info(overrides)
    test = SyntheticScenes(split, size=(test_size, test_size), tasks=[task], length=test_images)
    r = evaluate(model, test, task, per_image=False)
    return {"row": row, "task": task, "lmbda": lmbda, "seed": seed, "metric": r.metric, "value": r.value,
            "higher_is_better": r.higher_is_better, "bpp": r.bpp,
            "trainable_percent": info["trainable_backbone_params"] / info["backbone_params"] * 100,
            "trainable_backbone_params": info["trainable_backbone_params"],
            "weights_source": info["weights_source"], "train_seconds": trained, "run": str(run)}


def _better(a: float, b: float, hib: bool) -> bool:
    return a > b if hib else a < b


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of row names")
    p.add_argument("--lmbda", type=float, default=1.0, help="the compressed setting's lambda")
    p.add_argument("--steps", type=int, default=None, help="default: the quick preset's")
    p.add_argument("--seeds", default="0", help="comma list of train.seed values; tables show "
                   "the mean (and spread) over them")
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="an extra override for every row, e.g. --set train.backbone_lr=1e-4")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="scenes to score on: 'val' to choose settings, 'test' to report")
    p.add_argument("--images", type=int, default=32, help="held-out scenes")
    p.add_argument("--size", type=int, default=128, help="test size (the quick preset trains at 128)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time (one thread each)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="backbones", help="result files: OUT/NAME.json and .csv "
                   "(trainings are cached in OUT/backbone_runs whatever the name)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    tasks = args.tasks.split(",")
    rows = args.rows.split(",")
    seeds = [int(v) for v in args.seeds.split(",")]
    common = ([f"train.max_steps={args.steps}"] if args.steps else []) + list(args.extra)
    root = str(args.out / "backbone_runs")
    jobs = [(row, task, lm, seed) for seed in seeds for lm in (None, args.lmbda)
            for task in tasks for row in rows]
    results: list[dict] = []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_job, row, task, lm, seed, common, root, args.images, args.size,
                               args.split, args.retrain) for row, task, lm, seed in jobs]
        for f in as_completed(futures):
            r = f.result()
            results.append(r)
            took = "cached" if r["train_seconds"] is None else f"{r['train_seconds']:.0f} s"
            bpp = "" if r["bpp"] is None else f" at {r['bpp']:.4f} bpp"
            print(f"[{time.perf_counter() - t0:6.0f} s] {r['row']:<18} {r['task']:<12} "
                  f"{'uncompressed' if r['lmbda'] is None else 'lambda ' + str(r['lmbda']):<13}"
                  f"seed {r['seed']} {r['metric']} {r['value']:.4f}{bpp} ({took})", flush=True)

    # per (setting, row, task): the mean over seeds; the verdict compares means
    cells: dict[tuple, dict] = {}
    for r in results:
        c = cells.setdefault((r["lmbda"], r["row"], r["task"]),
                             {"setting": "uncompressed" if r["lmbda"] is None
                              else f"lambda={r['lmbda']:g}", "row": r["row"], "task": r["task"],
                              "metric": r["metric"], "higher_is_better": r["higher_is_better"],
                              "values": [], "seeds": []})
        c["values"].append(r["value"])
        c["seeds"].append(r["seed"])
    for c in cells.values():
        # spread: the sample standard deviation over seeds (0 for one seed)
        c["mean"] = statistics.mean(c["values"])
        c["spread"] = statistics.stdev(c["values"]) if len(c["values"]) > 1 else 0.0
    verdict = []
    for lm in (None, args.lmbda):
        setting = "uncompressed" if lm is None else f"lambda={lm:g}"
        print(f"\n== {setting}: {len(tasks)} tasks, {args.images} {args.split} scenes at "
              f"{args.size} px, mean over seeds {seeds}")
        print(f"{'row':<18}{'trainable %':>12}" + "".join(f"{t:>16}" for t in tasks))
        for row in rows:
            line = []
            for t in tasks:
                c = cells.get((lm, row, t))
                text = "-" if c is None else (f"{c['mean']:.4f}" + (
                    f"+-{c['spread']:.3f}" if len(c["values"]) > 1 else ""))
                line.append(f"{text:>16}")
            pct = next((r["trainable_percent"] for r in results if r["row"] == row), float("nan"))
            print(f"{row:<18}{pct:>12.2f}" + "".join(line))
        for row in [r for r in rows if r in SYNTHETIC_ROWS]:
            for t in tasks:
                mine = cells.get((lm, row, t))
                for ref in ("Fixed (random)", "Scratch"):
                    other = cells.get((lm, ref, t))
                    if mine and other:
                        verdict.append({"setting": setting, "row": row, "task": t, "against": ref,
                                        "beats": _better(mine["mean"], other["mean"],
                                                         mine["higher_is_better"])})
    lost = [v for v in verdict if not v["beats"]]
    print(f"\nsynthetic-pretrained rows beat Fixed (random) and Scratch in "
          f"{len(verdict) - len(lost)} of {len(verdict)} comparisons")
    for v in lost:
        print(f"  LOSES: {v['row']} on {v['task']} ({v['setting']}) against {v['against']}")

    from _runs import provenance

    doc = {"provenance": provenance(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "rows": ROWS, "results": sorted(results, key=lambda r: (str(r["lmbda"]), r["task"],
                                                                   r["row"], r["seed"])),
           "cells": sorted(cells.values(), key=lambda c: (c["setting"], c["task"], c["row"])),
           "verdict": verdict, "all_beat": not lost,
           "seconds": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    from icm_core.files import write_text

    write_text(args.out / f"{args.name}.json", json.dumps(doc, indent=2))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(doc["results"][0]))
    w.writeheader()
    w.writerows(doc["results"])
    write_text(args.out / f"{args.name}.csv", buf.getvalue())
    print(f"wrote {args.out}/{args.name}.json and .csv ({doc['seconds']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
