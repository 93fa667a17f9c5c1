"""The pre-processor baseline (Lu et al.): its JPEG proxy against real bytes, and pre-processor +
JPEG against plain JPEG through the quick semseg baseline, on held-out synthetic scenes.

1. Proxy agreement (``icm_core.baselines.jpeg_proxy.proxy_agreement``): proxy bits against the real
   JPEG file size of every (image, quality) pair, on ``SyntheticScenes("test")`` images at each
   size; Pearson, Spearman, median relative error, and the Spearman within single qualities
   (does the proxy rank images as JPEG does?).
2. Rate-accuracy: the quick preset with ``task=semseg model.compression=false`` (trained once
   and cached under ``benchmarks/results/ra_runs/``, keyed as ``bench_ra_synthetic.py`` keys
   it, or any run folder given with ``--baseline``), a pre-processor trained against it per
   lambda (frozen baseline, differentiable JPEG proxy), then on ``--sets`` disjoint sets of
   ``--images`` held-out test scenes: for every quality of the JPEG ladder the real bytes and
   the mIoU of plain JPEG and of pre-processor + JPEG at the same quality, and the BD-rate of
   pre-processor + JPEG against plain JPEG (``icm_core.evaluation.bdrate.bd_rate``, with the mIoU range
   it averages over; "not comparable" where it returns none).

Writes ``benchmarks/results/preprocessor.json`` (atomically). Defaults are the README's
measurement (random-weight backbone, as the baseline it quotes; ``--backbone tiny_synthetic``
is today's quick preset). Measured on the shared, loaded 2-core machine: the baseline trains
in about 9 minutes (once, then cached), each pre-processor in about 6, and each coded ladder
of 32 scenes takes about 1 (the whole run, not timed end to end, adds up to 25-30).

    OMP_NUM_THREADS=1 python benchmarks/bench_preprocessor.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _runs import QUICK_SETTINGS, timed_log, train_cached  # benchmarks/_runs.py (run as scripts)
from scipy.stats import spearmanr

from icm_core.baselines.classical import get_codec
from icm_core.baselines.jpeg_proxy import proxy_agreement
from icm_core.baselines.preprocessor import (
    PreprocessorConfig,
    apply_preprocessor,
    train_preprocessor,
)
from icm_core.data.held_out import HeldOut
from icm_core.data.synthetic import SyntheticScenes
from icm_core.evaluation.bdrate import bd_rate
from icm_core.evaluation.score import code_images, score
from icm_core.files import write_text
from icm_core.training.checkpoint import load_checkpoint

RESULTS = Path(__file__).parent / "results"
TASK = "semseg"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _agreement(sizes: list[int], n: int, qualities: list[int], log) -> dict:
    """Proxy vs real JPEG bytes per image size."""
    out = {}
    for size in sizes:
        images = HeldOut(n, size, [TASK]).images
        r = proxy_agreement(images, qualities)
        per_q = {}
        for q in qualities:
            idx = [i for i, p in enumerate(r["pairs"]) if p[1] == q]
            rho = spearmanr([r["proxy_bits"][i] for i in idx], [r["real_bytes"][i] for i in idx])[0]
            per_q[q] = None if np.isnan(rho) else float(rho)
        out[size] = {"pairs": len(r["pairs"]), "pearson": r["pearson"], "spearman": r["spearman"],
                     "median_rel_error": r["median_rel_error"], "spearman_per_quality": per_q}
        log(f"proxy agreement at {size} px: {len(r['pairs'])} pairs")
    return out


def _baseline(args, log) -> torch.nn.Module:
    """The quick semseg baseline without compression: ``--baseline`` or the cached/trained run."""
    if args.baseline:
        model, _ = load_checkpoint(args.baseline)
        log(f"baseline: {args.baseline}")
        return model.eval()
    overrides = [f"task={TASK}", "model.compression=false", f"backbone={args.backbone}"]
    if args.baseline_steps:
        overrides.append(f"train.max_steps={args.baseline_steps}")
    model = train_cached(overrides, args.out / "ra_runs", settings=QUICK_SETTINGS,
                         retrain=args.retrain, log=log)[0]
    return model.eval()


def _curve(codec, model, images, targets, ladder: list[int]) -> list[dict]:
    """Real bytes per image and mIoU of the decoded images at each quality."""
    rows = []
    for q in ladder:
        coded = code_images(codec, images, q, 1.0)
        bpp, decoded = coded.bpp, coded.decoded
        pixels = images[0].size[0] * images[0].size[1]
        rows.append({"quality": q, "bpp": bpp, "bytes_per_image": bpp * pixels / 8,
                     "miou": score(model, TASK, decoded, targets)[0]})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,128,256", help="proxy agreement: image sizes (px)")
    p.add_argument("--agree-images", type=int, default=8, help="proxy agreement: images per size")
    p.add_argument("--qualities", default="5,10,20,30,50,70,90", help="proxy agreement: qualities")
    p.add_argument("--lambdas", default="0.3,1.0", help="one pre-processor per lambda")
    p.add_argument("--steps", type=int, default=200, help="pre-processor training steps")
    p.add_argument("--batch", type=int, default=2, help="pre-processor batch size")
    p.add_argument("--crop", type=int, default=128, help="pre-processor training crop (px)")
    p.add_argument("--train-qualities", default="5,10,20,30,50",
                   help="JPEG qualities the proxy draws from while training")
    p.add_argument("--size", type=int, default=128, help="evaluation size (px, square)")
    p.add_argument("--images", type=int, default=32, help="held-out scenes per evaluation set")
    p.add_argument("--sets", type=int, default=2, help="disjoint evaluation sets")
    p.add_argument("--ladder", default="full",
                   help="evaluation JPEG qualities: full (the codec's ladder) or a comma list")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a run folder trained with model.compression=false (default: train or "
                        "reuse the cached quick semseg baseline)")
    p.add_argument("--backbone", default="tiny_random", help="backbone preset of the baseline")
    p.add_argument("--baseline-steps", type=int, default=None,
                   help="baseline training steps (default: the quick preset's)")
    p.add_argument("--retrain", action="store_true", help="ignore the cached baseline")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = timed_log()

    sizes, qualities = _ints(args.sizes), _ints(args.qualities)
    agreement = _agreement(sizes, args.agree_images, qualities, log)

    codec = get_codec("jpeg")
    ladder = list(codec.qualities) if args.ladder == "full" else _ints(args.ladder)
    model = _baseline(args, log)
    held = HeldOut(args.images * args.sets, args.size, [TASK])
    sets = [(held.images[k * args.images:(k + 1) * args.images],
             [s[TASK] for s in held.samples[k * args.images:(k + 1) * args.images]])
            for k in range(args.sets)]
    results = [{"scenes": [k * args.images, (k + 1) * args.images],
                "uncompressed_miou": score(model, TASK, ims, tg)[0],
                "jpeg": _curve(codec, model, ims, tg, ladder), "preprocessed": {}}
               for k, (ims, tg) in enumerate(sets)]
    log(f"plain JPEG: {len(ladder)} qualities on {args.sets} x {args.images} scenes")

    train = SyntheticScenes("train", size=(args.crop, args.crop), tasks=[TASK], length=512)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    for lm in lambdas:
        cfg = PreprocessorConfig(lmbda=lm, qualities=tuple(_ints(args.train_qualities)),
                                 steps=args.steps, batch_size=args.batch, size=args.crop)
        t = time.perf_counter()
        pp = train_preprocessor(model, TASK, train, cfg)
        log(f"lambda {lm}: pre-processor trained, {args.steps} steps in "
            f"{time.perf_counter() - t:.0f} s")
        for res, (ims, tg) in zip(results, sets):
            pims = [apply_preprocessor(pp, im) for im in ims]
            curve = _curve(codec, model, pims, tg, ladder)
            plain = res["jpeg"]
            bd = bd_rate(([r["bpp"] for r in plain], [r["miou"] for r in plain]),
                         ([r["bpp"] for r in curve], [r["miou"] for r in curve]))
            res["preprocessed"][str(lm)] = {
                "no_codec_miou": score(model, TASK, pims, tg)[0], "curve": curve,
                "bd_rate": {"value": bd.value, "reason": bd.reason,
                            "miou_range": list(bd.metric_range) if bd.metric_range else None}}

    print(f"\n== proxy vs real JPEG bytes ({args.agree_images} test images per size, "
          f"qualities {qualities})")
    print(f"{'size':>6}{'pairs':>7}{'pearson':>9}{'spearman':>10}{'med err':>9}  spearman per q")
    for size, a in agreement.items():
        per_q = " ".join(f"q{q}:{v:.3f}" if v is not None else f"q{q}:n/a"
                         for q, v in a["spearman_per_quality"].items())
        print(f"{size:>6}{a['pairs']:>7}{a['pearson']:>9.4f}{a['spearman']:>10.4f}"
              f"{100 * a['median_rel_error']:>8.1f}%  {per_q}")
    for res in results:
        lo, hi = res["scenes"]
        print(f"\n== test scenes {lo}-{hi - 1} at {args.size} px, uncompressed mIoU "
              f"{res['uncompressed_miou']:.3f}; pre-processed, no codec: " + ", ".join(
                  f"lambda {lm}: {v['no_codec_miou']:.3f}" for lm, v in res["preprocessed"].items()))
        head = f"{'q':>4}{'JPEG B':>9}{'mIoU':>8}"
        for lm in res["preprocessed"]:
            head += f"{'pp' + lm + ' B':>11}{'saved':>8}{'mIoU':>8}"
        print(head)
        for i, r in enumerate(res["jpeg"]):
            line = f"{r['quality']:>4}{r['bytes_per_image']:>9.0f}{r['miou']:>8.3f}"
            for v in res["preprocessed"].values():
                c = v["curve"][i]
                saved = 100 * (1 - c["bytes_per_image"] / r["bytes_per_image"])
                line += f"{c['bytes_per_image']:>11.0f}{saved:>7.1f}%{c['miou']:>8.3f}"
            print(line)
        for lm, v in res["preprocessed"].items():
            b = v["bd_rate"]
            if b["value"] is None:
                print(f"BD-rate, pre-processor (lambda {lm}) + JPEG vs JPEG: not comparable "
                      f"({b['reason']})")
            else:
                r0, r1 = b["miou_range"]
                print(f"BD-rate, pre-processor (lambda {lm}) + JPEG vs JPEG: {b['value']:+.2f} % "
                      f"over mIoU {r0:.3f}-{r1:.3f} ({r1 - r0:.3f} points)")

    doc = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "proxy_agreement": agreement, "ladder": ladder, "sets": results,
           "seconds": round(time.perf_counter() - t0, 1)}
    write_text(args.out / "preprocessor.json", json.dumps(doc, indent=2))
    log(f"wrote {args.out / 'preprocessor.json'}")
    return doc


if __name__ == "__main__":
    main()
