"""The pretraining loop: AdamW with warm-up and cosine decay on ``MIMModel``, batches prepared
ahead by worker processes, atomic ``ckpt-NNNNNN/`` checkpoints, exact resume, and the backbone
exported at the end (``export_backbone``)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.files import write_text
from icm_core.training.checkpoint import (
    clean_orphans,
    has_checkpoint,
    load_trainer_state,
    resolve_checkpoint_dir,
)
from icm_core.training.pretrain.config import (
    RESUME_FREE,
    PretrainConfig,
    config_dict,
    flat,
    read_run_config,
)
from icm_core.training.pretrain.data import check_disjoint, render_pool
from icm_core.training.pretrain.export import export_backbone
from icm_core.training.pretrain.masking import make_batch
from icm_core.training.pretrain.objective import MIMModel

log = logging.getLogger("icm.pretrain")


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = ``make_batch(pool, cfg, step)``: DataLoader workers prepare steps ahead."""

    def __init__(self, pool: torch.Tensor, cfg: PretrainConfig):
        self.pool, self.cfg = pool, cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int):
        return make_batch(self.pool, self.cfg, step)



def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Pretrainer:
    """Args:
    cfg: the run.
    progress: tqdm bars (rendering and steps).
    """

    def __init__(self, cfg: PretrainConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dev = cfg.device
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={dev!r} but CUDA is not available here; use device=auto")
        d = cfg.data
        self.scenes = SyntheticScenes(split=d.split, size=tuple(d.render_size), tasks=["semseg"],
                                      seed=d.seed, length=d.length)
        self.seed_range = check_disjoint(self.scenes)
        self.out_dir = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)  # the initial weights
        self.model = MIMModel(cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
        self.step = 0
        self.wall = 0.0  # seconds of training, summed over resumed sessions
        self.pool: torch.Tensor | None = None
        self._saved = -1  # step of the newest checkpoint on disk

    def _param_groups(self) -> list[dict]:
        """Weight decay on matrices only: not on norms, biases, tokens or position embeddings."""
        skip = {f"encoder.model.{n}" for n in self.model.encoder.vit.no_weight_decay()}
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name in skip or name == "mask_token" else decay).append(p)
        return [{"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # -- data --
    def load_pool(self) -> torch.Tensor:
        if self.pool is None:
            d = self.cfg.data
            cache = self.out_dir / (f"scenes-seed{d.seed}-n{d.length}-"
                                    f"{d.render_size[0]}x{d.render_size[1]}.npy")
            self.pool = render_pool(self.scenes, self.cfg.workers, cache, self.progress)
        return self.pool

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``make_batch`` of ``step`` on this run's device."""
        images, masks = make_batch(self.load_pool(), self.cfg, step)
        return images.to(self.device), masks.to(self.device)

    def batches(self, start: int, stop: int):
        """Batches of steps start..stop-1, prepared ahead by ``workers`` processes (identical
        to ``batch(step)``: each is a function of its step alone)."""
        if self.cfg.workers == 0:
            yield from (self.batch(s) for s in range(start, stop))
            return
        loader = torch.utils.data.DataLoader(
            _StepBatches(self.load_pool(), self.cfg), batch_size=None, sampler=range(start, stop),
            num_workers=self.cfg.workers, pin_memory=self.device.startswith("cuda"))
        for images, masks in loader:
            yield images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)

    # -- one step --
    def train_step(self, step: int) -> dict:
        return self.update(*self.batch(step))

    def update(self, images: torch.Tensor, masks: torch.Tensor) -> dict:
        """One optimizer step on (images, masks) -> {"loss" (before the step), "lr" (used)}."""
        self.model.train()
        use_amp = self.device.startswith("cuda") and self.cfg.amp
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = self.model(images, masks)
        loss = out.loss.item()
        if not math.isfinite(loss):  # stop before the update: the weights stay finite
            raise FloatingPointError(f"pretraining loss became {loss} at step {self.step}; lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss, "lr": lr}

    # -- checkpoints --
    def save(self) -> Path:
        """``ckpt-NNNNNN/`` written under a temporary name and renamed, then ``LATEST``."""
        name = f"ckpt-{self.step:06d}"
        final, tmp = self.out_dir / name, self.out_dir / f".{name}.partial"
        clean_orphans(self.out_dir)
        tmp.mkdir(parents=True)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.cfg)))
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        (tmp / "model.safetensors").write_bytes(save(state, metadata={"format": "icm-pretrain-ckpt-1",
                                                                      "step": str(self.step)}))
        trainer = {"step": torch.tensor(self.step), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                   "wall": torch.tensor(self.wall, dtype=torch.float64)}
        if torch.cuda.is_available():
            trainer["rng_cuda"] = torch.cuda.get_rng_state_all()
        torch.save(trainer, tmp / "trainer.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_text(self.out_dir / "LATEST", name)
        old = sorted((q for q in self.out_dir.glob("ckpt-*")
                      if q.is_dir() and q.name[5:].isdigit() and q.name != name),
                     key=lambda q: int(q.name[5:]))
        for q in old[:-1]:  # keep this one and the one before
            shutil.rmtree(q, ignore_errors=True)
        self._saved = self.step
        return final

    def resume(self) -> bool:
        """Continue from the newest checkpoint in ``out_dir``; False only when it holds none.

        The checkpoint's config must equal this run's in everything but ``RESUME_FREE``
        (output folder, workers, threads, device...): anything else would silently change
        the run it continues.
        """
        if not has_checkpoint(self.out_dir):
            return False
        ckpt = resolve_checkpoint_dir(self.out_dir)
        theirs = flat(config_dict(read_run_config(ckpt)))
        mine = flat(config_dict(self.cfg))
        diff = [k for k in mine if k not in RESUME_FREE and theirs.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"resume=true: {k}={mine[k]!r} but the checkpoint {str(ckpt)!r} was "
                              f"made with {k}={theirs.get(k)!r}; use its value or a new out_dir")
        try:
            state = load_file(str(ckpt / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{str(ckpt / 'model.safetensors')!r} is unreadable ({e}); use "
                              "another ckpt-* folder") from e
        trainer = load_trainer_state(ckpt, self.optimizer)
        if trainer is None:
            raise ConfigError(f"{str(ckpt)!r} has no trainer.pt: it cannot be resumed")
        try:
            self.model.load_state_dict(state)
            self.optimizer.load_state_dict(trainer["optimizer"])
            self.scheduler.load_state_dict(trainer["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"{str(ckpt)!r} does not fit this model ({e})") from e
        torch.set_rng_state(trainer["rng_cpu"])
        if trainer.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["rng_cuda"][: torch.cuda.device_count()])
        self.step = int(trainer["step"])
        self.wall = float(trainer.get("wall", 0.0))
        self._saved = self.step
        hist = self.out_dir / "history.jsonl"
        if hist.is_file():  # drop what an interrupted run logged after its last checkpoint
            kept = []
            for ln in hist.read_text().splitlines():
                try:
                    if json.loads(ln)["step"] <= self.step:
                        kept.append(ln + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):  # a line cut by the kill
                    continue
            write_text(hist, "".join(kept))
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    def fit(self, until: int | None = None) -> list[dict]:
        """Train to ``cfg.steps`` (or stop after step ``until``, checkpointed: a time slice of
        the run that ``resume=true`` continues); export the backbone at the end. -> history."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        clean_orphans(self.out_dir)
        hist = self.out_dir / "history.jsonl"
        if not (cfg.resume and self.resume()):
            if cfg.resume:
                log.warning("resume=true but %s holds no checkpoint: starting at step 0", self.out_dir)
            if has_checkpoint(self.out_dir):
                raise ConfigError(f"out_dir={cfg.out_dir!r} already holds a pretraining run; give "
                                  "resume=true to continue it, or a new out_dir")
            hist.unlink(missing_ok=True)
        self.load_pool()
        stop = cfg.steps if until is None else min(cfg.steps, until)
        history = []
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain", disable=not self.progress,
                   dynamic_ncols=True)
        start, wall0 = time.perf_counter(), self.wall
        with open(hist, "a") as f:
            for images, masks in self.batches(self.step, stop):
                values = self.update(images, masks)
                self.step += 1
                self.wall = wall0 + time.perf_counter() - start  # data waits and saves included
                rec = {"step": self.step, **values, "time": round(self.wall, 3)}
                history.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < stop:
                    self.save()
        bar.close()
        if self._saved != self.step:  # a finished run resumed again has nothing new to save
            self.save()
        if self.step >= cfg.steps:
            export_backbone(self.out_dir, self.out_dir / "backbone.safetensors")
        return history


__all__ = ["Pretrainer", "lr_factor"]
