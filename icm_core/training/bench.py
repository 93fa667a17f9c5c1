"""Measured costs (``icm bench``): the trainer's own step, inference, real streams, joules.

``bench`` counts a configuration with ``icm_core.evaluation.accounting.account`` (meta device)
and then measures what needs running, on synthetic scenes of the requested size (no dataset
files are needed: the costs do not depend on the pixels):

- ``step``: the time of ``Trainer.train_step`` on one fixed batch (images/s = batch / time), the
  optimizer's state read after the step, the peak memory of the process during the step, and the
  joules of a step where a meter exists (``EnergyMeter``);
- ``inference``: one image's eval forward (``ICMModel.predict``) and its peak memory;
- ``codec``: ``coder.encode`` and ``coder.decode`` of one image, entropy coding included.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset (tensors only, not the
allocator's cache); on the CPU the peak resident set of a child process (``ru_maxrss``; Python,
torch and the model included) that runs the measurement with ``OMP_NUM_THREADS=1``, one child
for the training step and one for inference, so neither sees the other's peak.

A backbone heavier than ``HEAVY_PARAMS`` on the CPU (EVA-02-L: one step at 448x576 takes about
88 s and 6.4 GB) is measured only when asked (``measure=("step", ...)``); what was not measured
is listed with the reason in ``Accounting.not_measured``.

``compare`` measures several settings side by side in one process and gives ratios: adapter
kinds (DoRA, LoRA, Full FT, Fixed), the low-complexity decoder against Full Dec, adapters merged
into the backbone against unmerged, DoRA's weight norm cached against recomputed, fp32 against
bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from peft.tuners.lora import dora as peft_dora

from icm_core.codec import coder
from icm_core.config import load_config
from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError, ICMError
from icm_core.evaluation.accounting import (
    Accounting,
    EnergyMeter,
    account,
    counterpart_decoder,
    decoder_gflops,
    measured_optimizer_state_bytes,
)
from icm_core.models import adapters as ad
from icm_core.models.backbone import weights_available
from icm_core.models.icm import build_model
from icm_core.training.trainer import Trainer

MEASUREMENTS = ("step", "inference", "codec")
HEAVY_PARAMS = 100_000_000  # CPU: above this many backbone parameters, measure only when asked
CHILD_TIMEOUT_S = 1800
VARIANTS = {"dora": "DoRA", "lora": "LoRA", "full": "Full FT", "fixed": "Fixed"}


class BenchError(ICMError):
    """A measurement failed (its child process, most often)."""


def parse_size(text: str) -> tuple[int, int]:
    """'448x576' -> (448, 576); ``ConfigError`` naming the value otherwise."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: give HxW in pixels, e.g. 448x576") from None
    if h < 1 or w < 1:
        raise ConfigError(f"--size {text!r}: give a positive height and width, e.g. 448x576")
    return h, w


def parse_measure(text: str | None) -> tuple[str, ...] | None:
    """'step,codec' -> ('step', 'codec'); 'all' -> every measurement, 'none' -> none; None stays
    None (the default for the config)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names in (["all"], ["memory"]):  # memory comes with step and inference
        return MEASUREMENTS
    if names in ([], ["none"]):
        return ()
    bad = [n for n in names if n not in MEASUREMENTS and n != "memory"]
    if bad:
        raise ConfigError(f"--measure {text!r}: {bad} unknown; choose from {list(MEASUREMENTS)} "
                          "(comma separated), all or none")
    out = {n for n in names if n != "memory"}
    if "memory" in names:
        out |= {"step", "inference"}
    return tuple(m for m in MEASUREMENTS if m in out)


# -- configs for measuring -------------------------------------------------------------------
def _force(overrides, size) -> list[str]:
    """``overrides`` with the size, and random backbone weights where none are on this machine
    (timing and memory do not depend on the values; nothing is downloaded)."""
    out = list(overrides)
    if size is not None:
        out.append(f"data.size=[{size[0]},{size[1]}]")
    cfg = load_config(out)
    if not weights_available(cfg.backbone) and cfg.backbone.weights not in ("none", "", None):
        out.append("backbone.weights=none")
    return out


def _train_config(cfg: ExperimentConfig, out_dir: str) -> ExperimentConfig:
    """``cfg`` training on a few synthetic scenes of its size, no workers, no evaluation."""
    data = dataclasses.replace(cfg.data, name="synthetic", train_length=max(cfg.train.batch_size, 4),
                               val_length=1, workers=0, root="", columns=None)
    train = dataclasses.replace(cfg.train, max_steps=1000, eval_every=0, checkpoint_every=0)
    return dataclasses.replace(cfg, data=data, train=train, out_dir=out_dir, resume=False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _image(size, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, *size, generator=g).to(device)


def _timed(fn, device: str, repeats: int, meter: EnergyMeter | None = None):
    """Median seconds of ``fn`` over ``repeats`` calls (and mean joules where ``meter``)."""
    times, joules, out = [], [], None
    for _ in range(max(repeats, 1)):
        _sync(device)
        if meter is not None:
            meter.start()
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        if meter is not None:
            joules.append(meter.stop())
    energy = None if not joules or None in joules else statistics.mean(joules)
    return statistics.median(times), energy, out


# -- the measurements (run in this process) --------------------------------------------------
def measure_step(overrides, device: str, *, steps: int = 2, warmup: int = 1,
                 amp: bool | None = None) -> dict:
    """``Trainer.train_step`` on one fixed batch: median seconds of ``steps`` steps after
    ``warmup``, images/s, the optimizer's state, peak memory, joules per step."""
    cfg = load_config(list(overrides))
    if amp is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp))
    model = build_model(cfg, device)
    with tempfile.TemporaryDirectory(prefix="icm-bench-") as out:
        trainer = Trainer(_train_config(cfg, out), model=model, device=device)
        batch = trainer.batch_of(0)
        for i in range(warmup):
            trainer.train_step(i, batch)
        _reset_peak(device)
        meter = EnergyMeter(device)
        i = iter(range(warmup, warmup + max(steps, 1)))
        seconds, joules, _ = _timed(lambda: trainer.train_step(next(i), batch), device, steps, meter)
        peak = _peak(device)
    b = int(batch["image"].shape[0])
    return {"train_step_seconds": seconds, "images_per_second": b / seconds, "batch_size": b,
            "peak_memory_bytes": peak, "optimizer_state_bytes": measured_optimizer_state_bytes(
                trainer.optimizer), "energy_joules": joules, "energy_note": meter.note,
            "amp": bool(device.startswith("cuda") and cfg.train.amp)}


def measure_inference(overrides, device: str, *, repeats: int = 2, codec: bool = True,
                      inference: bool = True) -> dict:
    """One image of the config's size: eval forward time and peak memory; encode and decode
    times of a real stream (entropy coding included) and its bytes."""
    cfg = load_config(list(overrides))
    model = build_model(cfg, device).eval()
    task = model.tasks[0]
    image = _image(cfg.data.size, device)
    out = {}
    meter = EnergyMeter(device)
    if inference:
        model.predict(image, task)  # warm-up
        _reset_peak(device)
        out["inference_seconds"], out["energy_inference_joules"], _ = _timed(
            lambda: model.predict(image, task), device, repeats, meter)
        out["peak_memory_inference_bytes"] = _peak(device)
    if codec and model.compression:
        data = coder.encode(model, image, task)  # warm-up (builds the rANS tables)
        coder.decode(model, data)
        out["encode_seconds"], out["energy_encode_joules"], data = _timed(
            lambda: coder.encode(model, image, task), device, repeats, meter)
        out["decode_seconds"], out["energy_decode_joules"], _ = _timed(
            lambda: coder.decode(model, data), device, repeats, meter)
        out["stream_bytes"] = len(data)
    out["energy_note"] = meter.note
    return out


# -- child processes (CPU memory) ------------------------------------------------------------
def _child_main(spec: dict, threads: bool = True) -> dict:
    if threads:
        torch.set_num_threads(1)
    if spec["what"] == "step":
        return measure_step(spec["overrides"], spec["device"], steps=spec["steps"],
                            warmup=spec["warmup"], amp=spec.get("amp"))
    return measure_inference(spec["overrides"], spec["device"], repeats=spec["repeats"],
                             codec=spec["codec"], inference=spec["inference"])


def run_child(spec: dict, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """Run one measurement in a fresh ``python -m icm_core.training.bench`` process with
    ``OMP_NUM_THREADS=1``; its JSON result (the last line it prints)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([p for p in (os.environ.get("PYTHONPATH"),) if p]
                                         + [os.path.dirname(os.path.dirname(os.path.dirname(
                                             os.path.abspath(__file__))))])}
    try:
        proc = subprocess.run([sys.executable, "-m", "icm_core.training.bench", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"measuring {spec['what']} of {spec['overrides']} took over {timeout:.0f} s; "
                         "measure less (--measure) or a smaller --size") from e
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError(f"measuring {spec['what']} of {spec['overrides']} failed (exit "
                         f"{proc.returncode}): {' | '.join(tail)}")
    return json.loads(lines[-1])


def _measure(what: str, overrides, device: str, **kw) -> dict:
    spec = {"what": what, "overrides": list(overrides), "device": device, **kw}
    # CUDA: in this process (max_memory_allocated); CPU: a child of its own (peak RSS)
    return _child_main(spec, threads=False) if device.startswith("cuda") else run_child(spec)


def _check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"--device {device!r}: choose cpu or cuda")
    return device


def memory_method(device: str) -> str:
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated after a reset (tensors, not the allocator's cache)"
    return ("peak resident set (ru_maxrss) of a child process, OMP_NUM_THREADS=1: Python, torch "
            "and the model included")


def bench(overrides=(), *, device: str = "cpu", size=None, k: int | None = None,
          measure=None, steps: int | None = None, warmup: int | None = None,
          repeats: int = 2) -> Accounting:
    """Count ``overrides``' config (``account``) and measure what ``measure`` names (default:
    every measurement, none for a backbone over ``HEAVY_PARAMS`` on the CPU). ``size`` (H, W)
    replaces ``data.size``; ``steps``/``warmup`` default to 2/1 (1/0 for a heavy backbone)."""
    device = _check_device(device)
    overrides = list(overrides)
    cfg = load_config(overrides)
    size = tuple(size) if size is not None else tuple(cfg.data.size)
    acc = account(cfg, size=size, k=k, device=device)
    heavy = acc.backbone_params > HEAVY_PARAMS and device == "cpu"
    if measure is None:
        measure = () if heavy else MEASUREMENTS
        why = (f"not asked: the {acc.backbone_params / 1e6:.0f} M-parameter backbone takes minutes "
               "and gigabytes per step on the CPU (EVA-02-L at 448x576: about 88 s and 6.4 GB); "
               "ask with --measure step,inference,codec")
    else:
        why = "not asked (--measure)"
    steps = steps if steps is not None else (1 if heavy else 2)
    warmup = warmup if warmup is not None else (0 if heavy else 1)
    run = _force(overrides, size)
    acc.memory_method = memory_method(device)
    notes = []
    if "step" in measure:
        r = _measure("step", run, device, steps=steps, warmup=warmup)
        acc.train_step_seconds, acc.images_per_second = r["train_step_seconds"], r["images_per_second"]
        acc.batch_size, acc.peak_memory_bytes = r["batch_size"], r["peak_memory_bytes"]
        acc.optimizer_state_bytes = r["optimizer_state_bytes"]
        acc.optimizer_state_source = "measured: the trainer's Adam state after one step"
        acc.energy["train_step"] = r["energy_joules"]
        acc.energy_joules = r["energy_joules"]
        notes.append(r["energy_note"])
        acc.measured += ["train_step_seconds", "images_per_second", "peak_memory_bytes",
                         "optimizer_state_bytes"]
    else:
        for f in ("train_step_seconds", "images_per_second", "peak_memory_bytes"):
            acc.not_measured[f] = why
    want_inf, want_codec = "inference" in measure, "codec" in measure
    if want_inf or want_codec:
        r = _measure("inference", run, device, repeats=repeats, codec=want_codec,
                     inference=want_inf)
        for f in ("inference_seconds", "peak_memory_inference_bytes", "encode_seconds",
                  "decode_seconds", "stream_bytes"):
            if f in r:
                setattr(acc, f, r[f])
                acc.measured.append(f)
        for what in ("inference", "encode", "decode"):
            if f"energy_{what}_joules" in r:
                acc.energy[what] = r[f"energy_{what}_joules"]
        notes.append(r["energy_note"])
        if want_codec and "encode_seconds" not in r:
            acc.not_measured["encode_seconds"] = acc.not_measured["decode_seconds"] = \
                "no compression stage (model.compression=false): nothing to encode"
    if not want_inf:
        acc.not_measured["inference_seconds"] = acc.not_measured["peak_memory_inference_bytes"] = why
    if not want_codec:
        acc.not_measured["encode_seconds"] = acc.not_measured["decode_seconds"] = why
    if acc.energy_joules is None:
        acc.energy_scope = "one training step"
        if acc.energy:
            scope = next((w for w in ("inference", "encode") if acc.energy.get(w) is not None), None)
            if scope:
                acc.energy_joules, acc.energy_scope = acc.energy[scope], f"one image, {scope}"
    meter_note = next((n for n in notes if n), EnergyMeter(device).note)
    acc.energy_note = (meter_note if acc.energy_joules is not None or meter_note.startswith("not ")
                       else f"not measurable here (nothing was run: {why})")
    if acc.energy_joules is None and not meter_note.startswith("not ") and not notes:
        acc.not_measured["energy_joules"] = why
    return acc


# -- side by side ----------------------------------------------------------------------------
def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


@contextlib.contextmanager
def dora_cache(model, enabled: bool = True):
    """peft's DoRA caching (``peft.tuners.lora.dora.ENABLE_DORA_CACHING``): in eval mode each
    DoRA layer of ``model`` keeps its weight norm and low-rank weight instead of recomputing
    them per call; the caches are emptied on exit (weights may change after)."""
    layers = [m for m in model.modules() if isinstance(m, peft_dora.DoraLinearLayer)]
    saved = peft_dora.ENABLE_DORA_CACHING
    peft_dora.ENABLE_DORA_CACHING = enabled
    try:
        yield
    finally:
        peft_dora.ENABLE_DORA_CACHING = saved
        for m in layers:
            m._cache_clear()


def trained_like(model, std: float = 0.02) -> None:
    """Give every low-rank ``lora_B`` random values (peft starts them at zero, so an untrained
    adapter changes nothing and merging it would be trivially exact)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _feature_difference(a, b, image, task: str) -> float:
    """Largest difference between two models' latents y before quantization (the predictions
    of a fresh model hide it: its small latent quantizes to the same values)."""
    with a.reading(task), b.reading(task):
        ya, yb = a.analysis(image, task)[1], b.analysis(image, task)[1]
    return float((ya - yb).abs().max())


def merged_copy(model, task: str | None = None):
    """A copy of ``model`` whose backbone has ``task``'s adapter merged into its weights (peft
    ``merge_and_unload``): the same function, no adapter at inference. ``model`` is unchanged."""
    task = model.task_arg(task)
    kind = ad.kind_of(model.backbone)
    out = copy.deepcopy(model)
    if not kind.low_rank:
        return out
    bb = out.backbone
    bb.model = bb.model.merge_and_unload(adapter_names=[task])
    bb._tuner_layers = []  # no tuner layer left to route
    bb.tasks = list(out.tasks)
    return out


def compare(overrides=(), *, device: str = "cpu", size=None,
            variants=("dora", "lora", "full", "fixed"), steps: int = 2, warmup: int = 1,
            repeats: int = 3, measure_memory: bool | None = None) -> dict:
    """Settings side by side in this one process (same backbone, batch and size), as values and
    ratios: adapter kinds against the first of ``variants``; the low-complexity decoder against
    Full Dec; merged against unmerged adapters; DoRA's cached against recomputed weight norm;
    bf16 autocast against fp32 where the device has it. Peak memory per adapter kind comes from
    one child process each on the CPU (``measure_memory``, default on CUDA or small backbones)."""
    device = _check_device(device)
    overrides = list(overrides)
    base = load_config(overrides)
    size = tuple(size) if size is not None else tuple(base.data.size)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    out = {"device": device, "size": list(size), "overrides": overrides,
           "batch_size": base.train.batch_size, "adapters": {}, "ratios": {}}
    # -- adapter kinds
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"--compare {','.join(variants)}: {bad} unknown; choose from {list(VARIANTS)}")
    for v in variants:
        ov = _force([*overrides, f"adapter.mode={v}"], size)
        acc = account(ov, size=size)
        heavy = acc.backbone_params > HEAVY_PARAMS and device == "cpu"
        row = {"label": VARIANTS[v], "trainable_params": acc.trainable_params,
               "trainable_backbone_params": acc.trainable_backbone_params,
               "trainable_percent": acc.trainable_percent, "adapter_bytes": acc.adapter_bytes,
               "storage_bytes_k_tasks": acc.storage["storage_bytes"], "k": acc.k,
               "optimizer_state_bytes": acc.optimizer_state_bytes, "flops": acc.flops["total"]}
        if heavy:
            row["not_measured"] = "train step: the backbone is too heavy for the CPU here"
        else:
            r = measure_step(ov, device, steps=steps, warmup=warmup)
            row.update(train_step_seconds=r["train_step_seconds"], images_per_second=r["images_per_second"],
                       optimizer_state_bytes=r["optimizer_state_bytes"])
            mem = measure_memory if measure_memory is not None else True
            if mem:
                row["peak_memory_bytes"] = (r["peak_memory_bytes"] if device.startswith("cuda") else
                                            run_child({"what": "step", "overrides": ov, "device": device,
                                                       "steps": 1, "warmup": 0})["peak_memory_bytes"])
        out["adapters"][v] = row
    ref = out["adapters"][variants[0]]
    for v, row in out["adapters"].items():
        out["ratios"][f"{v}_over_{variants[0]}"] = {
            key: _ratio(row.get(key), ref.get(key)) for key in
            ("trainable_params", "adapter_bytes", "storage_bytes_k_tasks", "optimizer_state_bytes",
             "train_step_seconds", "peak_memory_bytes", "flops")}
    run = _force(overrides, size)
    cfg = load_config(run)
    heavy = account(cfg, size=size).backbone_params > HEAVY_PARAMS and device == "cpu"
    # -- decoders
    other = counterpart_decoder(cfg)
    full_cfg, low_cfg = (cfg, other) if cfg.model.decoder == "full" else (other, cfg)
    dec = {"low_gflops": decoder_gflops(low_cfg, size), "full_gflops": decoder_gflops(full_cfg, size)}
    dec["full_over_low_flops"] = dec["full_gflops"] / dec["low_gflops"]
    if not heavy:
        times = {}
        for name, c in (("low", low_cfg), ("full", full_cfg)):
            m = build_model(c, device).eval()
            t = m.tasks[0]
            h, w = m.padded_size(*size)
            y = torch.randn(1, c.model.latent_channels, h // m.backbone.stride, w // m.backbone.stride,
                            generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                m.heads[t].synthesis(y, (h, w))
                times[name], _, _ = _timed(functools.partial(m.heads[t].synthesis, y, (h, w)), device,
                                           repeats)
        dec.update(low_decode_seconds=times["low"], full_decode_seconds=times["full"],
                   full_over_low_seconds=times["full"] / times["low"])
    out["decoder"] = dec
    # -- merged, DoRA cache, precision: inference of one image
    if heavy:
        out["inference"] = {"not_measured": "the backbone is too heavy for the CPU here"}
        return out
    model = build_model(cfg, device).eval()
    task = model.tasks[0]
    image = _image(size, device)
    kind = ad.kind_of(model.backbone)
    trained_like(model)

    def infer(m):
        return lambda: m.predict(image, task).prediction

    model.predict(image, task)
    unmerged, _, p0 = _timed(infer(model), device, repeats)
    inf = {"unmerged_seconds": unmerged}
    if kind.low_rank:
        merged_model = merged_copy(model, task)
        merged_model.predict(image, task)
        merged, _, _ = _timed(infer(merged_model), device, repeats)
        inf.update(merged_seconds=merged, merged_over_unmerged=merged / unmerged,
                   merged_latent_max_abs_difference=_feature_difference(model, merged_model, image, task))
    else:
        inf["merged"] = f"nothing to merge: adapter.mode={cfg.adapter.mode}"
    if kind.low_rank and getattr(kind, "use_dora", False):
        with dora_cache(model):
            model.predict(image, task)  # fills the cache
            cached, _, p2 = _timed(infer(model), device, repeats)
        recomputed, _, _ = _timed(infer(model), device, repeats)
        inf.update(dora_norm_cached_seconds=cached, dora_norm_recomputed_seconds=recomputed,
                   cached_over_recomputed=cached / recomputed,
                   dora_cache="peft.tuners.lora.dora.ENABLE_DORA_CACHING (eval mode)",
                   cached_prediction_max_abs_difference=float((p2 - p0).abs().max()))
    else:
        inf["dora_cache"] = f"not DoRA: adapter.mode={cfg.adapter.mode}"
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model.predict(image, task).prediction
        bf16()
        b, _, _ = _timed(bf16, device, repeats)
        inf.update(bf16_seconds=b, fp32_seconds=unmerged, bf16_over_fp32=b / unmerged)
        s32 = measure_step(run, device, steps=steps, warmup=warmup, amp=False)["train_step_seconds"]
        s16 = measure_step(run, device, steps=steps, warmup=warmup, amp=True)["train_step_seconds"]
        inf.update(train_step_fp32_seconds=s32, train_step_bf16_seconds=s16,
                   train_step_bf16_over_fp32=s16 / s32)
    else:
        inf["precision"] = ("not measured: bf16 autocast is the trainer's CUDA path (train.amp); "
                            "this device runs float32")
    out["inference"] = inf
    return out


if __name__ == "__main__":  # a child of run_child: one measurement, its JSON on the last line
    print(json.dumps(_child_main(json.loads(sys.argv[1]))))
