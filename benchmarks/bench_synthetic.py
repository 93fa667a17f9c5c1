"""Synthetic scene generation speed on one core, at the resolutions the workbench uses.

Requirements (issues 2 and 10): >= 20 scenes/s at 128x128 and >= 5 scenes/s at 256x256 on one
core, so scenes can be rendered on the fly while training. Compared side by side with decoding
a PNG of the same size from disk, the cost of loading a real dataset sample. Run it with
``OMP_NUM_THREADS=1``; on a shared machine the CPU-time rate (``*_cpu``) is the steadier one.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import torch
from PIL import Image

from icm_core.data.synthetic import SyntheticScenes

REQUIRED = {"128x128": 20.0, "256x256": 5.0}


def _rate(fn, n) -> tuple[float, float]:
    """Calls per second of wall-clock time and of this process's CPU time."""
    fn(0)
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t), n / max(time.process_time() - c, 1e-9)


def main() -> dict:
    torch.set_num_threads(1)
    results = {}
    for size in ((64, 64), (128, 128), (256, 256), (448, 576)):
        ds = SyntheticScenes("train", size, length=10_000)
        n = {64: 60, 128: 40, 256: 20}.get(size[0], 6)
        synth, synth_cpu = _rate(lambda i, ds=ds: ds[i], n)
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8)).save(
            buf, format="PNG")
        data = buf.getvalue()
        png, _ = _rate(lambda i, b=data: np.asarray(Image.open(io.BytesIO(b))), n)
        results[f"{size[0]}x{size[1]}"] = {"synthetic_scenes_per_s": round(synth, 1),
                                           "synthetic_scenes_per_s_cpu": round(synth_cpu, 1),
                                           "png_decodes_per_s": round(png, 1),
                                           "synthetic_over_png_time": round(png / synth, 2)}
    print(json.dumps(results, indent=2))
    for key, need in REQUIRED.items():
        got = results[key]["synthetic_scenes_per_s"]
        print(f"requirement >= {need:g} scenes/s at {key} on one core:",
              "met" if got >= need else f"NOT met ({got})")
    return results


if __name__ == "__main__":
    main()
