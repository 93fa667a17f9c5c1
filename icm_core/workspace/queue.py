"""Training runs in the background, one after another, while the notebook stays usable.

``RunQueue(workspace).submit(overrides)`` trains ``icm_core.training.trainer.Trainer`` s one at a time in
ONE background thread; runs started while one trains wait in the queue.

Why a thread and not a subprocess: the panels watch the live run. A thread shares the
process, so the Trainer's typed events reach subscribers as Python objects (no pipe, no
serialization, no polling of files), the Inspector can read the very model being trained
(every forward takes ``model.lock``; the trainer holds it for a whole step), and
``Trainer.stop()`` is a thread-safe flag that ends the run at a step boundary with a
resumable checkpoint. Torch releases the GIL inside its kernels, so the kernel still answers
widget callbacks while a step runs. What a subprocess would buy (surviving a crash in native
code, a hard kill) is what ``icm train`` on the command line is for; its run folders look the
same to the workbench.

Config composition (Hydra's global state is not thread-safe) happens in ``submit``/``resume``
on the caller's thread, which also reports a bad override at once, as ``ConfigError``; the
worker thread only builds and trains. An error in a job ends that job (status ``failed``,
``error`` one line), never the thread.

The process-global RNG is shared with the notebook thread, so a run never draws from it: its
initial weights, rate noise and batches come from generators of its own (``build_model``,
``Trainer``), and a run's weights are the same whatever the notebook builds, draws or seeds
meanwhile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from icm_core.config import load_config
from icm_core.config.overrides import (
    GROUPS,
    QUEUE_MANAGED,
    config_overrides,
    config_values,
    format_override,
    format_value,
    parse_overrides,
    split_command_line,
)
from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError, ICMError
from icm_core.files import write_text
from icm_core.training.checkpoint import has_checkpoint, load_config_file, resolve_checkpoint_dir
from icm_core.training.trainer import DoneEvent, Trainer

log = logging.getLogger(__name__)

STATE_FILE = "queue-state.json"  # {"status", "error", "overrides"}: what icm_core.workspace.runs reads
STATUSES = ("queued", "running", "stopped", "done", "failed")


def run_overrides(run_dir: str | Path) -> list[str]:
    """The overrides a run folder was trained with: what its queue recorded, else derived from
    its newest checkpoint's config.yaml (runs started with ``icm train``)."""
    run = Path(run_dir)
    try:
        state = json.loads((run / STATE_FILE).read_text())
        if isinstance(state.get("overrides"), list):
            return [str(o) for o in state["overrides"]]
    except (OSError, ValueError, AttributeError):
        pass  # no queue record: read the checkpoint
    return config_overrides(load_config_file(resolve_checkpoint_dir(run)))


def run_name(overrides) -> str:
    """A readable folder name from the overrides: ``quick-rank4-lmbda0.5``."""
    parts = []
    for key, value in parse_overrides(overrides):
        if key in QUEUE_MANAGED:
            continue
        leaf = key.rsplit(".", 1)[-1]
        if isinstance(value, list):
            text = f"{leaf}-" + "-".join(str(v) for v in value)
        else:
            text = str(value) if key in GROUPS else f"{leaf}{format_value(value)}"
        parts.append(re.sub(r"[^A-Za-z0-9.\-]+", "", text))
    name = "-".join(p for p in parts if p) or "run"
    if len(name) > 60:  # long override lists: keep it short, still distinct
        name = name[:51] + "-" + hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:8]
    return name


# -- jobs and their events ----------------------------------------------------------------------
@dataclass(frozen=True)
class StatusEvent:
    """A job changed status (``error``: the one-line reason of a failure)."""

    kind: ClassVar[str] = "status"
    step: int
    status: str
    error: str | None = None


@dataclass(frozen=True)
class LogEvent:
    """A warning or error logged by icm_core while the job ran (e.g. the random-weights warning)."""

    kind: ClassVar[str] = "log"
    step: int
    level: str
    message: str


@dataclass(eq=False)
class Job:
    """One queued run. ``steps``: optimizer steps done (a resumed run starts at its checkpoint)."""

    overrides: list[str]
    run_dir: Path
    cfg: ExperimentConfig = field(repr=False)
    resume: bool = False
    status: str = "queued"
    error: str | None = None
    steps: int = 0
    last: dict[str, Any] = field(default_factory=dict, repr=False)  # newest event of each kind
    events: deque = field(default_factory=lambda: deque(maxlen=20000), repr=False)
    trainer: Any = field(default=None, repr=False)  # the live Trainer while running
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def max_steps(self) -> int:
        return self.cfg.train.max_steps

    @property
    def model(self):
        """The model being trained (None unless running): read it under ``model.lock``."""
        t = self.trainer
        return t.model if t is not None else None


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _JobLog(logging.Handler):
    """Forwards icm_core's warnings logged on the worker thread to the job's subscribers."""

    def __init__(self, emit: Callable[[LogEvent], None]):
        super().__init__(logging.WARNING)
        self._emit, self.thread = emit, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self._emit(LogEvent(0, record.levelname, record.getMessage()))


class RunQueue:
    """Args:
    workspace: folder of run folders; a job trains into ``workspace/<name>``.
    """

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace)
        self.jobs: list[Job] = []
        self.current: Job | None = None
        self._pending: deque[Job] = deque()
        self._subscribers: list[Callable[[Job, Any], None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- public API -------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Job, Any], None]) -> None:
        """``fn(job, event)`` on the worker thread: Trainer events, ``StatusEvent``, ``LogEvent``.
        A subscriber that raises is logged and dropped."""
        self._subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[Job, Any], None]) -> None:
        if fn in self._subscribers:
            self._subscribers.remove(fn)

    def submit(self, overrides, name: str | None = None) -> Job:
        """Queue a fresh run of ``overrides`` into ``workspace/name`` (a name derived from the
        overrides when None, made unique). A bad override raises ``ConfigError`` here."""
        overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in QUEUE_MANAGED]
        parse_overrides(overrides)
        if name is None:
            name = self._unique(run_name(overrides))
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", name):
            raise ConfigError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only")
        run_dir = self.workspace / name
        if has_checkpoint(run_dir) or self._busy(run_dir):
            raise ConfigError(f"run folder {str(run_dir)!r} is taken (it holds a run); pick another "
                              "name, or resume that run")
        return self._enqueue(overrides, run_dir, resume=False)

    def resume(self, job_or_run_dir: Job | str | Path) -> Job:
        """Queue the continuation of a stopped run (same overrides, ``resume=true``): a Job of
        this queue, or any run folder (one started with ``icm train`` included)."""
        if isinstance(job_or_run_dir, Job):
            overrides, run_dir = job_or_run_dir.overrides, job_or_run_dir.run_dir
        else:
            run_dir = Path(job_or_run_dir)
            if re.fullmatch(r"ckpt-\d+", run_dir.name):
                run_dir = run_dir.parent
            if not has_checkpoint(run_dir):
                raise ConfigError(f"{str(run_dir)!r} holds no checkpoint to resume; train it first")
            overrides = run_overrides(run_dir)
        if self._busy(run_dir):
            raise ConfigError(f"{str(run_dir)!r} is already queued or running")
        return self._enqueue(list(overrides), run_dir, resume=True)

    def stop(self, job: Job | None = None) -> None:
        """End the running job at its next step boundary with a resumable checkpoint (status
        ``stopped``); a queued ``job`` is taken off the queue instead (also ``stopped``)."""
        with self._cond:
            job = job or self.current
            if job is None:
                return
            job._stop.set()
            if job in self._pending:
                self._pending.remove(job)
                self._set_status(job, "stopped")
                self._cond.notify_all()
                return
        trainer = job.trainer
        if trainer is not None:
            trainer.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False if ``timeout`` (s) passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self.current is None, timeout)

    # -- internals --------------------------------------------------------------------------
    def _busy(self, run_dir: Path) -> bool:
        return any(j.run_dir == run_dir and j.status in ("queued", "running") for j in self.jobs)

    def _unique(self, name: str) -> str:
        taken = {j.run_dir.name for j in self.jobs}
        candidate, n = name, 1
        while candidate in taken or (self.workspace / candidate).exists():
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def _enqueue(self, overrides: list[str], run_dir: Path, resume: bool) -> Job:
        cfg = load_config([*overrides, format_override("out_dir", str(run_dir)),
                           f"resume={'true' if resume else 'false'}"])
        job = Job(overrides, run_dir, cfg, resume=resume)
        with self._cond:
            self.jobs.append(job)
            self._pending.append(job)
            self._write_state(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="icm-run-queue", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        self._emit(job, StatusEvent(job.steps, "queued"))
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                job = self._pending.popleft()
                self.current = job
            try:
                self._run(job)
            except BaseException as e:  # noqa: BLE001 - nothing may end the worker thread
                log.exception("run queue: job %s", job.name)
                job.error = job.error or _one_line(e)
                self._set_status(job, "failed")
            finally:
                job.trainer = None  # the run folder holds the result; free the model
                with self._cond:
                    self.current = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:

        handler = _JobLog(lambda ev: self._emit(job, dataclasses.replace(ev, step=job.steps)))
        logging.getLogger("icm_core").addHandler(handler)
        try:
            self._set_status(job, "running")
            job.trainer = trainer = Trainer(job.cfg)
            trainer.subscribe(lambda ev: self._on_event(job, ev))
            if job._stop.is_set():  # stopped while the model was being built: nothing trained
                self._set_status(job, "stopped")
                return
            trainer.fit(progress=False)
            done = trainer.history[-1] if trainer.history else None
            stopped = isinstance(done, DoneEvent) and done.stopped
            self._set_status(job, "stopped" if stopped else "done")
        except Exception as e:  # an ICMError is the user's to fix: one line; others are logged
            if not isinstance(e, ICMError):
                log.exception("run %s failed", job.name)
            job.error = _one_line(e)
            self._set_status(job, "failed")
        finally:
            logging.getLogger("icm_core").removeHandler(handler)

    def _on_event(self, job: Job, event) -> None:
        """Trainer subscriber (worker thread). It must never raise: the Trainer would drop it."""
        if event.kind == "step":
            job.steps = event.step
            if job._stop.is_set():  # a stop that raced fit()'s start: honour it at this boundary
                job.trainer.stop()
        self._emit(job, event)

    def _emit(self, job: Job, event) -> None:
        job.last[event.kind] = event
        job.events.append(event)
        for fn in list(self._subscribers):
            try:
                fn(job, event)
            except Exception:  # a broken panel must not end a run
                log.exception("queue subscriber %r raised on a %s event; it is dropped", fn, event.kind)
                self.unsubscribe(fn)

    def _set_status(self, job: Job, status: str) -> None:
        job.status = status
        self._write_state(job)
        self._emit(job, StatusEvent(job.steps, status, job.error if status == "failed" else None))

    def _write_state(self, job: Job) -> None:
        try:
            write_text(job.run_dir / STATE_FILE, json.dumps(
                {"status": job.status, "error": job.error, "overrides": job.overrides}))
        except OSError as e:  # the state file only informs the Runs panel
            log.warning("cannot write %s: %s", job.run_dir / STATE_FILE, e)


__all__ = ["RunQueue", "Job", "StatusEvent", "LogEvent", "config_overrides", "config_values",
           "format_override", "format_value", "parse_overrides", "run_name", "run_overrides",
           "split_command_line", "GROUPS", "STATE_FILE"]
