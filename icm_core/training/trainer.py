"""The rate-accuracy training loop (section 3.1), top to bottom.

    L = R + lambda * w_t * (L_t(final) + L_t(preliminary))

R is the estimated bits per input pixel of the latent (y and z), w_t the task weight of InvPT,
the preliminary term present unless intermediate supervision is off. Each step trains one task
(round robin over the configured tasks): its adapter and head only. A variable-rate model
(``model.variable_rate``) trains one anchor per step, drawn uniformly (``rate_anchor``), at
that anchor's rate and with its lambda (``model.rate_lambdas[k]``) in place of ``lmbda``; its
evaluations report every anchor.

``Trainer.step()`` is one optimizer step and everything due after it (evaluation at real
bitstream rates, checkpoint); ``fit()`` is a loop over it that ``stop()`` (any thread) ends at
the next step boundary with a resumable checkpoint. Every step emits typed events to the
subscribers (history.jsonl writer, progress bars, notebook plots, tests); a subscriber that
raises is logged and dropped, it never stops the run.

Random numbers. A run never draws from the process-global RNG, which a notebook thread (or a
model it builds) may use meanwhile: its model is initialised from a generator seeded by
``train.seed``, its batches are a function of (seed, step), and the entropy model's rate noise
comes from the run's own generator (one per process, on its device), whose state each
checkpoint holds per process and resume restores, so a resumed run continues the same draws.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from icm_core.config.schema import ExperimentConfig, TrainConfig
from icm_core.data.registry import make_dataset
from icm_core.errors import ConfigError
from icm_core.evaluation.evaluate import EvalResult, evaluate
from icm_core.files import write_text
from icm_core.models import rate as vr
from icm_core.models.adapters import get_adapter_kind
from icm_core.models.icm import ICMModel, build_model
from icm_core.tasks.objective import task_loss
from icm_core.tasks.registry import resolve_tasks
from icm_core.training import distributed
from icm_core.training.checkpoint import (
    check_compatible,
    clean_orphans,
    has_checkpoint,
    load_config_file,
    load_trainer_state,
    rank_rng_state,
    read_tasks,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from icm_core.training.codec_init import load_codec
from icm_core.training.ema import ParamEMA

log = logging.getLogger(__name__)


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Event:
    kind: ClassVar[str]
    step: int

    @property
    def values(self) -> dict:
        """The event's plain values (what history.jsonl stores besides kind, step and task)."""
        return {k: v for k, v in asdict(self).items() if k not in ("step", "task")}

    def as_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class StepEvent(_Event):
    kind: ClassVar[str] = "step"
    task: str
    loss: float
    task_loss: float
    bpp: float  # estimated bits of y and z per input pixel
    bpp_y: float
    bpp_z: float
    lr: float
    wall_time: float  # seconds since this run (or its resume) started
    steps_per_s: float  # over the last 20 steps
    alphas: tuple[float, ...] = ()  # cross-scale fusion weight of each decoder stage that fuses
    lmbda: float | None = None  # the lambda this step trained at
    rate: float | None = None  # variable rate: the anchor's rate in [0, 1]; None: fixed rate


@dataclass(frozen=True)
class EvalEvent(_Event):
    kind: ClassVar[str] = "eval"
    task: str
    metric: str
    value: float
    bpp: float | None  # real bytes
    bpp_estimated: float | None
    images: int
    rate: float | None = None  # variable rate: the rate evaluated at (an anchor's)

    @property
    def values(self) -> dict:  # history.jsonl keeps the metric under its own name
        out = {self.metric: self.value, "bpp": self.bpp, "bpp_estimated": self.bpp_estimated,
               "images": self.images}
        return out if self.rate is None else {**out, "rate": self.rate}


@dataclass(frozen=True)
class CheckpointEvent(_Event):
    kind: ClassVar[str] = "checkpoint"
    path: str


@dataclass(frozen=True)
class DoneEvent(_Event):
    kind: ClassVar[str] = "done"
    stopped: bool  # True: ended by stop(); resume=true continues it
    results: tuple[dict, ...] = field(default=())  # final evaluation, plain values per task


TrainEvent = StepEvent | EvalEvent | CheckpointEvent | DoneEvent


class HistoryWriter:
    """Subscriber appending step and eval events to ``history.jsonl`` (one JSON object a line)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, event: TrainEvent) -> None:
        if event.kind not in ("step", "eval"):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"kind": event.kind, "step": event.step, "task": event.task, **event.values}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_trainable(model: ICMModel, tasks) -> list[torch.nn.Parameter]:
    """Decide once which parameters train: what ``tasks`` own, nothing else. Returns them."""
    chosen: dict[int, torch.nn.Parameter] = {}
    for t in tasks:
        chosen.update({id(p): p for p in model.task_parameters(t)})
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return list(chosen.values())


def build_optimizer(model: ICMModel, params, t: TrainConfig,
                    full_finetune: bool = False) -> torch.optim.Optimizer:
    """Adam over ``params``: heads at ``t.head_lr`` (default ``t.lr``), adapters (or a scratch
    backbone) at ``t.lr``, the pretrained backbone under full fine-tuning at ``t.backbone_lr``
    (default ``t.lr``), and the factorized prior's quantiles (compressai's auxiliary loss) at
    1e-3."""
    ids = {id(p) for p in params}
    names = {id(p): n for n, p in model.named_parameters() if id(p) in ids}
    aux = [p for p in params if names[id(p)].endswith("entropy_bottleneck.quantiles")]
    aux_ids = {id(p) for p in aux}
    heads = [p for p in params if names[id(p)].startswith("heads.") and id(p) not in aux_ids]
    backbone = [p for p in params if not names[id(p)].startswith("heads.")]
    head_lr = t.head_lr if t.head_lr is not None else t.lr
    backbone_lr = t.backbone_lr if full_finetune and t.backbone_lr is not None else t.lr
    groups = [{"params": backbone, "lr": backbone_lr, "weight_decay": t.weight_decay, "name": "backbone"},
              {"params": heads, "lr": head_lr, "weight_decay": t.weight_decay, "name": "heads"},
              {"params": aux, "lr": 1e-3, "weight_decay": 0.0, "name": "quantiles"}]
    return torch.optim.Adam([g for g in groups if g["params"]])


def lr_factor(step: int, t: TrainConfig) -> float:
    """The learning rate of step ``step`` (0-based) over the base rate: a linear warm-up to 1 over
    ``t.warmup_steps`` steps, times the polynomial decay to 0 at ``t.max_steps``."""
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    return warm * max(0.0, 1 - step / max(t.max_steps, 1)) ** t.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """Every group's learning rate times ``lr_factor`` (warm-up, then polynomial decay)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t))


class StepBatches(Sampler):
    """Index lists of every step from ``start``: the batch of step s is a function of
    (seed, s) only, so a resumed run sees the same data; process r of N takes samples
    r, r+N, ... of the global batch a single process would see. ``keyed``: yield (index, step)
    pairs, for datasets that augment (a new crop each time a sample is drawn)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world: int = 1, keyed: bool = False):
        self.n, self.batch_size, self.seed, self.keyed = n, batch_size, seed, keyed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def indices(self, step: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(self.n, (self.batch_size,), generator=g).tolist()[self.rank::self.world]

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield [(i, step) for i in self.indices(step)] if self.keyed else self.indices(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _collate(keys):
    def collate(samples):
        return {k: torch.stack([s[k] for s in samples]) for k in keys}
    return collate


def _worker_init(_):
    torch.set_num_threads(1)  # several processes on few cores: one thread each


def make_loader(dataset, cfg: ExperimentConfig, tasks, start: int, rank: int = 0,
                world: int = 1) -> DataLoader:
    """Batches of steps ``start`` .. ``max_steps`` - 1, rendered by ``data.workers`` processes."""
    t = cfg.train
    sampler = StepBatches(len(dataset), t.batch_size, t.seed, start, t.max_steps, rank, world,
                          keyed=getattr(dataset, "augments", False))
    w = cfg.data.workers
    # a generator of the run's seed: the workers' base seed is drawn from it, not from the
    # global RNG (which other threads use)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=w,
                      collate_fn=_collate(("image", *tasks)), worker_init_fn=_worker_init,
                      prefetch_factor=2 if w else None, generator=torch.Generator().manual_seed(t.seed))


_NOISE_STREAM = 0x1C0  # tells the rate-noise seeds apart from other seeds derived from train.seed


def noise_generator(seed: int, rank: int, device: str, step: int = 0) -> torch.Generator:
    """The generator of process ``rank``'s rate noise, on ``device``: an independent stream for
    each (seed, rank) (and ``step``, for a run resumed without its saved state)."""
    lo, hi = np.random.SeedSequence([seed % 2**64, rank, step, _NOISE_STREAM]).generate_state(2)
    return torch.Generator(device=device).manual_seed(int(hi) << 32 | int(lo))


# -- the trainer ----------------------------------------------------------------------------
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
        self.tasks = list(resolve_tasks(cfg.tasks, cfg.data.label_space))
        # data first: a missing dataset fails before minutes of model building
        self.train_set = make_dataset(cfg.data, "train", self.tasks)
        self.val_set = make_dataset(cfg.data, "val", self.tasks)
        self.model = model if model is not None else build_model(cfg, self.device)
        self.codec_init = self._load_codec_init()
        distributed.convert_batchnorm(self.model, self.device)
        self.out_dir = Path(cfg.out_dir)
        self.params = set_trainable(self.model, self.tasks)
        self.optimizer = build_optimizer(self.model, self.params, cfg.train,
                                         full_finetune=get_adapter_kind(cfg.adapter.mode).fine_tunes_pretrained)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.ema = ParamEMA(self.params, cfg.train.ema_decay) if cfg.train.ema_decay else None
        self._ddp = self._wrap_ddp()
        self.subscribers: list[Callable[[TrainEvent], None]] = []
        if self.rank == 0:
            self.subscribe(HistoryWriter(self.out_dir / "history.jsonl"))
        self.history: list[TrainEvent] = []
        self.final_results: list[EvalResult] = []
        self.global_step = 0
        self._stop = threading.Event()
        self._started = False
        self._batches = None
        self._t0 = time.perf_counter()
        self._times: deque[float] = deque(maxlen=21)
        self.generator = noise_generator(cfg.train.seed, self.rank, self.device)

    def _load_codec_init(self) -> dict[str, dict[str, list[str]]] | None:
        """``train.codec_init``: every task head starts from the pretrained codec's weights
        (``icm_core.training.codec_init``; before the optimizer and the moving average see
        them). A resumed run's checkpoint then replaces them. Per task: what was loaded."""
        path = self.cfg.train.codec_init
        if not path:
            return None
        report = {t: load_codec(self.model.heads[t], path) for t in self.tasks}
        for t, r in report.items():
            log.info("%s: %d head tensors from the pretrained codec %s, %d fresh (%s)", t,
                     len(r["loaded"]), path, len(r["fresh"]), ", ".join(r["fresh"]))
        return report

    # -- events -------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[TrainEvent], None]) -> None:
        self.subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[TrainEvent], None]) -> None:
        if fn in self.subscribers:
            self.subscribers.remove(fn)

    def _emit(self, event: TrainEvent) -> None:
        self.history.append(event)
        for fn in list(self.subscribers):
            try:
                fn(event)
            except Exception:  # a broken plot must not end a long run
                log.exception("subscriber %r raised on a %s event; it is dropped", fn, event.kind)
                self.unsubscribe(fn)

    # -- one step -----------------------------------------------------------------------
    def _wrap_ddp(self) -> dict[str, torch.nn.Module]:
        """Under torchrun, one DistributedDataParallel wrapper per task, each registering only
        that task's parameters (DDP expects a gradient for every parameter it registered)."""
        if self.world == 1:
            return {}

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        wrappers = {}
        for task in self.tasks:
            own = {id(p) for p in self.model.task_parameters(task)}
            for p in self.params:
                p.requires_grad_(id(p) in own)
            # buffers are BN statistics, already global through cross-process BN: no re-broadcast
            wrappers[task] = DistributedDataParallel(self.model, device_ids=ids,
                                                     forward_sync_buffers=False)
        for p in self.params:
            p.requires_grad_(True)
        return wrappers

    def _next_batch(self) -> dict:
        if self._batches is None:
            self._batches = iter(make_loader(self.train_set, self.cfg, self.tasks, self.global_step,
                                             self.rank, self.world))
        batch = next(self._batches)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def batch_of(self, step: int) -> dict:
        """The training batch of ``step`` (this process's share of it) on the device: what
        ``fit``'s loader yields for that step, rendered here in this process."""
        t = self.cfg.train
        idx = StepBatches(len(self.train_set), t.batch_size, t.seed, step, step + 1, self.rank,
                          self.world).indices(step)
        keyed = getattr(self.train_set, "augments", False)
        batch = _collate(("image", *self.tasks))([self.train_set[(i, step) if keyed else i]
                                                  for i in idx])
        return {k: v.to(self.device) for k, v in batch.items()}

    def rate_anchor(self, step: int) -> int | None:
        """The anchor ``step`` trains (variable rate), uniform over ``model.rate_lambdas``;
        None at a fixed rate. A function of (seed, step) only, like the step's batch: a
        resumed run trains the same anchors, and the global RNG (rate noise) is not drawn."""
        lambdas = self.model.rate_lambdas
        if not lambdas:
            return None
        g = torch.Generator().manual_seed(2**40 + self.cfg.train.seed * 1_000_003 + step)
        return int(torch.randint(len(lambdas), (1,), generator=g))

    def train_step(self, step: int, batch: dict | None = None) -> dict:
        """The optimizer step of ``step`` on ``batch`` (default: ``batch_of(step)``), the one
        ``step()`` and ``fit()`` take: the loss R + lambda * task loss of step's task, the
        entropy bottleneck's auxiliary loss, Adam, the scheduler. No events, no count (a
        benchmark can time it on a fixed batch): returns plain values."""
        model, cfg = self.model, self.cfg
        task = self.tasks[step % len(self.tasks)]
        if batch is None:
            batch = self.batch_of(step)
        use_amp = self.device.startswith("cuda") and cfg.train.amp
        anchor = self.rate_anchor(step)
        if anchor is None:
            rate, lmbda = None, cfg.lmbda
        else:
            lambdas = model.rate_lambdas
            rate, lmbda = vr.anchor_rate(anchor, len(lambdas)), lambdas[anchor]
        with model.lock:  # readers in other threads see the weights before or after the step
            model.train()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out = self._ddp.get(task, model)(batch["image"], task=task,
                                                 generator=self.generator, rate=rate)
            distortion = task_loss(out, batch[task], model.dataset, cfg.model.inter_sup)
            pixels = out.image_size[0] * out.image_size[1]
            bpp_y, bpp_z = out.bits_y.mean() / pixels, out.bits_z.mean() / pixels
            bits = bpp_y + bpp_z
            loss = bits + lmbda * distortion
            aux = model.heads[task].entropy.entropy_bottleneck.loss() if model.compression else None
            loss_value = distributed.mean_over_processes(loss.item())  # every process decides alike
            if not math.isfinite(loss_value):  # stop before the step: the weights stay finite
                raise FloatingPointError(f"loss became {loss_value} at step {step} (task {task}); "
                                         "lower train.lr or lmbda")
            self.optimizer.zero_grad(set_to_none=True)
            (loss + aux if aux is not None else loss).backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
            alphas = tuple(float(s.alpha.detach()) for s in model.heads[task].decoder.stages
                           if s.alpha is not None)
        mean = distributed.mean_over_processes
        return {"task": task, "loss": loss_value, "task_loss": mean(distortion.item()),
                "bpp": mean(bits.item()), "bpp_y": mean(bpp_y.item()), "bpp_z": mean(bpp_z.item()),
                "lr": self.scheduler.get_last_lr()[0], "alphas": alphas, "lmbda": lmbda,
                "rate": rate}

    def step(self) -> StepEvent:
        """One optimizer step, then the evaluation and checkpoint that fall due after it."""
        t = self.cfg.train
        if not self._started:
            self._start()
        if self.global_step >= t.max_steps:
            raise ConfigError(f"the run is complete ({self.global_step} of train.max_steps="
                              f"{t.max_steps}); raise train.max_steps to train further")
        values = self.train_step(self.global_step, self._next_batch())
        self.global_step += 1
        now = time.perf_counter()
        self._times.append(now)
        rate = (len(self._times) - 1) / (self._times[-1] - self._times[0]) if len(self._times) > 1 else 0.0
        event = StepEvent(self.global_step, wall_time=now - self._t0, steps_per_s=rate, **values)
        self._emit(event)
        last = self.global_step >= t.max_steps
        if t.eval_every and self.global_step % t.eval_every == 0 and not last:
            self._eval_event()
        if t.checkpoint_every and self.global_step % t.checkpoint_every == 0 and not last:
            self.save()
        return event

    def stop(self) -> None:
        """End ``fit`` at the next step boundary, with a checkpoint (safe from any thread)."""
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------
    def _start(self) -> None:
        if self.rank == 0:
            clean_orphans(self.out_dir)  # what a killed run's save left behind
        if not (self.cfg.resume and self.resume()):
            if self.cfg.resume:
                log.warning("resume=true but %s holds no checkpoint: starting at step 0", self.out_dir)
            if self.rank == 0:
                (self.out_dir / "history.jsonl").unlink(missing_ok=True)
            self.generator = noise_generator(self.cfg.train.seed, self.rank, self.device)
        self._started = True
        self._t0 = time.perf_counter()

    def fit(self, progress: bool = True) -> list[TrainEvent]:
        """Train to ``train.max_steps`` (or until ``stop()``), evaluate, checkpoint."""
        t = self.cfg.train
        if not self._started:
            self._start()
        self._stop.clear()
        bar = tqdm(total=t.max_steps, initial=self.global_step, disable=not progress or self.rank != 0,
                   desc=self.cfg.name, dynamic_ncols=True)
        try:
            while self.global_step < t.max_steps and not self._stop.is_set():
                ev = self.step()
                bar.set_postfix(loss=f"{ev.loss:.3f}", bpp=f"{ev.bpp:.3f}")
                bar.update(1)
        finally:
            bar.close()
        if self._stop.is_set() and self.global_step < t.max_steps:
            self.save()
            self._batches = None  # a later fit() starts a fresh loader at the current step
            self._emit(DoneEvent(self.global_step, stopped=True))
            return self.history
        self.final_results = self._eval_event(final=True)
        self.save()
        if self.ema is not None:  # the finished model is what its checkpoint holds: the average
            with self.model.lock:
                self.ema.keep_average()
        self._emit(DoneEvent(self.global_step, stopped=False,
                             results=tuple(r.summary() for r in self.final_results)))
        return self.history

    def evaluate(self, max_images: int | None = None) -> list[EvalResult]:
        """Every task on the validation split; a variable-rate model at each of its anchors
        (task by task, lowest rate first); with ``train.ema_decay``, the averaged weights."""
        lambdas = self.model.rate_lambdas
        rates = vr.anchor_rates(len(lambdas)) if lambdas else [None]
        with self.averaged():
            return [evaluate(self.model, self.val_set, t, max_images=max_images,
                             device=self.device, per_image=False, rate=r)
                    for t in self.tasks for r in rates]

    def _eval_event(self, final: bool = False) -> list[EvalResult]:
        if self.rank != 0:  # evaluation runs on the first process only
            return []
        results = self.evaluate(max_images=None if final else 8)
        for r in results:
            self._emit(EvalEvent(self.global_step, r.task, r.metric, r.value, r.bpp,
                                 r.bpp_estimated, r.images, r.rate))
        return results

    # -- checkpoints --------------------------------------------------------------------
    def trainer_state(self, rng: list[torch.Tensor] | None = None) -> dict:
        """What trainer.pt holds. ``rng``: every process's generator state in rank order
        (default: this process's only)."""
        rng = [self.generator.get_state()] if rng is None else rng
        state = {"step": torch.tensor(self.global_step), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": list(rng),
                 "rng_device": self.generator.device.type}
        if self.ema is not None:
            state["ema"] = self.ema.raw_state()
        return state

    @contextmanager
    def averaged(self):
        """The EMA weights in the model for the block (``train.ema_decay``; a no-op without)."""
        if self.ema is None:
            yield
            return
        with self.model.lock, self.ema.applied():
            yield

    def save(self) -> Path | None:
        """Checkpoint (written by the first process, with the generator state of every one)."""
        rng = distributed.gather(self.generator.get_state())  # every process takes part
        path = None
        if self.rank == 0:
            with self.model.lock:
                state = self.trainer_state(rng)  # the raw weights, before the average is put in
                with self.averaged():
                    path = save_checkpoint(self.out_dir, self.model, self.global_step, state)
            self._emit(CheckpointEvent(self.global_step, str(path)))
        distributed.barrier()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint in ``out_dir``; False only when it holds none.

        A broken or partial checkpoint raises ``ConfigError``: restarting at step 0 would
        delete the run's history. Config, every task file and trainer.pt are read and checked
        before anything is loaded, so a failure leaves the model as it was.
        """
        if not has_checkpoint(self.out_dir):
            return False
        ckpt = resolve_checkpoint_dir(self.out_dir)
        check_compatible(ckpt, load_config_file(ckpt), self.model)
        weights = read_tasks(ckpt, self.model)
        state = load_trainer_state(ckpt, self.optimizer)
        if state is None:
            raise ConfigError(f"{str(ckpt)!r} has no trainer.pt (optimizer, scheduler, RNG states), "
                              "so it cannot be resumed: train into a new out_dir, or set resume=false")
        rng = rank_rng_state(state, self.rank, self.world, self.generator, ckpt)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise ConfigError(f"{str(ckpt / 'trainer.pt')!r}: optimizer or scheduler state does not "
                              f"fit ({e})") from e
        if (self.ema is not None) != ("ema" in state):
            raise ConfigError(f"{str(ckpt / 'trainer.pt')!r} was saved "
                              f"{'without' if self.ema is not None else 'with'} an EMA of the "
                              "weights (train.ema_decay): resume with the run's own train.ema_decay")
        with self.model.lock:
            for task, tensors in weights.items():
                self.model.load_task_state_dict(task, tensors)
            if self.ema is not None:
                try:
                    self.ema.restore(state["ema"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ConfigError(f"{str(ckpt / 'trainer.pt')!r}: its EMA state does not fit "
                                      f"({e})") from e
        self.global_step = int(state["step"])
        if rng is not None:
            self.generator.set_state(rng)
        else:
            log.warning("%s holds no rate-noise state for process %d of %d on %s; the run goes on "
                        "with a fresh stream (it will not repeat an uninterrupted run's draws)",
                        ckpt, self.rank, self.world, self.generator.device.type)
            self.generator = noise_generator(self.cfg.train.seed, self.rank, self.device,
                                             self.global_step)
        self._batches = None
        hist = self.out_dir / "history.jsonl"
        if hist.is_file() and self.rank == 0:  # drop what the run logged after its checkpoint
            kept = []
            for ln in hist.read_text().splitlines():
                try:
                    if json.loads(ln)["step"] <= self.global_step:
                        kept.append(ln)
                except (json.JSONDecodeError, KeyError):  # a line cut by the kill
                    continue
            write_text(hist, "".join(ln + "\n" for ln in kept))
        self._started = True
        log.info("resumed from %s at step %d", ckpt, self.global_step)
        return True
