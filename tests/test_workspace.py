"""icm_core.workspace.runs: runs of a workspace folder (CLI-made, nested sweeps, stopped, broken),
their settings and status, delete (inside the workspace only) and export."""

import json
import os
import shutil
import time
import zipfile

import pytest
from omegaconf import OmegaConf

from icm_core.cli.main import main
from icm_core.errors import ConfigError
from icm_core.training.trainer import Trainer
from icm_core.workspace.runs import delete_run, export_run, list_runs, read_run

from .helpers import TINY, tiny_config

SHORT = ["train.max_steps=2", "data.val_length=1", "data.train_length=8"]
_BUILT: dict = {}


def _train(root, name, *overrides, stop_at=None):
    """A run without the final evaluation (the RA tests evaluate through run_points)."""
    trainer = Trainer(tiny_config(*SHORT, *overrides, f"out_dir={root / name}"))
    while trainer.global_step < (stop_at or trainer.cfg.train.max_steps):
        trainer.step()
    trainer.save()


def build_workspace(root):
    """Runs made once per test session (tests/test_widgets_panels.py reads them too): a CLI
    sweep job (dora r4 qv, nested folder), its partner at another lambda, and a fixed-backbone
    pair stopped at step 2 of 4; broken folders beside them. Tests that change the workspace
    work on copies."""
    if "root" in _BUILT:
        return _BUILT["root"]
    assert main(["train", "-m", *TINY, *SHORT, "adapter.rank=4", "adapter.targets=[q,v]",
                 "lmbda=0.5", f"hydra.sweep.dir={root / 'sweeps' / 'grid'}"]) == 0
    _train(root, "sweeps/grid/1", "adapter.rank=4", "adapter.targets=[q,v]", "lmbda=2")
    for lm in (0.5, 2):
        _train(root, f"fixed-{lm}", "adapter.mode=fixed", f"lmbda={lm}", "train.max_steps=4",
               stop_at=2)
    (root / "notes" / "misc").mkdir(parents=True)  # a foreign folder: walked, not a run
    (root / "notes" / "readme.txt").write_text("hello")
    (root / "broken").mkdir()
    (root / "broken" / "LATEST").write_text("ckpt-000009")  # names a missing checkpoint
    (root / "crashed").mkdir()
    (root / "crashed" / "history.jsonl").write_text('{"kind": "step", "step": 1}\n{"kind": "st')
    old = time.time() - 3600
    os.utime(root / "crashed" / "history.jsonl", (old, old))
    _BUILT["root"] = root
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("ws"))


def by_name(runs):
    return {r.name: r for r in runs}


CLI_RUN = "sweeps/grid/0"
RUNS = [CLI_RUN, "sweeps/grid/1", "fixed-0.5", "fixed-2"]


def test_lists_cli_runs_nested_sweeps_and_stopped_runs_with_their_settings(ws):
    runs, skipped = list_runs(ws)
    runs = by_name(runs)
    assert set(runs) == {*RUNS, "crashed"}
    cli = runs[CLI_RUN]
    asked = dict(o.split("=", 1) for o in OmegaConf.load(ws / CLI_RUN / ".hydra" / "overrides.yaml"))
    assert asked["lmbda"] == "0.5" and asked["adapter.rank"] == "4"  # what the CLI was given
    s = cli.settings
    assert (cli.status, cli.steps_done, cli.checkpoint_step, cli.max_steps) == ("done", 2, 2, 2)
    assert (s["adapter"], s["rank"], s["targets"], s["lmbda"], s["tasks"]) == \
        ("dora", 4, ["q", "v"], 0.5, ["semseg"])
    assert (s["compression"], s["weights_source"], s["steps"], s["size"]) == (True, "random", 2, [64, 64])
    # the final real-bytes result is the last eval line of history.jsonl
    lines = [json.loads(x) for x in (ws / CLI_RUN / "history.jsonl").read_text().splitlines()]
    last = [e for e in lines if e["kind"] == "eval"][-1]
    (res,) = cli.results
    assert (res.task, res.metric, res.value, res.bpp, res.step) == \
        ("semseg", "mIoU", last["mIoU"], last["bpp"], 2)
    assert res.bpp > 0
    partner = runs["sweeps/grid/1"]
    assert (partner.status, partner.settings["lmbda"], partner.results) == ("done", 2.0, ())
    for lm in (0.5, 2.0):
        r = runs[f"fixed-{lm:g}"]
        assert (r.status, r.steps_done, r.checkpoint_step, r.max_steps) == ("stopped", 2, 2, 4)
        assert (r.settings["adapter"], r.settings["lmbda"]) == ("fixed", lm)
        assert (r.settings["rank"], r.settings["targets"]) == (None, None)  # meaningless here
    assert runs["crashed"].status == "failed" and "first checkpoint" in runs["crashed"].note
    assert [s.path.name for s in skipped] == ["broken"]
    assert "ckpt-000009" in skipped[0].reason


def test_running_means_history_beyond_the_checkpoint_written_recently(ws, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(ws / "fixed-2", run)
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps({"kind": "step", "step": 3, "task": "semseg", "loss": 1.0}) + "\n")
    now = time.time()
    info = read_run(run, tmp_path, now=now)
    assert (info.status, info.steps_done, info.checkpoint_step) == ("running", 3, 2)
    # the same files an hour later: killed after step 3, resumable from 2
    later = read_run(run, tmp_path, now=now + 3600)
    assert later.status == "stopped" and "continues from 2" in later.note


def test_delete_refuses_paths_outside_the_workspace_and_non_runs(ws, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(ws / "fixed-2", outside)
    for bad in (outside, ws, ws / "..", ws / "notes", "../elsewhere"):
        with pytest.raises(ConfigError):
            delete_run(ws, bad)
    assert (outside / "LATEST").is_file() and (ws / "notes" / "readme.txt").is_file()
    victim = ws / "sweeps" / "victim"
    shutil.copytree(ws / "fixed-2", victim)
    assert delete_run(ws, "sweeps/victim") == victim.resolve()
    assert not victim.exists() and (ws / "sweeps" / "grid" / "0").is_dir()


def test_export_as_zip_and_folder(ws, tmp_path):
    run = ws / CLI_RUN
    z = export_run(ws, run, tmp_path / "out" / "job")
    assert z == tmp_path / "out" / "job.zip"
    names = set(zipfile.ZipFile(z).namelist())
    latest = (run / "LATEST").read_text().strip()
    assert {"0/LATEST", "0/history.jsonl", f"0/{latest}/config.yaml",
            f"0/{latest}/task-semseg.safetensors"} <= names
    d = export_run(ws, CLI_RUN, tmp_path / "copy", fmt="folder")
    assert (d / latest / "task-semseg.safetensors").read_bytes() == \
        (run / latest / "task-semseg.safetensors").read_bytes()
    assert read_run(d).settings == read_run(run).settings
    with pytest.raises(ConfigError, match="already exists"):
        export_run(ws, CLI_RUN, tmp_path / "copy", fmt="folder")
    with pytest.raises(ConfigError, match="format"):
        export_run(ws, CLI_RUN, tmp_path / "x", fmt="tar")
    assert not [p for p in tmp_path.rglob("*.tmp")]  # nothing half-written left behind


def test_missing_workspace_is_empty():
    assert list_runs("/nonexistent/workspace") == ([], [])
