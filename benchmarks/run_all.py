"""Run every benchmark and save their JSON under benchmarks/results/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_decoder_flops  # noqa: E402
import bench_synthetic  # noqa: E402
import bench_training_cost  # noqa: E402

from icm_core.files import write_text  # noqa: E402

if __name__ == "__main__":
    out = Path(__file__).parent / "results"
    for name, mod in (("synthetic", bench_synthetic), ("decoder_flops", bench_decoder_flops),
                      ("training_cost", bench_training_cost)):
        write_text(out / f"{name}.json", json.dumps(mod.main(), indent=2))
    print(f"saved to {out}")
