"""The rate-accuracy training loop (section 3.1), top to bottom.

    L = R + lambda * sum_t w_t * (L_t(final) + L_t(preliminary))

R is the estimated bits per input pixel of the latent (y and z), w_t the task weights of
InvPT, the preliminary term present unless intermediate supervision is off. Each step trains
one task (round robin over the configured tasks): its adapter and head only.

The loop emits ``TrainEvent``s (step, eval, checkpoint, done); anything can subscribe, so a
CLI progress bar, a notebook plot and a test all watch the same run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from icm_core import distributed
from icm_core.checkpoint import (
    load_checkpoint,
    load_trainer_state,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from icm_core.config import ExperimentConfig
from icm_core.data import make_dataset
from icm_core.errors import ConfigError
from icm_core.evaluate import EvalResult, evaluate
from icm_core.io import write_text
from icm_core.models.icm import ICMModel, ICMOutput, build_model
from icm_core.tasks import get_task, resolve_tasks

log = logging.getLogger(__name__)


@dataclass
class TrainEvent:
    kind: str  # "step" | "eval" | "checkpoint" | "done"
    step: int
    task: str
    values: dict = field(default_factory=dict)


def task_loss(out: ICMOutput, target: torch.Tensor, dataset: str, inter_sup: bool) -> torch.Tensor:
    """w_t * (L_t(final) + L_t(preliminary)) for the output's task."""
    spec = get_task(out.task)
    loss = spec.loss(out.prediction.float(), target)
    if inter_sup:
        loss = loss + spec.loss(out.preliminary.float(), target)
    return spec.weight(dataset) * loss


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Trainer:
    """Args:
    cfg: the experiment.
    model: an existing model to train (default: built from ``cfg``).
    device: ``cuda`` when available, else ``cpu``.
    """

    def __init__(self, cfg: ExperimentConfig, model: ICMModel | None = None, device: str | None = None):
        self.cfg = cfg
        self.device, self.rank, self.world = distributed.setup(device or default_device())
        if cfg.train.batch_size % self.world:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch: it must be "
                              f"divisible by the {self.world} processes")
        self.tasks = list(resolve_tasks(cfg.tasks, cfg.data.name))
        # data first: a missing dataset fails before minutes of model building
        self.train_set = make_dataset(cfg.data, "train", self.tasks)
        self.val_set = make_dataset(cfg.data, "val", self.tasks)
        self.model = model if model is not None else build_model(cfg, self.device)
        distributed.convert_batchnorm(self.model, self.device)
        self._ddp: dict[str, torch.nn.Module] = {}
        self.out_dir = Path(cfg.out_dir)
        self.subscribers: list[Callable[[TrainEvent], None]] = []
        self.history: list[TrainEvent] = []
        self.step = 0
        self.optimizer = self._make_optimizer()
        t = cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1 - s / max(t.max_steps, 1)) ** t.poly_power)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        main, aux, seen = [], [], set()
        for task in self.tasks:  # union over tasks: each step only the active one has gradients
            self.model.set_task(task)
            for name, p in self.model.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    (aux if name.endswith("entropy_bottleneck.quantiles") else main).append(p)
        self.model.set_task(self.tasks[0])
        t = self.cfg.train
        groups = [{"params": main, "lr": t.lr, "weight_decay": t.weight_decay}]
        if aux:  # the factorized prior's quantiles: compressai's auxiliary loss, its usual lr
            groups.append({"params": aux, "lr": 1e-3, "weight_decay": 0.0})
        return torch.optim.Adam(groups)

    def subscribe(self, fn: Callable[[TrainEvent], None]) -> None:
        self.subscribers.append(fn)

    def _emit(self, event: TrainEvent) -> None:
        self.history.append(event)
        if event.kind in ("step", "eval") and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "history.jsonl", "a") as f:
                f.write(json.dumps({"kind": event.kind, "step": event.step, "task": event.task,
                                    **event.values}) + "\n")
        for fn in self.subscribers:
            fn(event)

    def batch(self, step: int) -> dict:
        """This process's share of the global batch of ``step``.

        A function of (seed, step) only, so a resumed run sees the same data, and process r of N
        takes samples r, r+N, ... of the same global batch a single process would see.
        """
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step)
        idx = torch.randint(len(self.train_set), (self.cfg.train.batch_size,), generator=g).tolist()
        idx = idx[self.rank::self.world]
        samples = [self.train_set[i] for i in idx]
        return {k: torch.stack([s[k] for s in samples]).to(self.device) for k in ("image", *self.tasks)}

    def train_step(self, step: int) -> dict:
        model, cfg = self.model, self.cfg
        task = self.tasks[step % len(self.tasks)]
        model.set_task(task)
        model.train()
        batch = self.batch(step)
        use_amp = self.device.startswith("cuda") and cfg.train.amp
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = self._forward_module(task)(batch["image"])
        distortion = task_loss(out, batch[task], model.dataset, cfg.model.inter_sup)
        rate = out.bpp.mean()
        loss = rate + cfg.lmbda * distortion
        aux = model.heads[task].entropy.entropy_bottleneck.loss() if model.compression else None
        loss_value = distributed.mean_over_processes(loss.item())  # every process decides alike
        if not math.isfinite(loss_value):  # stop before the step: the weights stay finite
            raise FloatingPointError(f"loss became {loss_value} at step {step} (task {task}); "
                                     "lower train.lr or lmbda")
        self.optimizer.zero_grad(set_to_none=True)
        (loss + aux if aux is not None else loss).backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss_value, "bpp": distributed.mean_over_processes(rate.item()),
                "task_loss": distributed.mean_over_processes(distortion.item()),
                "lr": self.scheduler.get_last_lr()[0], "task": task}

    def _forward_module(self, task: str) -> torch.nn.Module:
        """The model, wrapped in DistributedDataParallel under torchrun (one wrapper per task:
        each task trains its own parameters, which DDP registers when it wraps)."""
        if self.world == 1:
            return self.model
        if task not in self._ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
            # buffers are BN statistics, already global through cross-process BN: no re-broadcast
            self._ddp[task] = DistributedDataParallel(self.model, device_ids=ids, forward_sync_buffers=False)
        return self._ddp[task]

    def evaluate(self, max_images: int | None = None) -> list[EvalResult]:
        return [evaluate(self.model, self.val_set, t, max_images=max_images, device=self.device)
                for t in self.tasks]

    # -- checkpoints --------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {"step": torch.tensor(self.step), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng_cpu": torch.get_rng_state()}

    def save(self) -> Path | None:
        path = None
        if self.rank == 0:
            path = save_checkpoint(self.out_dir, self.model, self.step, self.trainer_state())
            self._emit(TrainEvent("checkpoint", self.step, self.model.task, {"path": str(path)}))
        distributed.barrier()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint in ``out_dir``; False when there is none."""
        try:
            ckpt = resolve_checkpoint_dir(self.out_dir)
        except Exception:
            return False
        load_checkpoint(ckpt, self.device, model=self.model)
        state = load_trainer_state(ckpt)
        if state is None:
            return False
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        self.step = int(state["step"])
        hist = self.out_dir / "history.jsonl"
        if hist.is_file():  # drop what the interrupted run logged after its last checkpoint
            kept = []
            for ln in hist.read_text().splitlines():
                try:
                    if json.loads(ln)["step"] <= self.step:
                        kept.append(ln)
                except (json.JSONDecodeError, KeyError):  # a line cut by the kill
                    continue
            write_text(hist, "".join(ln + "\n" for ln in kept))
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    # -- the loop -----------------------------------------------------------------------
    def fit(self, progress: bool = True) -> list[TrainEvent]:
        t = self.cfg.train
        if not (self.cfg.resume and self.resume()):
            if self.cfg.resume:
                log.warning("resume=true but %s holds no checkpoint: starting at step 0", self.out_dir)
            (self.out_dir / "history.jsonl").unlink(missing_ok=True)
            torch.manual_seed(t.seed)
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not progress or self.rank != 0, desc=self.cfg.name,
                   dynamic_ncols=True)
        while self.step < t.max_steps:
            values = self.train_step(self.step)
            self.step += 1
            self._emit(TrainEvent("step", self.step, values.pop("task"), values))
            bar.set_postfix(loss=f"{values['loss']:.3f}", bpp=f"{values['bpp']:.3f}")
            bar.update(1)
            if t.eval_every and self.step % t.eval_every == 0 and self.step < t.max_steps:
                self._eval_event()
            if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.max_steps:
                self.save()
        bar.close()
        results = self._eval_event(final=True)
        self.save()
        self._emit(TrainEvent("done", self.step, self.model.task, {"results": results}))
        return self.history

    def _eval_event(self, final: bool = False) -> list[EvalResult]:
        if self.rank != 0:  # evaluation runs on the first process only
            return []
        limit = None if final else 8
        results = self.evaluate(max_images=limit)
        for r in results:
            self._emit(TrainEvent("eval", self.step, r.task, {r.metric: r.value, "bpp": r.bpp,
                                                                "bpp_estimated": r.bpp_estimated}))
        return results
