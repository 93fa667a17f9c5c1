"""Training cost of the backbone modes side by side: DoRA and LoRA against full fine-tuning.

The paper's efficiency claim is about what trains: per step we measure, on the same model and
batch, the wall time of forward + backward + Adam step, the trainable parameters, the bytes of
Adam's state (read from the optimizer after a step) and of the per-task file a run stores.
Ratios are against full fine-tuning. CPU, random-weight 12-block EVA-02-tiny, 128x128, batch 2:
the ratios, not the absolute times, are the result.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from icm_core.config import load_config
from icm_core.models.icm import build_model, serialized_size
from icm_core.tasks.registry import TASKS

MODES = {"full": ["adapter=full"], "dora_r8_qkv": ["adapter=dora_r8_qkv"],
         "lora_r16_qv": ["adapter=lora_r16_qv"], "fixed": ["adapter=fixed"]}


def measure(overrides, steps: int = 8, warmup: int = 3) -> dict:
    cfg = load_config(["backbone.depth=12", "data.size=[128,128]", *overrides])
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 128, 128, generator=g)
    target = torch.randint(0, 6, (2, 128, 128), generator=g)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        out = model(x)
        loss = out.bpp.mean() + TASKS["semseg"].loss(out.prediction, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    adam_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                     if torch.is_tensor(v))
    report = model.trainable_parameters()
    return {"step_s": statistics.median(times), "trainable_backbone_params": report.trainable_backbone_params,
            "trainable_total_params": sum(p.numel() for p in params), "adam_state_bytes": adam_bytes,
            "task_file_bytes": serialized_size(model.task_state_dict())}


def main() -> dict:
    torch.set_num_threads(2)
    results = {name: measure(ov) for name, ov in MODES.items()}
    full = results["full"]
    for r in results.values():
        r["step_time_vs_full"] = round(r["step_s"] / full["step_s"], 3)
        r["adam_state_vs_full"] = round(r["adam_state_bytes"] / full["adam_state_bytes"], 4)
        r["task_file_vs_full"] = round(r["task_file_bytes"] / full["task_file_bytes"], 4)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
