"""benchmarks/results/accounting_cpu.json (bench_accounting.py) -> the README's and the
measurements page's cost table, benchmarks/results/summary/costs_paper.json: the paper's
settings at EVA-02-L, 448x576, side by side (counted, and one training step measured on this
CPU where the benchmark ran it). The GPU column stays "not measured" until
scripts/gpu_check.sh has run on a GPU and its JSON is committed
(benchmarks/results/gpu_check.json).

    python scripts/costs_table.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _gb(v):
    return None if v is None else v / 1e9


def _mb(v):
    return None if v is None else v / 1e6


GPU_ROWS = {"DoRA r8 qkv (paper)": "paper", "Full FT": "full_ft"}  # gpu_check.py's bench step


def _gpu_step(gpu: dict | None, label: str):
    bench = ((gpu or {}).get("steps", {}).get("bench") or {})
    if not bench.get("ok") or label not in GPU_ROWS:
        return None
    return bench["result"].get(GPU_ROWS[label], {}).get("train_step_seconds")


def table(doc: dict, gpu: dict | None = None) -> dict:
    rows = []
    for label, r in doc["paper"].items():
        step = _gpu_step(gpu, label)
        rows.append([label, r["trainable_percent"], _mb(r["adapter_bytes"]),
                     _gb(r["storage_bytes_k_tasks"]), _mb(r["optimizer_state_bytes"]),
                     r["flops"]["total"] / 1e9, r["flops"]["decoder"] / 1e9,
                     r.get("train_step_seconds"), _gb(r.get("peak_memory_bytes")),
                     "not measured" if step is None else f"{step:.3f} s"])
    size = "x".join(map(str, next(iter(doc["paper"].values()))["size"]))
    k = next(iter(doc["paper"].values()))["k"]
    return {"title": f"What each setting costs at the paper's scale (EVA-02-L, {size}, random "
                     "weights)",
            "source": f"{doc['command']} (commit {doc['machine']['git_commit'][:10]}, "
                      f"{doc['machine']['cpus']}-core CPU, one thread)",
            "columns": [{"name": "setting"},
                        {"name": "trainable % of backbone", "format": ".2f"},
                        {"name": "task file MB", "format": ".1f"},
                        {"name": f"storage, {k} tasks GB", "format": ".2f"},
                        {"name": "Adam state MB", "format": ".0f"},
                        {"name": "GFLOPs per image", "format": ".0f"},
                        {"name": "decoder GFLOPs", "format": ".1f"},
                        {"name": "CPU train step s", "format": ".0f"},
                        {"name": "CPU step peak GB", "format": ".1f"},
                        {"name": "GPU train step"}],
            "rows": rows}


def ratio_table(doc: dict) -> dict:
    """The tiny preset's side-by-side ratios (one process, same batch and size)."""
    tc = doc["tiny_compare"]
    cols = ("trainable_params", "adapter_bytes", "optimizer_state_bytes", "flops",
            "train_step_seconds", "peak_memory_bytes")
    rows = []
    for key, r in tc["ratios"].items():
        kind = key.split("_over_")[0]
        if kind != "dora":
            rows.append([f"{tc['adapters'][kind]['label']} / DoRA", *[r.get(c) for c in cols],
                         None])
    dec, inf = tc["decoder"], tc["inference"]
    none = [None] * 3
    rows += [["Full Dec / low-complexity decoder", *none, dec["full_over_low_flops"], None, None,
              dec["full_over_low_seconds"]],
             ["adapters merged / unmerged (inference)", *none, None, None, None,
              inf["merged_over_unmerged"]],
             ["DoRA norm cached / recomputed (inference)", *none, None, None, None,
              inf["cached_over_recomputed"]],
             ["bf16 / fp32", *none, None, None, None, inf["precision"].split(":")[0]]]
    size = "x".join(map(str, tc["size"]))
    return {"title": f"Side by side in one process (tiny preset, {size}, batch "
                     f"{tc['batch_size']}, CPU): ratios",
            "source": f"{doc['command']} (commit {doc['machine']['git_commit'][:10]})",
            "columns": [{"name": "comparison"},
                        *[{"name": n, "format": ".2f"} for n in (
                            "trainable params", "task file", "Adam state", "FLOPs",
                            "train step time", "step peak memory", "time per image")]],
            "rows": rows}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="?",
                   default=Path("benchmarks/results/accounting_cpu.json"))
    p.add_argument("--summary-dir", type=Path, default=RESULTS / "summary")
    args = p.parse_args(argv)
    gpu_path = RESULTS / "gpu_check.json"
    gpu = json.loads(gpu_path.read_text()) if gpu_path.is_file() else None
    src = json.loads((ROOT / args.results).read_text())
    command = f"python scripts/costs_table.py {args.results.as_posix()}"
    for name, doc in (("costs_paper", table(src, gpu)), ("costs_ratios", ratio_table(src))):
        out = args.summary_dir / f"{name}.json"
        out.write_text(json.dumps({**doc, "generated_by": command}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
