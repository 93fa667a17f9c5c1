"""Training cost of the backbone modes side by side: DoRA and LoRA against full fine-tuning.

The paper's efficiency claim is about what trains: per step we measure, on the same model and
batch, the wall time of the trainer's own optimizer step (``Trainer.train_step``: forward,
R + lambda * task loss with the preliminary term, the entropy bottleneck's auxiliary loss,
backward, Adam, scheduler), the trainable parameters, the bytes of Adam's state (read from the
trainer's optimizer after the steps) and of the per-task file a run stores. Ratios are against
full fine-tuning. CPU, random-weight 12-block EVA-02-tiny, 128x128, batch 2: the ratios, not
the absolute times, are the result.

    python benchmarks/bench_training_cost.py              # 3 warm-up + 8 timed steps a mode
    python benchmarks/bench_training_cost.py --depth 4 --size 64 --steps 1 --warmup 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from icm_core.config import load_config
from icm_core.evaluation.accounting import measured_optimizer_state_bytes, safetensors_bytes
from icm_core.training.trainer import Trainer

MODES = {"full": ["adapter=full"], "dora_r8_qkv": ["adapter=dora_r8_qkv"],
         "lora_r16_qv": ["adapter=lora_r16_qv"], "fixed": ["adapter=fixed"]}


def measure(overrides, steps: int = 8, warmup: int = 3, depth: int = 12, size: int = 128) -> dict:
    """Median seconds of ``Trainer.train_step`` on one fixed semseg batch of 2, and the sizes
    of what trains, for the mode ``overrides`` give."""
    with tempfile.TemporaryDirectory(prefix="icm-training-cost-") as out:
        cfg = load_config(["backbone=tiny_random", f"backbone.depth={depth}", "task=semseg",
                           f"data.size=[{size},{size}]", "train.batch_size=2", "data.workers=0",
                           f"train.max_steps={warmup + steps}", f"out_dir={out}", *overrides])
        trainer = Trainer(cfg, device="cpu")
        batch = trainer.batch_of(0)
        times = []
        for i in range(warmup + steps):
            t = time.perf_counter()
            trainer.train_step(i, batch)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    opt, model = trainer.optimizer, trainer.model
    adam_bytes = measured_optimizer_state_bytes(opt)
    report = model.trainable_parameters()
    return {"step_s": statistics.median(times), "trainable_backbone_params": report.trainable_backbone_params,
            "trainable_total_params": sum(p.numel() for p in trainer.params),
            "adam_state_bytes": adam_bytes,
            "task_file_bytes": safetensors_bytes(model.task_state_dict())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per mode (the median counts)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--depth", type=int, default=12, help="backbone blocks (at least 4)")
    p.add_argument("--size", type=int, default=128, help="image side (px)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {name: measure(ov, args.steps, args.warmup, args.depth, args.size)
               for name, ov in MODES.items()}
    full = results["full"]
    for r in results.values():
        r["step_time_vs_full"] = round(r["step_s"] / full["step_s"], 3)
        r["adam_state_vs_full"] = round(r["adam_state_bytes"] / full["adam_state_bytes"], 4)
        r["task_file_vs_full"] = round(r["task_file_bytes"] / full["task_file_bytes"], 4)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
