"""Runs, Rate-accuracy and Ablation panels driven through their callbacks, and the icm_core
pieces they call (ablation grid, measured cost, Fig. 5 rows, RA curves and BD-rate table)."""

import csv
import io
import json
import shutil

import pytest
import torch

from icm_core.config import load_config
from icm_core.data.registry import make_dataset
from icm_core.errors import ConfigError
from icm_core.evaluation.bdrate import bd_rate
from icm_core.evaluation.cost import model_info
from icm_core.evaluation.evaluate import DEFAULT_RATE_POINTS, evaluate
from icm_core.models.icm import build_model
from icm_core.studies import ablation as ab
from icm_core.studies.ra_curves import run_points
from icm_core.training.checkpoint import load_checkpoint, save_checkpoint
from icm_core.workspace.queue import RunQueue
from widgets.ablation import AblationPanel
from widgets.ra import RAPanel
from widgets.runs import RunsPanel

from .helpers import TINY, tiny_config
from .test_workspace import CLI_RUN, RUNS, SHORT, build_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("ws"))


# -- Runs panel -------------------------------------------------------------------------------
def test_runs_panel_lists_selects_compares_exports_and_deletes_with_confirmation(ws, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(ws, work, symlinks=True)
    (work / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    shutil.copytree(ws / "fixed-2", tmp_path / "outside")  # a run reached only through a link
    panel = RunsPanel(work)
    rows = {r["name"]: r for r in panel.rows()}
    assert set(rows) == {*RUNS, "crashed"}  # the link to a run outside is not followed
    cli = rows[CLI_RUN]
    assert (cli["status"], cli["steps"], cli["adapter"], cli["rank"], cli["targets"],
            cli["lmbda"], cli["weights_source"]) == ("done", "2/2", "dora", 4, ["q", "v"], 0.5, "random")
    assert cli["bpp"] > 0 and cli["metric"].startswith("mIoU ")
    assert rows["fixed-2"]["status"] == "stopped" and rows["fixed-2"]["steps"] == "2/4"
    assert "stopped" in panel.table.value and "broken" in panel.table.value  # skipped, with why

    compared, opened = [], []
    panel.on_compare(compared.append)
    panel.on_open(opened.append)
    panel.compare_button.click()
    assert compared == [] and "Select" in panel.message.value  # nothing selected yet
    panel.select_runs([CLI_RUN, "fixed-2"])
    panel.compare_button.click()
    panel.open_button.click()
    assert compared == [[work / CLI_RUN, work / "fixed-2"]] and opened == [work / CLI_RUN]

    panel.export_dest.value = str(tmp_path / "exports")
    panel.export_format.value = "folder"
    panel.export_button.click()
    assert (tmp_path / "exports" / "sweeps_grid_0" / "LATEST").is_file()
    assert (tmp_path / "exports" / "fixed-2" / "LATEST").is_file()

    panel.select_runs(["fixed-2"])
    panel.delete_button.click()
    assert panel.confirm_box.layout.display == "flex" and (work / "fixed-2").is_dir()
    panel.cancel_button.click()
    assert panel.confirm_box.layout.display == "none" and (work / "fixed-2").is_dir()
    panel.delete_button.click()
    panel.confirm_button.click()
    assert not (work / "fixed-2").exists() and "fixed-2" not in {r["name"] for r in panel.rows()}
    assert panel.select.value == ()
    with pytest.raises(ValueError, match="not runs"):
        panel.select_runs([tmp_path / "outside"])
    assert (tmp_path / "outside" / "LATEST").is_file()


# -- Rate-accuracy panel ----------------------------------------------------------------------
def _results_file(path, name, bpp, rmse):
    doc = {"name": name, "description": "test curve", "task": "depth",
           "results": {"bpp": bpp, "RMSE": rmse}}
    path.write_text(json.dumps(doc))
    return path


def test_ra_panel_plots_run_points_and_bd_rates_of_runs_and_results_files(ws, tmp_path):
    panel = RAPanel(ws)
    panel.set_runs([ws / r for r in RUNS])
    assert list(panel.figures) == ["semseg"]
    # expected curves straight from run_points, grouped by adapter here
    expected = {}
    for r in RUNS:
        (p,) = run_points(ws / r)
        expected.setdefault(p.settings["adapter"], []).append((p.bpp[0], p.values[0],
                                                               p.lmbdas[0]))
    traces = {t.name: t for t in panel.figures["semseg"].data}
    assert set(traces) == {"dora r4 qv", "fixed"}
    for label, adapter in (("dora r4 qv", "dora"), ("fixed", "fixed")):
        pts = sorted(expected[adapter])
        assert list(traces[label].x) == [b for b, _, _ in pts]
        assert list(traces[label].y) == [v for _, v, _ in pts]
        assert list(traces[label].text) == [f"λ={lm:g}" for _, _, lm in pts]
    assert "rank: 4" in traces["dora r4 qv"].hovertext[0]
    assert "targets: ['q', 'v']" in traces["dora r4 qv"].hovertext[0]

    panel.anchor.value = "fixed"
    (row,) = panel.bd_rows
    want = bd_rate(([b for b, _, _ in expected["fixed"]], [v for _, v, _ in expected["fixed"]]),
                   ([b for b, _, _ in expected["dora"]], [v for _, v, _ in expected["dora"]]), True)
    assert (row["task"], row["method"], row["anchor"], row["bd_rate_percent"]) == \
        ("semseg", "dora r4 qv", "fixed", want.value)
    assert row["reason"] == (want.reason or "")
    assert (row["metric_lo"], row["metric_hi"]) == (want.metric_range or (None, None))

    # results files (CompressAI layout), lower-is-better metric, via the path box and Add
    a = _results_file(tmp_path / "results-a.json", "codec-a", [0.1, 0.2, 0.4], [1.30, 1.20, 1.10])
    b = _results_file(tmp_path / "results-b.json", "codec-b", [0.08, 0.15, 0.3], [1.28, 1.19, 1.12])
    panel.path_box.value = str(a)
    panel.add_button.click()
    panel.add_results(b)
    assert list(panel.figures) == ["semseg", "depth"]
    depth = {t.name: t for t in panel.figures["depth"].data}
    assert list(depth["codec-b"].x) == [0.08, 0.15, 0.3] and list(depth["codec-b"].y) == \
        [1.28, 1.19, 1.12]
    panel.anchor.value = "codec-a"
    (row,) = panel.bd_rows
    want = bd_rate(([0.1, 0.2, 0.4], [1.30, 1.20, 1.10]), ([0.08, 0.15, 0.3], [1.28, 1.19, 1.12]),
                   higher_is_better=False)
    assert row["method"] == "codec-b" and row["bd_rate_percent"] == pytest.approx(want.value)
    assert want.value < 0  # fewer bits for the same RMSE: the direction was handled
    assert f"{want.value:+.2f} %" in panel.table.value

    panel.path_box.value = str(tmp_path / "missing.json")
    panel.add_button.click()
    assert "missing.json" in panel.message.value and len(panel.results) == 2


def _saved_run(path, *overrides):
    """A run folder holding one untrained tiny checkpoint (projections scaled: real bits)."""
    m = build_model(tiny_config("tasks=[depth]", "data.val_length=2", *overrides))
    with torch.no_grad():
        for h in m.heads.values():
            h.proj.weight.mul_(40)
    save_checkpoint(path, m, step=1)
    return path


def test_ra_panel_rate_slider_marks_a_variable_rate_runs_point(tmp_path):
    fixed = _saved_run(tmp_path / "fixed")
    panel = RAPanel(tmp_path, max_images=1)
    panel.set_runs([fixed])
    assert panel.rate.disabled and panel.rate_run.disabled and panel.marks == []
    assert "no variable-rate run" in panel.rate_text.value
    vr_run = _saved_run(tmp_path / "vr", "model.variable_rate=true",
                        "model.rate_lambdas=[0.25,1.0,4.0]")
    panel.set_runs([fixed, vr_run])
    assert not panel.rate.disabled and panel.rate_run.value == str(vr_run)
    traces = {t.name: t for t in panel.figures["depth"].data}
    (curve,) = [c for c in panel.curves if c.settings.get("variable_rate")]
    assert len(traces[curve.name].x) == len(curve.bpp) == DEFAULT_RATE_POINTS  # a whole curve
    (top,) = panel.marks  # the slider starts at rate 1, the top of the curve
    assert top.points[0]["rate"] == 1.0 and top.bpp[0] == max(curve.bpp)

    (mark,) = panel.mark_rate(0.25)
    model = load_checkpoint(vr_run)[0]
    data = make_dataset(model.cfg.data, "val", model.tasks)
    want = evaluate(model, data, "depth", rate=0.25, max_images=1, per_image=False)
    assert (mark.bpp[0], mark.values[0], mark.points[0]["rate"]) == (want.bpp, want.value, 0.25)
    star = panel.figures["depth"].data[-1]
    assert star.name == f"{curve.name} at r=0.25" and star.marker.symbol == "star"
    assert (star.x[0], star.y[0]) == (want.bpp, want.value)
    assert star.marker.color == traces[curve.name].line.color
    assert f"{want.bpp:.4f} bpp" in panel.rate_text.value
    assert min(curve.bpp) <= want.bpp <= max(curve.bpp)
    cached = json.loads((vr_run / "ra-points.json").read_text())
    assert sum(k.endswith(":rate=0.25") for k in cached) == 1  # cached like the other points
    panel.refresh()  # a refresh keeps the run and the rate chosen, and the star
    assert panel.rate_run.value == str(vr_run) and panel.figures["depth"].data[-1].x[0] == want.bpp


# -- ablation: grid, cost, Fig. 5 data ---------------------------------------------------------
def test_grid_expands_to_the_expected_override_sets():
    pts = ab.expand_grid(["dora", "full", "fixed"], [4, 8], [("q", "v"), ("q", "k", "v")],
                         [0.5, 2], base=[*TINY, "lmbda=9", "out_dir=x", "train.max_steps=7"])
    got = [p.overrides[len(TINY) + 1:] for p in pts]  # after the base (less what the grid sets)
    want = []
    for r in (4, 8):
        for ts in ("q,v", "q,k,v"):
            for lm in ("0.5", "2"):
                want.append(("adapter.mode=dora", f"lmbda={lm}", f"adapter.rank={r}",
                             f"adapter.targets=[{ts}]"))
    for mode in ("full", "fixed"):  # no rank or targets: one run per lambda
        want += [(f"adapter.mode={mode}", "lmbda=0.5"), (f"adapter.mode={mode}", "lmbda=2")]
    assert got == want
    assert all(p.overrides[:len(TINY) + 1] == (*TINY, "train.max_steps=7") for p in pts)
    assert [p.steps for p in pts] == [7] * 12 and len({p.name for p in pts}) == 12
    assert pts[0].name == "dora-r4-qv-lmbda0.5" and pts[-1].name == "fixed-lmbda2"
    cfg = load_config(list(pts[3].overrides))  # what the queue will compose for one point
    assert (cfg.adapter.mode, cfg.adapter.rank, cfg.adapter.targets, cfg.lmbda,
            cfg.train.max_steps) == ("dora", 4, ["q", "k", "v"], 2.0, 7)
    assert ab.parse_target_sets("q,v; q k v up down;") == [("q", "v"), ("q", "k", "v", "up", "down")]
    assert ab.parse_numbers("0.5, 2 4") == [0.5, 2.0, 4.0]
    for bad in (lambda: ab.expand_grid(["dorra"], [4], [("q",)], [1]),
                lambda: ab.expand_grid(["dora"], [0], [("q",)], [1]),
                lambda: ab.expand_grid(["dora"], [4], [("q",)], [-1]),
                lambda: ab.parse_target_sets("q, w"),
                lambda: ab.parse_numbers("4, x", int, "ranks")):
        with pytest.raises(ConfigError):
            bad()


VR_BASE = [*TINY, "model.variable_rate=true", "model.rate_lambdas=[1,4]", "train.max_steps=5"]
STEP = ab.StepTime(0.5, 2, "dora r4 qv", "cpu", 1, "2026-01-01 00:00 UTC")


def test_a_variable_rate_grid_trains_once_per_configuration_not_once_per_lambda():
    """One variable-rate training covers every rate: the grid's lambdas become its anchors and
    the cost counts one training per configuration."""
    pts = ab.expand_grid(["dora", "fixed"], [4, 8], [("q", "v")], [2, 0.5, 8], base=VR_BASE)
    assert [p.name for p in pts] == ["dora-r4-qv-vr0.5-2-8", "dora-r8-qv-vr0.5-2-8", "fixed-vr0.5-2-8"]
    assert all(p.variable_rate and p.lmbda is None and p.lambdas == (0.5, 2.0, 8.0) for p in pts)
    assert not any(o.startswith(("lmbda=", "model.rate_lambdas=[1")) for p in pts for o in p.overrides)
    cfg = load_config(list(pts[1].overrides))  # what the queue will compose
    assert (cfg.model.variable_rate, cfg.model.rate_lambdas) == (True, [0.5, 2.0, 8.0])
    assert (cfg.adapter.mode, cfg.adapter.rank, cfg.adapter.targets) == ("dora", 8, ["q", "v"])
    cost = ab.estimate_cost(pts, STEP)
    assert (cost.runs, cost.steps, cost.seconds) == (3, 15, 7.5)
    assert cost.describe().startswith("3 trainings (variable rate: one per configuration covers "
                                      "every rate, lambdas 0.5, 2, 8), 15 steps x 0.500 s")
    # the same grid at a fixed rate: one training per configuration and lambda
    fixed = ab.estimate_cost(ab.expand_grid(["dora", "fixed"], [4, 8], [("q", "v")], [2, 0.5, 8],
                                            base=[*TINY, "train.max_steps=5"]), STEP)
    assert (fixed.runs, fixed.steps) == (9, 45) and not fixed.variable_rate
    assert fixed.describe().startswith("9 trainings (one per configuration and lambda)")
    # no lambdas: the base's anchors; one lambda is no ladder
    (own,) = ab.expand_grid(["fixed"], [], [], [], base=VR_BASE)
    assert own.lambdas == (1.0, 4.0) and "model.rate_lambdas=[1,4]" in own.overrides
    with pytest.raises(ConfigError, match=r"give 2 or more, or none to keep the base's \[1.0, 4.0\]"):
        ab.expand_grid(["fixed"], [], [], [3], base=VR_BASE)
    with pytest.raises(ConfigError, match="at least one lambda"):
        ab.expand_grid(["fixed"], [], [], [], base=TINY)


def test_the_ablation_panel_says_how_many_trainings_a_variable_rate_grid_costs(tmp_path, monkeypatch):
    monkeypatch.setattr(ab, "measure_step_time", lambda *a, **k: STEP)  # nothing is timed here
    panel = AblationPanel(tmp_path, queue=None, base=VR_BASE)
    panel.modes.value = ("dora", "fixed")
    panel.ranks.value, panel.targets.value, panel.lambdas.value = "4, 8", "q,v", "0.5, 2, 8"
    panel.estimate_button.click()
    assert panel.message.value == "" and panel.cost.runs == 3
    assert "3 trainings (variable rate: one per configuration covers every rate" in panel.cost_text.value


def test_fig5_rows_match_the_runs_and_are_saved_as_html_and_csv(ws, tmp_path):
    rows = ab.fig5_rows([ws / r for r in RUNS])
    assert len(rows) == 4
    for row in rows:
        (p,) = run_points(row["run"])
        assert (row["value"], row["bpp"], row["lmbda"], row["task"]) == \
            (p.values[0], p.bpp[0], p.lmbdas[0], p.task)
        mode = p.settings["adapter"]
        extra = ["adapter.rank=4", "adapter.targets=[q,v]"] if mode == "dora" else \
            [f"adapter.mode={mode}"]
        info = model_info([*TINY, *extra])
        assert row["trainable_params"] == info["trainable_backbone_params"]
        assert row["trainable_percent"] == pytest.approx(
            100 * info["trainable_backbone_params"] / info["backbone_params"])
        assert (row["label"], row["rank"]) == (("dora r4 qv", 4) if mode == "dora" else ("fixed", None))
    assert [r["trainable_params"] for r in rows if r["adapter"] == "fixed"] == [0, 0]
    html, table = ab.save_ablation(rows, tmp_path / "out")
    back = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [(r["run"], float(r["value"])) for r in back] == [(r["run"], r["value"]) for r in rows]
    assert "plotly" in html.read_text() and "trainable backbone parameters (%)" in html.read_text()


# -- Ablation panel through the real queue ------------------------------------------------------
def test_ablation_panel_costs_runs_and_charts_a_grid(tmp_path):
    from widgets.setup import SetupPanel

    setup = SetupPanel([*TINY, *SHORT], live_readout=False)
    queue = RunQueue(tmp_path)
    panel = AblationPanel(tmp_path, queue, setup=setup, name="g")
    panel.ranks.value = "x"
    panel.estimate_button.click()
    assert "ConfigError" in panel.message.value and "'x'" in panel.message.value
    panel.modes.value = ("dora", "fixed")
    panel.ranks.value = "2"
    panel.targets.value = "q,v"
    panel.lambdas.value = "1"
    pts = panel.points()
    assert [p.overrides[-4:] if p.mode == "dora" else p.overrides[-2:] for p in pts] == [
        ("adapter.mode=dora", "lmbda=1", "adapter.rank=2", "adapter.targets=[q,v]"),
        ("adapter.mode=fixed", "lmbda=1")]
    assert all(set(setup.overrides()) - {o for o in setup.overrides() if o.startswith(
        ("adapter.", "lmbda="))} <= set(p.overrides) for p in pts)
    panel.estimate_button.click()
    cost, step = panel.cost, panel.cost.step_time
    assert step.seconds > 0 and step.steps == 2 and not step.cached
    assert (cost.runs, cost.steps) == (2, 4) and cost.seconds == 2 * 2 * step.seconds
    assert "measured" in panel.cost_text.value
    again = ab.measure_step_time(pts[0].overrides, cache_dir=tmp_path)
    assert again.cached and again.seconds == step.seconds  # the measurement is reused, not redone

    runs = RunsPanel(tmp_path, queue)
    panel.run_button.click()
    assert [j.run_dir.name for j in panel.jobs] == ["g-dora-r2-qv-lmbda1", "g-fixed-lmbda1"]
    ra = RAPanel(tmp_path, queue)
    ra.set_runs(panel.run_dirs)  # before they finish: redrawn by the queue's events
    assert queue.wait(timeout=240)
    assert [j.status for j in panel.jobs] == ["done", "done"]
    assert {(r["name"], r["status"]) for r in runs.rows()} == {
        ("g-dora-r2-qv-lmbda1", "done"), ("g-fixed-lmbda1", "done")}  # refreshed by the queue
    assert sorted(c.name for c in ra.curves) == ["dora r2 qv", "fixed"] and not ra.errors
    assert {(r["label"], r["run"]) for r in panel.rows} == {
        ("dora r2 qv", str(tmp_path / "g-dora-r2-qv-lmbda1")),
        ("fixed", str(tmp_path / "g-fixed-lmbda1"))}
    html, table = panel.saved
    assert html == tmp_path / "g" / "ablation.html" and table.is_file()
    assert len(list(csv.DictReader(io.StringIO(table.read_text())))) == 2
    assert len(panel.figure.data) == 4  # two configurations x (trainable %, RA)
    panel.run_button.click()  # the same grid again: its finished runs are reused
    assert "done already" in panel.message.value and len(queue.jobs) == 2 and panel.jobs == []
    assert len(panel.rows) == 2
    panel.lambdas.value = "1, 3"  # a folder in the way that is not a finished run: refused
    (tmp_path / "g-fixed-lmbda3").mkdir()
    (tmp_path / "g-fixed-lmbda3" / "history.jsonl").write_text("")
    panel.run_button.click()
    assert "not finished runs" in panel.message.value and len(queue.jobs) == 2
