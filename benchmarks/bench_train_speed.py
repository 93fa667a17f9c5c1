"""Training speed of the quick preset on this CPU: where a step's time goes, and steps/s with
and without the scene cache, side by side.

Issue 22 ("faster training on this CPU"). Two parts:

1. A profile (cProfile) of ``--profile-steps`` steps rendered in the training process
   (``data.workers=0``), so every cost is on one thread: the seconds in rendering scenes, in
   the forward pass, in backward, in the optimizer and the rest, as shares of the step; with
   the scene cache off (before) and on (after).
2. Steps/s of whole trainings (``Trainer.fit``, the loader as ``icm demo`` runs it:
   ``data.workers=1``) with ``data.cache_scenes=false`` (every scene rendered at every draw:
   before) and ``true`` (rendered once, kept: after), run alternately ``--repeats`` times so
   both see the same machine load; the ratio is what is reported.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_speed.py --steps 600
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _runs import provenance, timed_log

from icm_core.config import load_config
from icm_core.files import write_text
from icm_core.training.trainer import Trainer

RESULTS = Path(__file__).parent / "results"
def _profile(overrides, steps: int, cache: bool, tmp: Path) -> dict:
    cfg = load_config([*overrides, f"train.max_steps={steps}", "data.workers=0",
                       f"data.cache_scenes={str(cache).lower()}", f"out_dir={tmp / 'profile'}"])
    trainer = Trainer(cfg, device="cpu")
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for step in range(steps):
        trainer.train_step(step, trainer.batch_of(step))
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof).stats
    parts = {}
    for (file, _, name), (_, _, _, cum, _) in stats.items():
        if name == "render_scene" and file.endswith("synthetic.py"):
            parts["render scenes"] = parts.get("render scenes", 0.0) + cum
        elif name == "forward" and file.endswith("icm.py"):
            parts["forward (model)"] = parts.get("forward (model)", 0.0) + cum
        elif name.startswith("<method 'run_backward'"):  # the autograd engine (a C method)
            parts["backward"] = parts.get("backward", 0.0) + cum
        elif name == "step" and "/torch/optim/" in file and file.endswith(("adam.py", "adamw.py",
                                                                           "sgd.py")):
            parts["optimizer"] = parts.get("optimizer", 0.0) + cum
    parts["other"] = max(0.0, total - sum(parts.values()))
    return {"steps": steps, "seconds": total,
            "shares": {k: v / total for k, v in parts.items()},
            "seconds_per_step": {k: v / steps for k, v in parts.items()}}


def _fit_seconds(overrides, steps: int, cache: bool, tmp: Path, i: int) -> float:
    cfg = load_config([*overrides, f"train.max_steps={steps}", "data.workers=1",
                       f"data.cache_scenes={str(cache).lower()}", "data.val_length=1",
                       f"out_dir={tmp / f'fit-{cache}-{i}'}"])
    trainer = Trainer(cfg, device="cpu")
    t = time.perf_counter()
    trainer.fit(progress=False)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="experiment=quick")
    p.add_argument("--steps", type=int, default=600, help="steps of each timed training")
    p.add_argument("--profile-steps", type=int, default=256,
                   help="profiled steps (2 epochs of the quick preset's 512 scenes at batch 4)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "train_speed.json")
    args = p.parse_args(argv)
    log = timed_log()
    overrides = [args.preset]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prof = {}
        for cache in (False, True):
            prof[f"cache_scenes={str(cache).lower()}"] = p_ = _profile(
                overrides, args.profile_steps, cache, tmp)
            log(f"profile, cache_scenes={cache}: "
                + ", ".join(f"{k} {v:.0%}" for k, v in p_["shares"].items()))
        times = {False: [], True: []}
        for i in range(args.repeats):
            for cache in (False, True):
                times[cache].append(_fit_seconds(overrides, args.steps, cache, tmp, i))
                log(f"cache_scenes={cache}: {args.steps} steps in {times[cache][-1]:.1f} s")
    before, after = statistics.median(times[False]), statistics.median(times[True])
    doc = {"provenance": provenance(), "args": {**vars(args), "out": str(args.out)},
           "torch_threads": torch.get_num_threads(), "profile": prof,
           "fit": {"steps": args.steps, "seconds_before": times[False],
                   "seconds_after": times[True],
                   "steps_per_second_before": args.steps / before,
                   "steps_per_second_after": args.steps / after,
                   "speedup": before / after},
           "note": "before: data.cache_scenes=false; after: true (the default). Whole "
                   "trainings including the final evaluation on one validation scene."}
    write_text(args.out, json.dumps(doc, indent=2) + "\n")
    log(f"steps/s {doc['fit']['steps_per_second_before']:.2f} -> "
        f"{doc['fit']['steps_per_second_after']:.2f} (x{doc['fit']['speedup']:.2f}); "
        f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
