"""The end of a pretraining run: the encoder exported as one safetensors file that
``Backbone`` loads, and a model card beside it (objective, data, optimization, machine)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save

from icm_core.config.schema import BackboneConfig
from icm_core.data.synthetic import SPLITS, SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.files import write_bytes, write_text
from icm_core.models.backbone import Backbone
from icm_core.training.checkpoint import resolve_checkpoint_dir
from icm_core.training.pretrain.config import config_dict, read_run_config
from icm_core.training.pretrain.data import check_disjoint

FORMAT = "icm-pretrained-backbone-1"
MAX_EXPORT_BYTES = 12 * 2**20  # what may ship inside the package


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine() -> dict:
    """Where a run happened, for the model card."""
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "timm": timm.__version__, "device": dev}


def _history(run: Path) -> list[dict]:
    f = run / "history.jsonl"
    out = []
    if f.is_file():
        for ln in f.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return out


def export_backbone(run_dir: str | Path, out_file: str | Path, dtype: str = "float16",
                    max_bytes: int = MAX_EXPORT_BYTES) -> dict:
    """The newest checkpoint's encoder -> one safetensors file + a model card beside it.

    The file holds the timm model's state_dict as ``Backbone`` loads it (no mask token, no
    decoder); it is loaded back into a fresh ``Backbone`` before the card is written, so a
    file that does not fit never ships. The card (``<name>.card.json``) records the
    objective, the data split and scene-seed range, the optimization, wall time, machine and
    the file's sha256. -> the card.
    """
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"dtype={dtype!r}; use float16, bfloat16 or float32")
    run, out_file = Path(run_dir), Path(out_file)
    ckpt = resolve_checkpoint_dir(run)
    cfg = read_run_config(ckpt)
    prefix = "encoder.model."
    with safe_open(str(ckpt / "model.safetensors"), "pt") as sf:
        step = int((sf.metadata() or {}).get("step", -1))
        state = {k[len(prefix):]: sf.get_tensor(k).to(getattr(torch, dtype)).contiguous()
                 for k in sf.keys() if k.startswith(prefix)}  # noqa: SIM118
    b = cfg.backbone
    meta = {"format": FORMAT, "backbone": b.name, "depth": str(b.depth), "patch_size": str(b.patch_size),
            "img_size": str(b.img_size), "objective": "mim-norm-pix", "step": str(step)}
    data = save(state, metadata=meta)
    if len(data) > max_bytes:
        raise ConfigError(f"{out_file}: {len(data) / 2**20:.1f} MB exceeds {max_bytes / 2**20:.0f} "
                          "MB; export with dtype=float16 or pretrain a shallower backbone.depth")
    with tempfile.TemporaryDirectory(prefix="icm-export-") as tmpdir:
        tmp = Path(tmpdir) / "check.safetensors"  # Backbone reads a file by its suffix
        tmp.write_bytes(data)
        # strict: a missing or unexpected key raises ConfigError before the file is in place
        Backbone(BackboneConfig(name=b.name, depth=b.depth, patch_size=b.patch_size,
                                img_size=b.img_size, weights=str(tmp)))
    write_bytes(out_file, data)
    sha = _sha256(out_file)
    hist = _history(run)
    last = [r["loss"] for r in hist[-50:]]
    trainer = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
    d = cfg.data
    scenes = SyntheticScenes(split=d.split, size=tuple(d.render_size), tasks=["semseg"],
                             seed=d.seed, length=d.length)
    first, last_seed = check_disjoint(scenes)
    card = {
        "format": FORMAT,
        "file": out_file.name, "sha256": sha, "bytes": out_file.stat().st_size, "dtype": dtype,
        "parameters": int(sum(v.numel() for v in state.values())),
        "backbone": {"name": b.name, "depth": b.depth, "patch_size": b.patch_size,
                     "img_size": b.img_size, "config": f"backbone.name={b.name} "
                     f"backbone.depth={b.depth} backbone.patch_size={b.patch_size}"},
        "objective": {
            "kind": "masked image modeling (SimMIM-style mask token; MAE norm_pix targets)",
            "mask_mode": cfg.mask_mode, "mask_ratio": cfg.mask_ratio, "loss": cfg.loss,
            "norm_pix": cfg.norm_pix, "decoder_layers": cfg.decoder_layers,
            "labels_used": "none"},
        "data": {"dataset": "synthetic scenes (icm_core.data.synthetic)", "split": d.split,
                 "dataset_seed": d.seed, "scenes": d.length,
                 "scene_seed_range": [first, last_seed],
                 "disjoint_from": [s for s in SPLITS if s != "pretrain"],
                 "disjointness": "by construction: scene seeds of split k lie in blocks "
                                 "b*2**31.. with b % 4 == k (synthetic.scene_seed); checked by "
                                 "pretrain.check_disjoint",
                 "render_size": list(d.render_size), "crop_size": list(d.size),
                 "augmentation": f"random resized crop (area {d.min_scale:g}-1, aspect 3/4-4/3)"
                                 + (" + horizontal flip" if d.flip else "")},
        "optimization": {"steps": step, "batch_size": cfg.batch_size, "optimizer": "AdamW (0.9, 0.95)",
                         "lr": cfg.lr, "warmup": cfg.warmup, "schedule": "linear warm-up + cosine to 0",
                         "weight_decay": cfg.weight_decay, "clip_grad": cfg.clip_grad, "seed": cfg.seed},
        "result": {"final_loss_mean_last_50": sum(last) / len(last) if last else None,
                   "first_loss": hist[0]["loss"] if hist else None},
        "wall_time_s": round(float(trainer.get("wall", 0.0)), 1),
        "machine": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "notice": "pretrained on synthetic scenes, not ImageNet: check conclusions with real "
                  "EVA-02 weights",
        "config": _card_config(cfg, run),
    }
    card = portable_paths(card)  # a weights file given as an absolute path, too
    write_text(card_path(out_file), json.dumps(card, indent=2) + "\n")
    return card


def _card_config(cfg, run: Path) -> dict:
    """The run's config for the card, with ``out_dir`` as the run folder's name: a card that
    ships holds no path of the machine that made it."""
    return {**config_dict(cfg), "out_dir": run.resolve().name}


def portable_paths(tree):
    """``tree`` (a card: dicts, lists, plain values) with every absolute path string reduced
    to its last component (``/home/me/runs/p`` -> ``p``), so a shipped card names no folder of
    the machine that made it; relative paths and other values are kept as they are."""
    if isinstance(tree, dict):
        return {k: portable_paths(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [portable_paths(v) for v in tree]
    if isinstance(tree, str) and (PurePosixPath(tree).is_absolute()
                                  or PureWindowsPath(tree).is_absolute()):
        return PureWindowsPath(tree).name if PureWindowsPath(tree).drive else PurePosixPath(tree).name
    return tree


def card_path(weights_file: str | Path) -> Path:
    """``x.safetensors`` -> ``x.card.json``."""
    p = Path(weights_file)
    return p.with_name(p.name.removesuffix(".safetensors") + ".card.json")


__all__ = ["FORMAT", "MAX_EXPORT_BYTES", "card_path", "export_backbone", "machine",
           "portable_paths"]
