"""`icm demo` before and after: the same demo on random and on synthetic-pretrained weights.

Issue 11. Runs ``icm_core.studies.demo.run_demo`` (the demo's lambdas, steps and size) twice, with
``backbone=tiny_random`` and ``backbone=tiny_synthetic``, and puts both real-bytes RA curves in
one plot. Writes ``benchmarks/results/demo_weights/{random,synthetic}/`` (each a full demo
folder with its report.html) and ``demo_weights.html`` / ``.json`` beside them.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_weights.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from icm_core.files import write_text
from icm_core.studies.demo import DEFAULT_STEPS, default_lambdas, run_demo
from icm_core.viz.figures import ra_figure

RESULTS = Path(__file__).parent / "results" / "demo_weights"
WEIGHTS = {"random": "backbone=tiny_random", "synthetic": "backbone=tiny_synthetic"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--task", default="semseg")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    curves, doc = {}, {"steps": args.steps, "task": args.task, "lambdas": list(default_lambdas(args.task))}
    for name, override in WEIGHTS.items():
        t = time.perf_counter()
        run_demo(args.out / name, steps=args.steps, task=args.task, extra_overrides=[override],
                 progress=False)
        res = json.loads((args.out / name / "results.json").read_text())["results"]
        metric = next(k for k in res if k not in ("bpp", "bpp_estimated"))
        curves[f"{name} weights"] = (res["bpp"], res[metric])
        doc[name] = {"bpp": res["bpp"], metric: res[metric], "seconds": round(time.perf_counter() - t)}
        print(f"{name:>9}: " + ", ".join(f"{b:.4f} bpp -> {v:.2f} {metric}"
                                         for b, v in zip(res["bpp"], res[metric])), flush=True)
    fig = ra_figure(curves, metric, f"icm demo ({args.task}, {args.steps} steps per lambda): "
                    "random vs synthetic-pretrained backbone, real bytes")
    write_text(args.out / "demo_weights.html", fig.to_html(include_plotlyjs="cdn"))
    write_text(args.out / "demo_weights.json", json.dumps(doc, indent=2))
    print(f"wrote {args.out}/demo_weights.html and .json")
    return doc


if __name__ == "__main__":
    main()
