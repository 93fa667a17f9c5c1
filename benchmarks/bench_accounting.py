"""What settings cost, side by side, on this CPU: ``icm bench`` and ``icm bench --compare``.

1. The tiny preset (4-block random EVA-02-tiny, 128x128, batch 2): DoRA against LoRA, Full FT
   and Fixed (parameters, bytes, storage for K tasks, FLOPs, the trainer's step time and peak
   memory), the low-complexity decoder against Full Dec, merged against unmerged adapters,
   DoRA's cached weight norm against recomputed (``icm_core.training.bench.compare``).
2. The paper's scale (EVA-02-L + DoRA r8 qkv at 448x576, random weights, meta device): what is
   counted (parameters, 0.41 %, adapter bytes, storage, FLOPs per component, Adam's state) for
   the paper preset, Full FT, Fixed, LoRA and Full Dec. One EVA-02-L training step (about 88 s,
   6.4 GB) is measured only with ``--paper-step``.

Writes benchmarks/results/accounting_cpu.json with the machine, the git commit and the command.

    OMP_NUM_THREADS=1 python benchmarks/bench_accounting.py            # about 5-10 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_accounting.py --paper-step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from icm_core.files import write_text
from icm_core.training.bench import bench, compare

OUT = Path(__file__).parent / "results" / "accounting_cpu.json"
TINY = ["backbone=tiny_random", "data.size=[128,128]", "train.batch_size=2", "data.workers=0"]
PAPER = {"DoRA r8 qkv (paper)": ["experiment=paper"], "LoRA r16 qv": ["experiment=lora_r16_qv"],
         "Full FT": ["experiment=full_ft"], "Fixed": ["experiment=fixed"],
         "Full Dec": ["experiment=full_dec"]}
KEEP = ("total_params", "trainable_params", "trainable_backbone_params", "backbone_params",
        "trainable_percent", "adapter_bytes", "k", "storage_bytes_k_tasks",
        "storage_full_copies_bytes_k_tasks", "flops", "decoder_flops_ratio_full_over_low",
        "optimizer_state_bytes", "optimizer_state_source", "train_step_seconds",
        "images_per_second", "peak_memory_bytes", "peak_memory_inference_bytes", "memory_method",
        "inference_seconds", "encode_seconds", "decode_seconds", "stream_bytes", "energy_joules",
        "energy_note", "not_measured", "size", "batch_size", "weights")


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "git_commit": commit}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper-step", action="store_true", help="also one EVA-02-L training step "
                   "at 448x576 (about 88 s and 6.4 GB), alone in its child process")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per adapter kind")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = {"command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
              "machine": machine(), "device": "cpu"}
    print("tiny preset: icm bench ...", flush=True)
    result["tiny"] = {k: v for k, v in bench(TINY).to_dict().items() if k in KEEP}
    print("tiny preset: icm bench --compare dora,lora,full,fixed ...", flush=True)
    result["tiny_compare"] = compare(TINY, steps=args.steps, warmup=1, repeats=5)
    result["paper"] = {}
    for name, ov in PAPER.items():
        print(f"paper scale: {name} ...", flush=True)
        measure = ("step",) if args.paper_step and name.endswith("(paper)") else None
        result["paper"][name] = {k: v for k, v in bench(ov, measure=measure).to_dict().items()
                                 if k in KEEP}
    dora, full = result["paper"]["DoRA r8 qkv (paper)"], result["paper"]["Full FT"]
    result["paper_ratios"] = {
        "trainable_params_full_over_dora": full["trainable_params"] / dora["trainable_params"],
        "storage_k_tasks_full_over_dora": full["storage_bytes_k_tasks"] / dora["storage_bytes_k_tasks"],
        "optimizer_state_full_over_dora": full["optimizer_state_bytes"] / dora["optimizer_state_bytes"],
        "decoder_flops_full_over_low": dora["decoder_flops_ratio_full_over_low"]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} in {result['seconds']} s")
    return result


if __name__ == "__main__":
    main()
