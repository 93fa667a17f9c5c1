"""Synthetic scene generation speed on one core, at the resolutions the workbench uses.

Requirement (issue 2): >= 20 scenes/s at 128x128 on one core. Compared side by side with
decoding a PNG of the same size from disk, the cost of loading a real dataset sample.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import torch
from PIL import Image

from icm_core.data.synthetic import SyntheticScenes


def _rate(fn, n):
    fn(0)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> dict:
    torch.set_num_threads(1)
    results = {}
    for size in ((64, 64), (128, 128), (448, 576)):
        ds = SyntheticScenes("train", size, length=10_000)
        n = 40 if size[0] <= 128 else 5
        synth = _rate(lambda i, ds=ds: ds[i], n)
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8)).save(
            buf, format="PNG")
        data = buf.getvalue()
        png = _rate(lambda i, b=data: np.asarray(Image.open(io.BytesIO(b))), n)
        results[f"{size[0]}x{size[1]}"] = {"synthetic_scenes_per_s": round(synth, 1),
                                           "png_decodes_per_s": round(png, 1),
                                           "synthetic_over_png_time": round(png / synth, 2)}
    print(json.dumps(results, indent=2))
    ok = results["128x128"]["synthetic_scenes_per_s"] >= 20
    print("requirement >= 20 scenes/s at 128x128 on one core:", "met" if ok else "NOT met")
    return results


if __name__ == "__main__":
    main()
