"""A workspace folder of runs: list them with their settings and state, delete, export.

The workbench's Runs panel and ablation charts read runs from here, whatever started them:
the background queue, ``icm train out_dir=...`` or a Hydra sweep (``-m``: one folder per job,
nested). Everything is read from the files a run writes (README, "Files a run writes"), so a
run started on the command line looks the same as one started in the notebook. Folders that
are not runs are walked through; a half-written or foreign run is reported as skipped with its
reason, never raised, since one bad folder must not hide the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError, ICMError
from icm_core.evaluation.results import run_settings
from icm_core.tasks.registry import get_task
from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir
from icm_core.workspace.queue import STATE_FILE

STATUSES = ("running", "queued", "stopped", "done", "failed", "empty")
RECENT_S = 300.0  # a run that wrote nothing for this long is not training any more
_CKPT = re.compile(r"ckpt-(\d+)")
_RUN_MARKERS = ("LATEST", "history.jsonl", STATE_FILE)


@dataclass(frozen=True)
class TaskResult:
    """The final real-bytes evaluation of one task (``icm train``'s last eval in history.jsonl)."""

    task: str
    metric: str
    value: float
    bpp: float | None  # real bytes; None without compression
    step: int


@dataclass(frozen=True)
class RunInfo:
    """What the Runs table shows for one run folder."""

    name: str  # path relative to the workspace, '/'-separated (sweeps: 'sweep/0')
    path: Path
    status: str  # one of STATUSES
    steps_done: int  # newest step in history.jsonl or the checkpoint, whichever is later
    checkpoint_step: int | None  # what resume=true continues from (None: no checkpoint)
    max_steps: int | None
    settings: dict = field(default_factory=dict)
    results: tuple[TaskResult, ...] = ()
    note: str = ""  # why the status is what it is, when it is not obvious
    config: ExperimentConfig | None = field(default=None, repr=False, compare=False)

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint_step is not None


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def _is_run(d: Path) -> bool:
    return (any((d / m).exists() for m in _RUN_MARKERS) or (d / ".hydra" / "config.yaml").is_file()
            or any(_CKPT.fullmatch(p.name) for p in d.iterdir() if p.is_dir()))


def _history(path: Path) -> tuple[int, list[dict], float | None]:
    """(newest step, eval lines, mtime) of history.jsonl; a torn last line is ignored."""
    f = path / "history.jsonl"
    if not f.is_file():
        return 0, [], None
    last, evals = 0, []
    with open(f, errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                continue  # a line being written, or a foreign one
            last = max(last, step)
            if row.get("kind") == "eval":
                evals.append(row)
    return last, evals, f.stat().st_mtime


def _final_results(evals: list[dict], max_steps: int | None) -> tuple[TaskResult, ...]:
    """The last evaluation of each task at the final step (intermediate ones use 8 images)."""

    out: dict[str, TaskResult] = {}
    for row in evals:
        try:
            task, step = str(row["task"]), int(row["step"])
            metric = get_task(task).metric
            value = float(row[metric])
        except (KeyError, ValueError, TypeError, ICMError):
            continue
        if max_steps is not None and step >= max_steps:
            bpp = row.get("bpp")
            out[task] = TaskResult(task, metric, value, float(bpp) if bpp is not None else None, step)
    return tuple(out.values())


def _queue_state(path: Path) -> tuple[dict, float | None]:
    """The background queue's record of the run ({"status", "error", ...}) and its mtime."""
    f = path / STATE_FILE
    try:
        doc = json.loads(f.read_text()) if f.is_file() else {}
        return (doc if isinstance(doc, dict) else {}), f.stat().st_mtime if doc else None
    except (OSError, ValueError):
        return {}, None


def read_run(path: str | Path, workspace: str | Path | None = None,
             now: float | None = None) -> RunInfo:
    """One run folder -> RunInfo; ``ConfigError`` when it is a run this code cannot read."""
    path = Path(path)
    name = path.name if workspace is None else Path(os.path.relpath(path, workspace)).as_posix()
    cfg, ckpt_step = None, None
    ckpts = [p for p in path.iterdir() if p.is_dir() and _CKPT.fullmatch(p.name)]
    if (path / "LATEST").exists() or ckpts or (path / "config.yaml").is_file():
        ckpt = resolve_checkpoint_dir(path)
        cfg = load_config_file(ckpt)
        m = _CKPT.fullmatch(ckpt.name)
        ckpt_step = int(m.group(1)) if m else None
    elif (path / ".hydra" / "config.yaml").is_file():  # a Hydra job that has not saved yet
        cfg = load_config_file(path / ".hydra")
    last, evals, mtime = _history(path)
    max_steps = cfg.train.max_steps if cfg is not None else None
    steps = max(last, ckpt_step or 0)
    state, state_mtime = _queue_state(path)
    now = now or time.time()
    recent = mtime is not None and now - mtime < RECENT_S
    # the queue says running, and the run still writes: a queue whose kernel died says
    # "running" for ever, so its word counts only while files keep changing
    alive = state.get("status") == "running" and (
        recent or (state_mtime is not None and now - state_mtime < RECENT_S))
    note = ""
    if state.get("status") == "failed":
        status, note = "failed", str(state.get("error") or "the queue reported a failure")
    elif alive or (recent and last > (ckpt_step or 0)):
        status = "running"
    elif state.get("status") == "queued" and not last:
        status = "queued"
    elif state.get("status") == "stopped" and ckpt_step is None and not last:
        status, note = "stopped", "taken off the queue before it trained"
    elif ckpt_step is not None and max_steps is not None and ckpt_step >= max_steps:
        status = "done"
    elif ckpt_step is not None:
        status = "stopped"
        if last > ckpt_step:
            note = f"ended at step {last} without saving; resume=true continues from {ckpt_step}"
    elif last:
        status, note = "failed", f"ended at step {last} before its first checkpoint"
    else:
        status = "empty"
    return RunInfo(name, path, status, steps, ckpt_step, max_steps,
                   run_settings(cfg) if cfg is not None else {}, _final_results(evals, max_steps),
                   note, cfg)


def list_runs(workspace: str | Path) -> tuple[list[RunInfo], list[Skipped]]:
    """Every run under ``workspace`` (nested sweep folders included), sorted by name.

    Runs are not searched inside other runs (a run's ckpt-* and .hydra folders are its own);
    unreadable runs come back in the second list with the reason.
    """
    root = Path(workspace)
    if not root.is_dir():
        return [], []
    runs, skipped, now = [], [], time.time()
    for d, subdirs, _ in os.walk(root, followlinks=False):
        d = Path(d)
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        try:
            is_run = d != root and _is_run(d)
        except OSError as e:
            skipped.append(Skipped(d, f"unreadable folder ({e.strerror})"))
            subdirs[:] = []
            continue
        if not is_run:
            continue
        subdirs[:] = []
        try:
            runs.append(read_run(d, root, now))
        except (ICMError, OSError, ValueError) as e:
            skipped.append(Skipped(d, str(e).splitlines()[0] if str(e) else type(e).__name__))
    return sorted(runs, key=lambda r: r.name), skipped


def _inside(workspace: str | Path, path: str | Path) -> Path:
    """``path`` resolved, refused unless it lies strictly inside ``workspace``."""
    root = Path(workspace).resolve()
    target = Path(path)
    target = (target if target.is_absolute() else root / target).resolve()
    if target == root or root not in target.parents:
        raise ConfigError(f"{str(path)!r} is not inside the workspace {str(root)!r}; only runs of "
                          "the workspace can be deleted or exported")
    if not target.is_dir() or not _is_run(target):
        raise ConfigError(f"{str(target)!r} is not a run folder (no LATEST, checkpoint or "
                          "history.jsonl); nothing was changed")
    return target


def delete_run(workspace: str | Path, path: str | Path) -> Path:
    """Remove one run folder of the workspace; refuses anything outside it, or a running run."""
    target = _inside(workspace, path)
    info = read_run(target, workspace)
    if info.status == "running":
        raise ConfigError(f"{info.name!r} is running; stop it before deleting it")
    shutil.rmtree(target)
    return target


def export_run(workspace: str | Path, path: str | Path, dest: str | Path, fmt: str = "zip") -> Path:
    """Copy a run out of the workspace as ``dest``.zip or a ``dest`` folder, never half-written.

    The copy is made under a temporary name beside ``dest`` and renamed into place.
    """
    target = _inside(workspace, path)
    dest = Path(dest)
    if fmt not in ("zip", "folder"):
        raise ConfigError(f"export format {fmt!r}; choose 'zip' or 'folder'")
    final = dest.with_name(dest.name + ".zip") if fmt == "zip" and dest.suffix != ".zip" else dest
    if final.exists():
        raise ConfigError(f"{str(final)!r} already exists; choose another destination")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        if fmt == "zip":
            archive = shutil.make_archive(str(tmp / "run"), "zip", root_dir=target.parent,
                                          base_dir=target.name)
            os.replace(archive, final)
        else:
            shutil.copytree(target, tmp / "run")
            os.replace(tmp / "run", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = ["RunInfo", "Skipped", "TaskResult", "STATUSES", "read_run", "list_runs",
           "delete_run", "export_run"]
