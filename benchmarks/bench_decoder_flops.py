"""FLOPs of the low-complexity decoder vs the full-resolution four-stage decoder ("Full Dec").

Counted by ``icm_core.evaluation.accounting.decoder_cost`` (the workbench's one FLOP counter,
torch.utils.flop_counter.FlopCounterMode, on a meta build: shapes only, no memory), at
NYUD-v2's 448x576 (padded and patched as the model does), with the paper preset's decoder
widths, for semantic segmentation (40 classes). FlopCounterMode counts matrix multiplications
and convolutions (2 FLOPs per multiply-add); interpolations, normalizations and activations
are not counted, for either decoder.
"""

from __future__ import annotations

import json

from icm_core.config import load_config
from icm_core.evaluation.accounting import decoder_cost

SIZE = (448, 576)
TASK = "semseg"


def decoder_flops(experiment: str, size=SIZE, task: str = TASK) -> dict:
    cfg = load_config([f"experiment={experiment}"])
    m = cfg.model
    cost = decoder_cost(cfg, size, task)
    return {"decoder": m.decoder, "dims": list(m.decoder_dims), "depths": list(m.decoder_depths),
            "params": cost["params"], "gflops": cost["gflops"]}


def main() -> dict:
    low = decoder_flops("paper")
    full = decoder_flops("full_dec")
    result = {"input": f"{SIZE[0]}x{SIZE[1]}, NYUD {TASK} (40 classes)", "low_complexity": low,
              "full_dec": full, "full_over_low_flops": full["gflops"] / low["gflops"]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
