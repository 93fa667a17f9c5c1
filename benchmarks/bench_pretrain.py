"""Cost of ``icm pretrain``: seconds per optimizer step and per rendered scene, and the steps
that fit a time budget, for a preset, at 1 and 2 torch threads side by side.

    .venv/bin/python benchmarks/bench_pretrain.py --preset default --steps 4 --budget 3600

A few steps only (the first one, warm-up, is not counted): the scene pool is shrunk to
``--scenes`` scenes, which changes what is drawn, not what a step costs. The budget left for
steps is the budget less the time to render the preset's whole pool with its workers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def measure(preset: str, threads: int, steps: int, scenes: int) -> dict:
    from icm_core.training.pretrain import Pretrainer, load_pretrain_config

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_pretrain_config([f"pretrain={preset}", f"out_dir={out}", f"data.length={scenes}",
                                    "workers=0", f"threads={threads}"])
        t = Pretrainer(cfg, progress=False)
        t0 = time.perf_counter()
        t.load_pool()
        render = (time.perf_counter() - t0) / scenes
        t.train_step(0)  # warm-up: allocator, autograd graph, first-call costs
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            t.train_step(s)
        step = (time.perf_counter() - t0) / steps
    return {"threads": threads, "s_per_step": round(step, 3), "s_per_scene_render": round(render, 4),
            "batch_size": cfg.batch_size, "crop": list(cfg.data.size), "depth": cfg.backbone.depth}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--budget", type=float, default=3600.0, help="seconds for the whole run")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    from icm_core.training.pretrain import load_pretrain_config

    full = load_pretrain_config([f"pretrain={args.preset}"])
    rows = [measure(args.preset, n, args.steps, args.scenes) for n in args.threads]
    for r in rows:
        pool = full.data.length * r["s_per_scene_render"] / max(1, full.workers)
        r["pool_render_s"] = round(pool, 1)
        r["steps_in_budget"] = int(max(0.0, args.budget - pool) / r["s_per_step"])
    if len(rows) > 1:
        rows[-1]["speedup_vs_first"] = round(rows[0]["s_per_step"] / rows[-1]["s_per_step"], 2)
    result = {"preset": args.preset, "configured_steps": full.steps, "budget_s": args.budget,
              "rows": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
