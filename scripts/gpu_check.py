"""The CUDA path, proven in one short run (under 8 minutes on an H100): ``scripts/gpu_check.sh``.

Steps, each recorded in one JSON (``--out``/gpu_check.json) with its seconds and outcome:
  1. ``icm bench experiment=paper --device cuda --json`` (bf16 autocast, peak memory, step time,
     encode/decode time, energy via NVML) and the same for ``experiment=full_ft``;
  2. a few ``icm train experiment=paper`` steps at 448x576 (synthetic scenes, random weights);
  3. a 1-GPU ``torchrun``: NCCL process group, an all-reduce, the model's batch norms converted
     to ``SyncBatchNorm``, DistributedDataParallel, a forward and backward;
  4. an image encoded on the GPU and decoded on the CPU, against the same image encoded and
     decoded on the CPU: bytes and predictions compared.

``--device cpu --tiny`` is the dry run: the same steps on the CPU with the tiny preset (gloo
instead of NCCL; CPU batch norms are not converted: SyncBatchNorm is CUDA-only, and the CPU's
cross-process batch norm is tested by tests/test_ddp.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["backbone=tiny_random", "data.size=[64,64]", "data.workers=0", "train.batch_size=2",
        "model.decoder_dims=[32,16,16]", "model.latent_channels=16", "model.hyper_channels=16",
        "model.prelim_width=16"]
PAPER_TRAIN = ["data=synthetic", "data.size=[448,576]", "data.workers=2", "data.train_length=16",
               "data.val_length=1", "backbone.weights=none", "train.batch_size=2"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in (os.environ.get("PYTHONPATH"),) if p]), "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)


def _icm(*args: str) -> list[str]:
    return [sys.executable, "-m", "icm_core.cli", *args]


def step_bench(device: str, tiny: bool) -> dict:
    out = {}
    for name, ov in (("paper", ["experiment=paper"]), ("full_ft", ["experiment=full_ft"])):
        ov = [*ov, *TINY] if tiny else ov
        p = _run(_icm("bench", *ov, "--device", device, "--json", "--measure", "all"), 400)
        if p.returncode:
            raise RuntimeError(f"icm bench {name}: {p.stderr.strip()[-800:]}")
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def step_train(device: str, tiny: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="icm-gpu-check-") as d:
        ov = (["experiment=paper", *PAPER_TRAIN, *TINY] if tiny else ["experiment=paper", *PAPER_TRAIN])
        p = _run(_icm("train", *ov, f"train.max_steps={steps}", f"out_dir={d}"), 400)
        if p.returncode:
            raise RuntimeError(f"icm train: {p.stderr.strip()[-800:]}")
        hist = [json.loads(ln) for ln in (Path(d) / "history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in hist if h["kind"] == "step"]
    if len(losses) != steps or not all(v == v and abs(v) < float("inf") for v in losses):
        raise RuntimeError(f"icm train: expected {steps} finite losses, got {losses}")
    return {"steps": steps, "losses": losses}


def ddp_worker(device: str, tiny: bool, out: str) -> None:
    """Runs under torchrun (world size 1): NCCL/gloo, SyncBatchNorm, DDP, forward + backward."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from icm_core.config import load_config
    from icm_core.models.icm import build_model

    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = f"cuda:{local}" if device == "cuda" else "cpu"
        if device == "cuda":
            torch.cuda.set_device(local)
        t = torch.ones(1, device=dev) * (dist.get_rank() + 1)
        dist.all_reduce(t)
        ov = ["experiment=paper", "backbone.weights=none", "data=synthetic", *(TINY if tiny else [])]
        cfg = load_config(ov)
        model = build_model(cfg, dev)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        if device == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        ddp = DistributedDataParallel(model, device_ids=[local] if device == "cuda" else None,
                                      find_unused_parameters=True)
        h, w = cfg.data.size
        x = torch.rand(2, 3, h, w, device=dev)
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            o = ddp(x, task=model.tasks[0])
        loss = o.prediction.float().mean() + o.bpp.mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        result = {"backend": backend, "world_size": dist.get_world_size(),
                  "all_reduce": float(t.item()), "batchnorms": n_bn, "sync_batchnorms": n_sync,
                  "grads": len(grads), "grads_finite": finite, "loss": float(loss.item())}
    finally:
        dist.destroy_process_group()
    Path(out).write_text(json.dumps(result))


def step_torchrun(device: str, tiny: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="icm-gpu-check-") as d:
        res = Path(d) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=1",
               f"--master_port={port}", str(Path(__file__).resolve()), "--ddp-worker",
               "--device", device, "--result", str(res)] + (["--tiny"] if tiny else [])
        p = _run(cmd, 300)
        if p.returncode or not res.is_file():
            raise RuntimeError(f"torchrun: {p.stderr.strip()[-800:]}")
        r = json.loads(res.read_text())
    if not (r["grads_finite"] and r["grads"] and r["all_reduce"] == 1.0):
        raise RuntimeError(f"torchrun: {r}")
    if device == "cuda" and r["sync_batchnorms"] != r["batchnorms"]:
        raise RuntimeError(f"torchrun: {r['batchnorms']} batch norms, {r['sync_batchnorms']} converted")
    return r


def step_codec(device: str, tiny: bool) -> dict:
    """Encode on ``device``, decode on the CPU; against encode and decode on the CPU."""
    import torch

    from icm_core.codec import coder
    from icm_core.config import load_config
    from icm_core.models.icm import build_model

    cfg = load_config(["experiment=paper", "backbone.weights=none", *(TINY if tiny else [])])
    cpu = build_model(cfg, "cpu").eval()
    with torch.no_grad():  # an adapter that changes something (peft starts lora_B at zero)
        g = torch.Generator().manual_seed(0)
        for n, p in cpu.backbone.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    dev = copy.deepcopy(cpu).to(device)
    h, w = cfg.data.size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    task = cpu.tasks[0]
    t = time.perf_counter()
    data_dev = coder.encode(dev, image, task)
    enc_s = time.perf_counter() - t
    data_cpu = coder.encode(cpu, image, task)
    a = coder.decode(cpu, data_dev).prediction
    b = coder.decode(cpu, data_cpu).prediction
    return {"encode_device": device, "encode_seconds": enc_s, "bytes_device": len(data_dev),
            "bytes_cpu": len(data_cpu), "bytes_equal": bytes(data_dev) == bytes(data_cpu),
            "prediction_equal": bool(torch.equal(a, b)),
            "prediction_max_abs_difference": float((a - b).abs().max()),
            "note": "bits are always coded by the CPU float32 entropy model; the GPU computes y, "
                    "so streams are equal unless a GPU rounding moves a value across a "
                    "quantization boundary (then the predictions differ there)"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="the tiny preset (the CPU dry run)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    p.add_argument("--steps", type=int, default=3, help="icm train steps")
    p.add_argument("--only", default=None, help="comma list of steps to run (bench, train, "
                   "torchrun, codec); default all")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.device, args.tiny, args.result)
        return {}
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --device cpu --tiny for the dry run")
    steps = {"bench": lambda: step_bench(args.device, args.tiny),
             "train": lambda: step_train(args.device, args.tiny, args.steps),
             "torchrun": lambda: step_torchrun(args.device, args.tiny),
             "codec": lambda: step_codec(args.device, args.tiny)}
    only = [s.strip() for s in args.only.split(",")] if args.only else list(steps)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    report = {"device": args.device, "tiny": args.tiny, "git_commit": commit,
              "command": " ".join(["scripts/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]),
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
              "torch": torch.__version__, "steps": {}}
    t0 = time.perf_counter()
    for name in only:
        t = time.perf_counter()
        print(f"[{t - t0:5.0f} s] {name} ...", flush=True)
        try:
            report["steps"][name] = {"ok": True, "result": steps[name]()}
        except Exception as e:  # one failed step must not hide the others
            report["steps"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()[-2000:]}
        report["steps"][name]["seconds"] = round(time.perf_counter() - t, 1)
    report["ok"] = all(s["ok"] for s in report["steps"].values())
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_check.json" if args.device == "cuda" else "gpu_check_dryrun.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / name}: ok={report['ok']} in {report['seconds']} s", flush=True)
    return report


if __name__ == "__main__":
    sys.exit(0 if main().get("ok", True) else 1)
