"""odsF under the two boundary matchings: SEISM's correspondPixels against the fast one.

``BoundaryODSF(matching="seism")`` pairs pixels with the BSDS/SEISM ``correspondPixels``
(pyedgeeval), the literature's tool; ``matching="fast"`` with a maximum bipartite matching
(scipy). This measures, on synthetic scenes (``render_scene``: 1-pixel boundary labels), how far
the two odsF values lie apart and how much longer SEISM takes.

Predictions are simulated from the label, per scene and seeded, at three qualities:

- ``sharp``: the label blurred (Gaussian, sigma 1 px), scaled by a smooth random gain field
  (0.6-1) and moved by up to 1 px, plus 2 % noise;
- ``soft``: blurred with sigma 2.5 px and moved by up to 2 px, plus 5 % noise;
- ``cluttered``: ``soft`` plus half the normalised image gradient (texture edges: false
  positives) and 10 % noise.

For each (quality, max_dist of NYUD-v2 0.011 and PASCAL 0.0075) both matchings score the same
predictions with the default 99 thresholds; the seconds are each metric's ``update`` (thinning
included, which both share). Writes ``benchmarks/results/boundary_matching.json`` (atomically).

    OMP_NUM_THREADS=1 python benchmarks/bench_boundary_matching.py [--scenes 4 --size 240,320]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from icm_core.data.synthetic import render_scene, scene_seed
from icm_core.files import write_text
from icm_core.tasks.metrics import SEISM_AVAILABLE, SEISM_SEED, BoundaryODSF

RESULTS = Path(__file__).parent / "results"
QUALITIES = ("sharp", "soft", "cluttered")
MAX_DIST = {"nyud": 0.011, "pascal": 0.0075}


def simulate(gt: np.ndarray, image: np.ndarray, quality: str, seed: int) -> np.ndarray:
    """A soft boundary map in [0, 1] imitating a predictor of ``quality`` (see the docstring)."""
    rng = np.random.default_rng(seed)
    sigma, shift, noise = {"sharp": (1.0, 1, 0.02), "soft": (2.5, 2, 0.05),
                           "cluttered": (2.5, 2, 0.10)}[quality]
    p = ndimage.gaussian_filter(gt.astype(np.float64), sigma)
    p /= max(p.max(), 1e-9)
    p *= ndimage.zoom(rng.uniform(0.6, 1.0, (8, 8)), np.divide(gt.shape, 8), order=1)
    p = np.roll(p, tuple(rng.integers(-shift, shift + 1, 2)), axis=(0, 1))
    if quality == "cluttered":
        grey = image.mean(-1)
        grad = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
        p = p + 0.5 * grad / max(grad.max(), 1e-9)
    p = p + noise * rng.standard_normal(gt.shape)
    return np.clip(p, 0, 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--size", default="240,320", help="H,W")
    ap.add_argument("--thresholds", type=int, default=99)
    ap.add_argument("--out", type=Path, default=RESULTS / "boundary_matching.json")
    args = ap.parse_args()
    if not SEISM_AVAILABLE:
        raise SystemExit("pyedgeeval is not installed: pip install 'icm-workbench[seism]'")
    H, W = (int(v) for v in args.size.split(","))
    scenes = []
    for i in range(args.scenes):
        arrays = render_scene(scene_seed(0, "test", i), (H, W))
        scenes.append((arrays["boundary"].astype(np.float32), arrays["image"]))
    rows = []
    for quality in QUALITIES:
        preds = [simulate(gt, img, quality, 1000 + i) for i, (gt, img) in enumerate(scenes)]
        for dataset, max_dist in MAX_DIST.items():
            row = {"quality": quality, "dataset": dataset, "max_dist": max_dist}
            metrics = {}
            for matching in ("seism", "fast"):
                m = BoundaryODSF(max_dist=max_dist, n_thresholds=args.thresholds,
                                 matching=matching)
                t0 = time.perf_counter()
                for pred, (gt, _) in zip(preds, scenes):
                    m.update(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
                row[f"seconds_{matching}"] = round(time.perf_counter() - t0, 3)
                row[f"odsF_{matching}"] = round(m.compute(), 4)
                metrics[matching] = m
            s, f = metrics["seism"].counts, metrics["fast"].counts
            row["odsF_fast_minus_seism"] = round(row["odsF_fast"] - row["odsF_seism"], 4)
            row["time_ratio_seism_over_fast"] = round(row["seconds_seism"] / row["seconds_fast"], 2)
            # matched predicted pixels SEISM leaves unpaired, over all thresholds
            row["pairs_fast"] = int(f[:, 0].sum())
            row["pairs_lost_by_seism"] = int(f[:, 0].sum() - s[:, 0].sum())
            rows.append(row)
            print(json.dumps(row), flush=True)
    diffs = [r["odsF_fast_minus_seism"] for r in rows]
    ratios = [r["time_ratio_seism_over_fast"] for r in rows]
    summary = {
        "odsF_fast_minus_seism": {"min": min(diffs), "max": max(diffs),
                                  "mean": round(float(np.mean(diffs)), 4)},
        "time_ratio_seism_over_fast": {"min": min(ratios), "max": max(ratios),
                                       "median": round(float(np.median(ratios)), 2)},
        "pairs_lost_fraction": round(sum(r["pairs_lost_by_seism"] for r in rows)
                                     / max(sum(r["pairs_fast"] for r in rows), 1), 6),
    }
    result = {"scenes": args.scenes, "size": [H, W], "thresholds": args.thresholds,
              "seism_seed": SEISM_SEED, "rows": rows, "summary": summary,
              "note": "odsF in percent; seconds are BoundaryODSF.update over all scenes "
                      "(thinning shared), measured on the shared 2-core machine"}
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
