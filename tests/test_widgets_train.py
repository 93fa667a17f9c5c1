"""Train panel, background run queue and the Workbench, driven through their buttons."""

import json
import threading

import pytest
from safetensors.torch import load_file

from icm_core.config import load_config
from icm_core.errors import ConfigError
from icm_core.training.trainer import Trainer
from icm_core.workspace.queue import RunQueue, run_overrides
from tests.helpers import TINY
from widgets import workbench as wb
from widgets.setup import SetupPanel
from widgets.train_panel import TrainPanel

RUN = [*TINY, "train.max_steps=6", "train.checkpoint_every=3", "train.eval_every=3", "data.val_length=2"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same overrides trained straight through, as ``icm train`` does."""
    out = tmp_path_factory.mktemp("straight") / "run"
    Trainer(load_config([*RUN, f"out_dir={out}"])).fit(progress=False)
    return out


@pytest.fixture(scope="module")
def panel_run(tmp_path_factory):
    """Start in the panel, Stop after step 2 (clicked from the queue's thread), then Resume."""
    queue = RunQueue(tmp_path_factory.mktemp("ws"))
    panel = TrainPanel(queue, SetupPanel.from_overrides(RUN, live_readout=False), redraw_s=0.0)
    seen = []

    def stopper(job, event):
        seen.append((job.name, event.kind, getattr(event, "status", None), event.step))
        if event.kind == "step" and event.step == 2 and not job.resume:
            panel.stop_button.click()

    queue.subscribe(stopper)
    panel.run_name.value = "a"
    panel.start_button.click()
    assert queue.wait(300)
    stopped = {"status": panel.job.status, "steps": panel.job.steps,
               "latest": (queue.workspace / "a" / "LATEST").read_text(),
               "resume_enabled": not panel.resume_button.disabled}
    panel.resume_button.click()
    assert queue.wait(300)
    return queue, panel, stopped, seen


def test_start_stop_resume_gives_the_checkpoint_of_a_straight_run(straight, panel_run):
    queue, panel, stopped, _ = panel_run
    assert stopped == {"status": "stopped", "steps": 2, "latest": "ckpt-000002", "resume_enabled": True}
    assert [j.status for j in queue.jobs] == ["stopped", "done"]
    assert queue.jobs[1].resume and queue.jobs[1].overrides == queue.jobs[0].overrides
    run = queue.workspace / "a"
    assert (run / "LATEST").read_text() == (straight / "LATEST").read_text() == "ckpt-000006"
    mine = load_file(run / "ckpt-000006" / "task-semseg.safetensors")
    theirs = load_file(straight / "ckpt-000006" / "task-semseg.safetensors")
    assert mine.keys() == theirs.keys() and len(mine) > 10
    assert all(mine[k].equal(theirs[k]) for k in mine)
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if h["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "queue-state.json").read_text())["status"] == "done"


def test_panel_shows_progress_curves_and_log(straight, panel_run):
    _, panel, _, _ = panel_run
    hist = [json.loads(x) for x in (straight / "history.jsonl").read_text().splitlines()]
    steps = [h for h in hist if h["kind"] == "step"]
    evals = [h for h in hist if h["kind"] == "eval"]
    loss, bpp, real, metric = panel.figure.data[:4]
    assert list(loss.x) == [1, 2, 3, 4, 5, 6]
    assert list(loss.y) == pytest.approx([h["loss"] for h in steps], rel=1e-6)
    assert list(bpp.y) == pytest.approx([h["bpp"] for h in steps], rel=1e-6)
    assert list(real.x) == [3, 6] and list(real.y) == pytest.approx([h["bpp"] for h in evals])
    assert metric.name == "semseg" and list(metric.y) == pytest.approx([h["mIoU"] for h in evals])
    assert panel.figure.layout.annotations[2].text.startswith("mIoU")
    assert (panel.progress.value, panel.progress.max, panel.progress.bar_style) == (6, 6, "success")
    assert "done, step 6 / 6" in panel.status.value
    log = panel.log.value
    assert "a: stopped at step 2" in log and "checkpoint" in log and "mIoU" in log
    assert "RANDOM weights" in log  # the backbone warning, logged on the queue's thread
    assert panel.stop_button.disabled and panel.message.value == ""


def test_a_failing_job_reports_one_line_and_the_queue_goes_on(tmp_path):
    queue = RunQueue(tmp_path)
    panel = TrainPanel(queue, SetupPanel.from_overrides([*TINY, "data=nyud"], live_readout=False),
                       redraw_s=0.0)
    statuses = []
    queue.subscribe(lambda job, ev: statuses.append((job.name, ev.status)) if ev.kind == "status" else None)
    gate = threading.Event()
    queue.subscribe(lambda job, ev: gate.wait(60) if ev.kind == "status" and ev.status == "running"
                    and job.name == "bad" else None)
    panel.run_name.value = "bad"
    bad = panel.start()
    good = queue.submit([*TINY, "train.max_steps=1", "data.val_length=1"], name="good")
    assert good.status == "queued"  # waits while the first one runs
    gate.set()
    assert queue.wait(300)
    assert bad.status == "failed" and good.status == "done"
    assert bad.error.startswith("DatasetError: data='nyud'") and "\n" not in bad.error
    assert "bad failed: DatasetError" in panel.message.value  # shown in the panel, one line
    assert [s for n, s in statuses if n == "bad"] == ["queued", "running", "failed"]
    assert [s for n, s in statuses if n == "good"] == ["queued", "running", "done"]
    assert statuses.index(("bad", "failed")) < statuses.index(("good", "running"))
    state = json.loads((tmp_path / "bad" / "queue-state.json").read_text())
    assert state["status"] == "failed" and state["error"] == bad.error


def test_bad_settings_are_refused_before_queueing(tmp_path):
    queue = RunQueue(tmp_path)
    panel = TrainPanel(queue, SetupPanel.from_overrides(TINY, live_readout=False))
    panel.setup.fields["adapter.rank"].widget.value = 0
    assert panel.start() is None and queue.jobs == []
    assert "adapter.rank=0 must be &gt;= 1" in panel.message.value
    with pytest.raises(ConfigError, match="lmbda"):
        queue.submit(["lmbda=-1"])
    panel.resume_button.click()  # nothing stopped: says so, queues nothing
    assert "nothing to resume" in panel.message.value and queue.jobs == []


def test_a_command_line_run_folder_resumes_with_its_own_settings(straight):
    cfg = load_config([*RUN, f"out_dir={straight}"])
    again = load_config([*run_overrides(straight), f"out_dir={straight}"])
    assert again == cfg


def test_workbench_tabs_and_a_missing_panel(tmp_path, monkeypatch):
    monkeypatch.setitem(wb.LAZY, "Inspector", ("widgets.not_written_yet", "InspectorPanel"))
    bench = wb.Workbench(tmp_path / "ws", overrides=TINY)
    assert [bench.tabs.get_title(i) for i in range(6)] == [
        "Setup", "Train", "Runs", "Rate-accuracy", "Ablation", "Inspector"]
    assert bench.tabs.children[0] is bench.setup.widget and bench.tabs.children[1] is bench.train.widget
    assert bench.train.setup is bench.setup and bench.train.queue is bench.queue
    bench.select("Inspector")  # built on first selection
    assert bench.panel("Inspector") is None
    assert "widgets/not_written_yet.py is missing" in bench.tabs.children[5].children[0].value
    with pytest.raises(KeyError):
        bench.panel("Nope")


def test_compare_when_done_returns_at_once_and_opens_the_curves_when_the_queue_empties(tmp_path):
    """A notebook cell must not block on the queue (clicks would wait for it): the call
    returns before the run ends, and the Rate-accuracy tab opens with the run when it does."""
    bench = wb.Workbench(tmp_path / "ws", overrides=[*TINY, "train.max_steps=2", "data.val_length=1"])
    gate = threading.Event()
    bench.queue.subscribe(lambda job, event: gate.wait(30) if event.kind == "step" else None)
    bench.train.start_button.click()
    assert bench.compare_when_done() is None  # returned while the run is held at its first step
    assert bench.tabs.selected_index != wb.TABS.index("Rate-accuracy")
    gate.set()
    assert bench.queue.wait(120)
    assert [j.status for j in bench.queue.jobs] == ["done"]
    assert bench.tabs.selected_index == wb.TABS.index("Rate-accuracy")
    assert bench.panel("Rate-accuracy").runs == [bench.queue.jobs[0].run_dir]
