"""Pretrain the codec once (issue 22's warm-start lever) and write the file runs start from.

``icm_core.training.codec_init.pretrain_codec`` on the quick preset's frozen backbone: a task
head that codes the backbone's features at one rate and reconstructs the image, ``--steps``
steps on the synthetic ``pretrain`` split, R + lmbda * 255^2 * MSE. Writes
``results/codec_init/codec-<steps>.safetensors`` (not committed: remake it with this command)
and the small ``results/codec_init_pretrain.json`` (the loss, bpp and PSNR along the way, the
seconds it took). Then the lever is measured like the others, one at a time, against the same
runs without it::

    OMP_NUM_THREADS=1 python benchmarks/bench_codec_init.py --steps 2000
    OMP_NUM_THREADS=1 ICM_VVENC=... python benchmarks/bench_rate_modes.py --tasks semseg,normals \\
        --modes vr-time --set train.codec_init=results/codec_init/codec-2000.safetensors ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _runs import provenance, timed_log

from icm_core.config import load_config
from icm_core.files import write_text
from icm_core.training.codec_init import pretrain_codec, save_codec

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lmbda", type=float, default=0.0035)
    p.add_argument("--experiment", default="quick", help="the preset whose backbone and head "
                   "sizes the codec is pretrained with")
    p.add_argument("--out", type=Path, default=RESULTS / "codec_init")
    p.add_argument("--summary", type=Path, default=RESULTS / "codec_init_pretrain.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    log = timed_log()
    cfg = load_config([f"experiment={args.experiment}"])
    t0 = time.perf_counter()

    def report(v: dict) -> None:
        if v["step"] % 100 == 0 or v["step"] == args.steps:
            log(f"step {v['step']}/{args.steps}: loss {v['loss']:.3f}, {v['bpp']:.4f} bpp, "
                f"PSNR {v['psnr']:.2f} dB")

    head, history = pretrain_codec(cfg, args.steps, args.lmbda, progress=report)
    seconds = time.perf_counter() - t0
    out = save_codec(head, cfg, args.out / f"codec-{args.steps}.safetensors", history)
    every = max(1, args.steps // 20)
    doc = {"provenance": provenance(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "file": str(out),
           "history": [h for h in history if h["step"] % every == 0 or h["step"] == 1],
           "seconds": round(seconds, 1)}
    write_text(args.summary, json.dumps(doc, indent=2) + "\n")
    log(f"wrote {out} and {args.summary} ({seconds:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
