"""Peak memory of a decoder forward pass (no_grad): low-complexity vs "Full Dec", side by side.

Each configuration (decoder, input size, attention path) runs in a fresh child process. On the
CPU the child reports its peak resident set size (``getrusage``) after building the decoder and
after the forward pass; the difference is what the forward pass added. On CUDA the child reports
``torch.cuda.max_memory_allocated`` around the forward pass instead.

Attention paths: ``fused`` is the default forward (``F.scaled_dot_product_attention`` wherever
the scores are not needed); ``explicit`` asks for the attention maps (``return_attention=True``),
which materializes every stage's (heads, Nq, Nk) score matrix. A configuration whose score
matrices alone would exceed ``--max-gib`` is not run and is reported with its predicted size.

    python benchmarks/bench_decoder_memory.py                # paper widths, 112x144 .. 448x576
    python benchmarks/bench_decoder_memory.py --sizes 448x576 --max-gib 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = ((112, 144), (224, 288), (448, 576))  # NYUD-v2's 448x576 and two smaller, same aspect
EXPERIMENTS = {"low": "paper", "full": "full_dec"}  # the paper's decoder widths for each kind
OUT_CHANNELS = 40  # NYUD semseg
PATCH = 16


def _decoder(kind: str):
    from icm_core.config import load_config
    from icm_core.models.decoder import TransformerDecoder

    m = load_config([f"experiment={EXPERIMENTS[kind]}"]).model
    dec = TransformerDecoder(m.latent_channels, OUT_CHANNELS, m.decoder_dims, m.decoder_depths,
                             m.decoder_heads, m.decoder).eval()
    return dec, m


def score_bytes(kind: str, size: tuple[int, int]) -> int:
    """Bytes of the largest (heads, Nq, Nk) float32 score matrix the explicit path holds."""
    _, m = _decoder(kind)
    h, w = size[0] // PATCH, size[1] // PATCH
    largest = 0
    for s in range(len(m.decoder_dims)):
        hs, ws = h * 2 ** s, w * 2 ** s
        if kind == "low":  # queries at stride 2, keys at stride 2^(s+2) of the stage
            nq = -(-hs // 2) * -(-ws // 2)
            k = 2 ** (s + 2)
            nk = -(-hs // k) * -(-ws // k)
        else:
            nq = nk = hs * ws
        largest = max(largest, m.decoder_heads * nq * nk * 4)
    return largest


def _child(kind: str, size: tuple[int, int], path: str) -> dict:
    """Runs in the child: build, measure, forward, measure."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dec, m = _decoder(kind)
    dec = dec.to(device)
    y = torch.randn(1, m.latent_channels, size[0] // PATCH, size[1] // PATCH, device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    t0 = time.perf_counter()
    with torch.no_grad():
        out = dec(y, size, return_attention=path == "explicit").prediction
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": torch.cuda.get_device_name() if cuda else "cpu",
            "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
            "peak_bytes": peak, "before_bytes": before, "forward_bytes": peak - before,
            "output": "x".join(map(str, out.shape))}


def measure(kind: str, size: tuple[int, int], path: str, max_gib: float) -> dict:
    row = {"decoder": kind, "size": f"{size[0]}x{size[1]}", "attention": path}
    if path == "explicit":
        need = score_bytes(kind, size)
        row["explicit_scores_gib"] = need / 2 ** 30
        if need > max_gib * 2 ** 30:  # scores and their softmax, at least
            row["skipped"] = f"one score matrix alone is {need / 2 ** 30:.1f} GiB > --max-gib {max_gib}"
            return row
    cmd = [sys.executable, __file__, "--child", kind, f"{size[0]}x{size[1]}", path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        row["failed"] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"rc {r.returncode}"
        return row
    row.update(json.loads(r.stdout.strip().splitlines()[-1]))
    return row


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("KIND", "HxW", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", type=_size, default=list(SIZES))
    ap.add_argument("--max-gib", type=float, default=4.0,
                    help="skip explicit-score runs whose score matrix alone is larger")
    args = ap.parse_args(argv)
    if args.child:
        kind, size, path = args.child
        print(json.dumps(_child(kind, _size(size), path)))
        return {}
    rows = [measure(kind, size, path, args.max_gib)
            for size in args.sizes for kind in ("low", "full") for path in ("fused", "explicit")]
    by = {(r["decoder"], r["size"], r["attention"]): r for r in rows}
    ratios = {}
    for size in args.sizes:
        s = f"{size[0]}x{size[1]}"
        low, full = by[("low", s, "fused")], by[("full", s, "fused")]
        if "forward_bytes" in low and "forward_bytes" in full:
            ratios[f"{s} full/low forward peak (fused)"] = full["forward_bytes"] / max(low["forward_bytes"], 1)
        ex = by[("full", s, "explicit")]
        if "forward_bytes" in ex and "forward_bytes" in full:
            ratios[f"{s} full explicit/fused forward peak"] = ex["forward_bytes"] / max(full["forward_bytes"], 1)
    result = {"what": "decoder forward, no_grad, batch 1, float32, paper widths (paper / full_dec)",
              "measure": "forward_bytes: peak RSS of a fresh child process after the forward pass "
                         "minus before it (CPU); max_memory_allocated minus allocated (CUDA)",
              "rows": rows, "ratios": ratios}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
