"""FLOPs of the low-complexity decoder vs the full-resolution four-stage decoder ("Full Dec").

Counted by the library's own ``icm_core.evaluation.cost.decoder_gflops`` (what the Setup panel
shows): ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only, no
memory), at NYUD-v2's 448x576, semseg (40 classes), with the paper preset's decoder widths.
FlopCounterMode counts matrix multiplications and convolutions (2 FLOPs per multiply-add);
interpolations, normalizations and activations are not counted, for either decoder.
"""

from __future__ import annotations

import json

import torch

from icm_core.config import load_config
from icm_core.evaluation.cost import decoder_gflops
from icm_core.models.decoder import TransformerDecoder
from icm_core.tasks.registry import get_task

SIZE = (448, 576)
TASK = "semseg"


def decoder_flops(experiment: str, size=SIZE, task: str = TASK) -> dict:
    cfg = load_config([f"experiment={experiment}"])
    m = cfg.model
    with torch.device("meta"):  # the parameter count only: no weights in memory
        dec = TransformerDecoder(m.latent_channels, get_task(task).out_channels(cfg.data.name),
                                 m.decoder_dims, m.decoder_depths, m.decoder_heads, m.decoder)
    return {"decoder": m.decoder, "dims": list(m.decoder_dims), "depths": list(m.decoder_depths),
            "params": sum(p.numel() for p in dec.parameters()),
            "gflops": decoder_gflops(cfg, size, task)}


def main() -> dict:
    low = decoder_flops("paper")
    full = decoder_flops("full_dec")
    result = {"input": f"{SIZE[0]}x{SIZE[1]}, NYUD {TASK} (40 classes)", "low_complexity": low,
              "full_dec": full, "full_over_low_flops": full["gflops"] / low["gflops"]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
