"""What the benchmarks share: trainings cached by their overrides, and a timed log.

A run is cached in ``root/<sha1 of the overrides>[:10]`` and reused only while the config the
overrides resolve to today is the one it was trained with, and the code is the code it was
trained by: a preset that changed since (a new ``train.backbone_lr``, a new head learning rate)
or any edit of the package (``icm_core.files.source_hash``: its sources, configs and shipped
weights) retrains instead of silently scoring a stale model. Settings that do not act on the
run do not count (the output folder; ``backbone_lr`` outside full fine-tuning).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from icm_core.files import source_hash, write_text

# bench_ra_synthetic and bench_preprocessor share their cache (results/ra_runs): the quick
# preset with a few validation images (the trainer's own final evaluation is not used)
QUICK_SETTINGS = ("experiment=quick", "data.workers=0", "data.val_length=4")
# bench_rate_modes and the choosers (bench_choose_*) share theirs: the runs' own bookkeeping, not
# the key, so a run one of them trained is the cached run of the others
RATE_SETTINGS = ("data.workers=0", "data.val_length=4")
SOURCE_FILE = "source_hash.txt"  # in a run folder: the source_hash of the code that trained it
SECONDS_FILE = "train_seconds.txt"  # in a run folder: the wall seconds its training took


def timed_log() -> Callable[[str], None]:
    """A ``log(msg)`` that prefixes the seconds since it was made."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    return log


def start_choice(split: str, tasks: str) -> tuple[float, Callable[[str], None], list[str]]:
    """What a chooser (``bench_choose_*.py``) does first: warn when it is asked to choose on
    test scenes, one torch thread, a timed log. Returns (start time, log, canonical tasks)."""
    from icm_core.tasks.registry import get_task

    if split == "test":
        print("warning: choosing on test scenes defeats the purpose; report on them instead")
    torch.set_num_threads(1)
    return time.perf_counter(), timed_log(), [get_task(t).name for t in tasks.split(",")]


def run_dir(root: Path | str, overrides: Sequence[str]) -> Path:
    """The cache folder of the run ``overrides`` describe (the key earlier results used)."""
    return Path(root) / hashlib.sha1(json.dumps(list(overrides)).encode()).hexdigest()[:10]


def trained_seconds(run: Path | str) -> float | None:
    """The wall seconds the cached run's training took (None: not recorded)."""
    f = Path(run) / SECONDS_FILE
    return float(f.read_text()) if f.is_file() else None


def trained_by(run: Path | str) -> str | None:
    """The ``source_hash`` of the code that trained the cached run (None: not recorded)."""
    f = Path(run) / SOURCE_FILE
    return f.read_text().strip() if f.is_file() else None


def same_run(saved, cfg) -> bool:
    """Would ``cfg`` train what the cached run with config ``saved`` was trained with?"""
    from omegaconf import OmegaConf

    def effective(c) -> dict:
        tree = OmegaConf.to_container(OmegaConf.structured(c))
        tree.pop("out_dir", None)
        if tree["adapter"]["mode"] != "full":
            tree["train"].pop("backbone_lr", None)
        return tree

    return effective(saved) == effective(cfg)


def train_cached(overrides: Sequence[str], root: Path | str, *, settings: Sequence[str] = (),
                 retrain: bool = False, log: Callable[[str], None] | None = None):
    """Train ``load_config([*settings, *overrides])`` on the CPU, or load the cached run.

    ``overrides`` are the cache key; ``settings`` (loader workers, validation images) shape
    the run's own bookkeeping and are not. A cached run is loaded only if today's code
    (``source_hash``) trained it. Returns ``(model, seconds trained or None if cached, run
    folder)``.
    """
    from icm_core.config import load_config
    from icm_core.training.checkpoint import (
        has_checkpoint,
        load_checkpoint,
        load_config_file,
        resolve_checkpoint_dir,
    )
    from icm_core.training.trainer import Trainer

    run = run_dir(root, overrides)
    cfg = load_config([*settings, *overrides, f"out_dir={run}"])
    code = source_hash()
    what = " ".join(overrides)
    if not retrain and has_checkpoint(run):
        if not same_run(load_config_file(resolve_checkpoint_dir(run)), cfg):
            why = "another config"
        elif trained_by(run) != code:
            why = "other code" if trained_by(run) else "code of unknown version"
        else:
            if log:
                log(f"  cached {run.name}: {what}")
            return load_checkpoint(run)[0], None, run
        if log:
            log(f"  {run.name} was trained with {why}: retraining ({what})")
    (run / SOURCE_FILE).unlink(missing_ok=True)  # a training killed midway is never "cached"
    t = time.perf_counter()
    trainer = Trainer(cfg, device="cpu")
    trainer.fit(progress=False)
    seconds = time.perf_counter() - t
    write_text(run / "overrides.json", json.dumps(list(overrides)))
    write_text(run / SECONDS_FILE, f"{seconds:.1f}\n")
    write_text(run / SOURCE_FILE, code + "\n")
    if log:
        log(f"  trained {run.name} in {seconds:.0f} s: {what}")
    return trainer.model, seconds, run


def provenance() -> dict:
    """What a committed results file says about how it was made: the command, the git commit
    (with "+dirty" when the tree had changes), the package's source hash and the machine."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "commit": commit + ("+dirty" if dirty and commit else ""),
            "source_hash": source_hash(),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def results_doc(args, t0: float, held_out: str | None = None, **fields) -> dict:
    """The results JSON a benchmark commits: its provenance, its arguments, the held-out scenes
    (default: ``--images`` ``--split`` scenes of ``--seed`` at ``--size`` px), ``fields``, and
    the seconds since ``t0``."""
    held = held_out or f"{args.images} {args.split} scenes of seed {args.seed} at {args.size} px"
    return {"provenance": provenance(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "held_out": held, **fields, "seconds": round(time.perf_counter() - t0, 1)}


def write_results(doc: dict, path: Path, log: Callable[[str], None], detail: str = "") -> Path:
    """Write ``doc`` (``results_doc``) to ``path`` whole or not at all, and say so."""
    write_text(path, json.dumps(doc, indent=2) + "\n")
    log(f"wrote {path}{detail}")
    return path
