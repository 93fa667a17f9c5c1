"""Variable rate: one task file codes at every rate r in [0, 1] (icm_core/models/rate.py)."""

import json
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core import BitstreamError, ConfigError
from icm_core.cli.main import main
from icm_core.codec import coder
from icm_core.codec.container import (
    FORMAT_VERSION,
    VARIABLE_RATE_VERSION,
    Packet,
    pack,
    unpack,
)
from icm_core.config.schema import MAX_RATE_ANCHORS
from icm_core.evaluation.accounting import parameter_counts
from icm_core.evaluation.cost import compose, model_info
from icm_core.evaluation.evaluate import DEFAULT_RATE_POINTS, evaluate, evaluate_rates
from icm_core.models import rate as vr
from icm_core.models.icm import build_model
from icm_core.studies.demo import TASK_LAMBDAS, TASK_RATE_LAMBDAS
from icm_core.studies.ra_curves import ra_curves, run_points
from icm_core.training.checkpoint import load_checkpoint, resolve_checkpoint_dir
from icm_core.training.trainer import Trainer

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]

LAMBDAS = [0.25, 1.0, 4.0]
VR = ["model.variable_rate=true", f"model.rate_lambdas=[{','.join(map(str, LAMBDAS))}]"]


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config(*VR, "tasks=[semseg,depth]")).eval()


@pytest.fixture(scope="module")
def fixed():
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A variable-rate depth run trained a few dozen steps, with its checkpoint: on the shipped
    synthetic-pretrained backbone, whose features the codec learns to use within 60 steps (on
    random weights a 40-step model predicts about the same at every rate)."""
    out = tmp_path_factory.mktemp("vr") / "run"
    cfg = tiny_config(*VR, "tasks=[depth]", "backbone=tiny_synthetic", "train.max_steps=60",
                      "train.batch_size=4", "train.head_lr=3e-3", "data.val_length=4",
                      "model.rate_lambdas=[0.01,1.0,100.0]", f"out_dir={out}")
    trainer = Trainer(cfg)
    trainer.fit(progress=False)
    return trainer, out


# -- the rate grid ----------------------------------------------------------------------------
@pytest.mark.parametrize("anchors", range(2, MAX_RATE_ANCHORS + 1))
def test_interpolation_hits_every_anchor_exactly(anchors):
    q = torch.rand(anchors, 6, 1, 1) + 0.1
    for k in range(anchors):
        code = vr.rate_code(k / (anchors - 1))
        assert vr.anchor_position(code, anchors) == (k, 0.0)
        assert torch.equal(vr.interpolate(q, code)[0], q[k])  # the parameter itself, no exp(log)
        assert vr.anchor_rate(k, anchors) == vr.snap_rate(k / (anchors - 1))
    # half way between anchors 0 and 1: the geometric mean of their steps
    mid = vr.interpolate(q, vr.rate_code(0.5 / (anchors - 1)))[0]
    assert torch.allclose(mid, (q[0] * q[1]).sqrt(), rtol=1e-3)
    assert vr.MAX_ANCHORS == MAX_RATE_ANCHORS  # config's copy of the limit


def test_lambda_at_the_anchors_and_between():
    assert [vr.lambda_at(r, LAMBDAS) for r in (0, 0.5, 1)] == LAMBDAS
    assert vr.lambda_at(0.25, LAMBDAS) == pytest.approx(0.5)  # geometric between 0.25 and 1
    assert vr.sweep(DEFAULT_RATE_POINTS) == [vr.snap_rate(i / 6) for i in range(7)]
    assert vr.sweep(7)[0] == 0.0 and vr.sweep(7)[-1] == 1.0


def test_rate_at_inverts_lambda_at():
    assert [vr.rate_at(lm, LAMBDAS) for lm in LAMBDAS] == [0.0, 0.5, 1.0]
    assert vr.rate_at(0.5, LAMBDAS) == pytest.approx(0.25, abs=1 / vr.RATE_STEPS)
    for r in (0.1, 0.37, 0.8):
        assert vr.lambda_at(vr.rate_at(vr.lambda_at(r, LAMBDAS), LAMBDAS), LAMBDAS) == \
            pytest.approx(vr.lambda_at(r, LAMBDAS), rel=1e-4)
    with pytest.raises(ConfigError, match="outside the anchors' range"):
        vr.rate_at(8.0, LAMBDAS)


def test_initial_steps_fall_with_lambda():
    q = vr.initial_steps(LAMBDAS)
    assert torch.allclose(q, torch.tensor([2.0, 1.0, 0.5]))  # (lambda / 1) ** -1/2


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,field", [
    (["model.variable_rate=true"], "model.rate_lambdas"),
    (["model.variable_rate=true", "model.rate_lambdas=[1.0]"], "model.rate_lambdas"),
    (["model.rate_lambdas=[1.0,0.5]"], "model.rate_lambdas"),
    (["model.rate_lambdas=[1.0,1.0]"], "model.rate_lambdas"),
    (["model.rate_lambdas=[0,1.0]"], "model.rate_lambdas"),
    ([f"model.rate_lambdas=[{','.join(str(i + 1) for i in range(MAX_RATE_ANCHORS + 1))}]"],
     "model.rate_lambdas"),
    ([*VR, "model.compression=false"], "model.variable_rate"),
])
def test_bad_rate_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(*overrides)


def test_quick_vr_preset_mirrors_quick_with_four_anchors():
    from icm_core.config import load_config

    quick, vrc = load_config(["experiment=quick"]), load_config(["experiment=quick_vr"])
    assert vrc.model.variable_rate and not quick.model.variable_rate  # per-lambda stays default
    assert (vrc.train, vrc.data, vrc.backbone, vrc.adapter) == (quick.train, quick.data,
                                                               quick.backbone, quick.adapter)
    assert list(vrc.model.rate_lambdas) == list(TASK_RATE_LAMBDAS["semseg"])
    assert set(TASK_RATE_LAMBDAS) == set(TASK_LAMBDAS)
    for task, anchors in TASK_RATE_LAMBDAS.items():
        assert len(anchors) == 4 and list(anchors) == sorted(set(anchors)), task
    # where a rule chose anchors on validation scenes, the package has that choice
    chosen = sorted((ROOT / "benchmarks" / "results").glob("ladders_val_candidates_*.json"))
    assert {p.stem.split("candidates_", 1)[1] for p in chosen} >= {
        "semseg", "depth", "normals", "human_parts", "saliency", "boundary"}
    for path in chosen:
        for task, r in json.loads(path.read_text())["summary"].items():
            assert list(TASK_RATE_LAMBDAS[task]) == r["choice"]["anchors"], (task, path.name)
    # the README's six-task table reports the package's anchors, at every budget
    six = json.loads((ROOT / "benchmarks" / "results" / "summary" / "rate_six.json").read_text())
    assert len(six["anchors"]) == 6
    for row, used in six["anchors"].items():
        want = ", ".join(f"{a:g}" for a in TASK_RATE_LAMBDAS[row.split()[0]])
        assert set(used.values()) == {want}, (row, used)


# -- streams ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task,size,rate", [("semseg", (64, 64), 0.0), ("depth", (97, 130), 0.3),
                                            ("semseg", (64, 80), 0.5), ("depth", (64, 64), 1.0)])
def test_stream_decodes_to_the_eval_forward_at_its_rate(model, task, size, rate):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    data = coder.encode(model, x, task=task, rate=rate)
    out = coder.decode(model, data)  # the stream says the task and the rate
    with torch.no_grad():
        ref = model(x, task=task, rate=rate)
    assert data.rate == out.rate == ref.rate == vr.snap_rate(rate)
    assert torch.equal(out.y_hat, ref.y_hat)
    assert torch.equal(out.prediction, ref.prediction)
    assert data.sections.total == len(data) and data.sections.header <= 34


def test_the_stream_records_its_rate(model):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for rate in (0.0, 0.3, 2 / 3, 1.0):
        data = coder.encode(model, x, task="semseg", rate=rate)
        p = unpack(data)
        assert data[3] == VARIABLE_RATE_VERSION
        assert p.rate_code == vr.rate_code(rate) and p.rate == vr.snap_rate(rate)
        assert struct.unpack_from("<H", data, 17)[0] == p.rate_code  # after height and width
    # the same sections under another rate field decode at that rate: the field is what decides
    low, high = coder.encode(model, x, "semseg", rate=0.0), coder.encode(model, x, "semseg", rate=1.0)
    forged = pack(replace(unpack(low), rate_code=unpack(high).rate_code))
    assert coder.decode(model, forged).rate == 1.0
    assert not torch.equal(coder.decode(model, forged).y_hat, coder.decode(model, low).y_hat)


def test_container_rate_field_round_trips_and_is_checked():
    p = Packet("depth", bytes(range(8)), 48, 64, (b"z" * 8, b"a" * 8, b"b" * 8), 12345)
    data = pack(p)
    assert unpack(data) == p and len(data) == len(pack(replace(p, rate_code=None))) + 2
    assert pack(Packet("depth", bytes(8), 48, 64, (b"", b"", b"")))[3] == FORMAT_VERSION
    body = bytearray(data[:-4])
    body[17:19] = struct.pack("<H", vr.RATE_STEPS + 1)
    bad = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(BitstreamError, match="rate code"):
        unpack(bad)
    with pytest.raises(BitstreamError, match="rate code"):
        pack(Packet("depth", bytes(8), 48, 64, (b"", b"", b""), vr.RATE_STEPS + 1))
    short = data[:20]
    with pytest.raises(BitstreamError):
        unpack(short + struct.pack("<I", zlib.crc32(short)))


def test_streams_of_the_other_mode_are_refused(model, fixed):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(BitstreamError, match="fixed-rate stream"):
        coder.decode(model, coder.encode(fixed, x))
    with pytest.raises(BitstreamError, match="carries a rate"):
        coder.decode(fixed, coder.encode(model, x, "semseg", rate=0.5))


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan"), float("inf"), True, "0.5"])
def test_a_rate_outside_zero_one_is_refused_in_one_line(model, rate):
    x = torch.rand(1, 3, 64, 64)
    for call in (lambda: coder.encode(model, x, "semseg", rate=rate),
                 lambda: model.predict(x, "semseg", rate=rate)):
        with pytest.raises(ConfigError, match=r"outside the trained range \[0, 1\]") as e:
            call()
        assert "\n" not in str(e.value) and "lambda 0.25" in str(e.value)


def test_a_rate_given_to_a_per_lambda_model_is_refused_in_one_line(fixed):
    x = torch.rand(1, 3, 64, 64)
    for call in (lambda: coder.encode(fixed, x, rate=0.5), lambda: fixed.predict(x, rate=0.5),
                 lambda: evaluate_rates(fixed, [], "semseg", rates=3)):
        with pytest.raises(ConfigError, match="fixed rate") as e:
            call()
        assert "\n" not in str(e.value)
    assert not fixed.variable_rate and fixed.rate_lambdas == ()


def test_fixed_rate_models_have_no_rate_parameters(fixed, model):
    assert not any("q_scale" in k for k in fixed.task_state_dict("semseg"))
    state = model.task_state_dict("semseg")
    A, M = len(LAMBDAS), model.cfg.model.latent_channels
    assert state["head.q_scale_enc"].shape == state["head.q_scale_dec"].shape == (A, M, 1, 1)


# -- training ---------------------------------------------------------------------------------
def test_each_step_trains_one_anchor_with_its_lambda(tmp_path):
    cfg = tiny_config(*VR, "train.max_steps=1", "train.weight_decay=0", "data.val_length=1",
                      f"out_dir={tmp_path}")
    trainer = Trainer(cfg)
    anchors = [trainer.rate_anchor(s) for s in range(60)]
    assert anchors == [trainer.rate_anchor(s) for s in range(60)]  # a function of (seed, step)
    assert set(anchors) == {0, 1, 2}
    head = trainer.model.heads["semseg"]
    before = head.q_scale_enc.detach().clone(), head.q_scale_dec.detach().clone()
    values = trainer.train_step(0)
    k = anchors[0]
    assert values["lmbda"] == LAMBDAS[k] and values["rate"] == vr.anchor_rate(k, 3)
    for p, old in zip((head.q_scale_enc, head.q_scale_dec), before):
        changed = [not torch.equal(p[i], old[i]) for i in range(3)]
        assert changed == [i == k for i in range(3)]  # only the anchor trained gets a gradient
    fixed = Trainer(tiny_config("train.max_steps=1", "data.val_length=1",
                                f"out_dir={tmp_path / 'f'}"))
    assert fixed.rate_anchor(0) is None and fixed.train_step(0)["lmbda"] == fixed.cfg.lmbda


def test_briefly_trained_model_spends_more_bytes_at_higher_rates(trained):
    trainer, _ = trained
    results = evaluate_rates(trainer.model, trainer.val_set, "depth", rates=5, per_image=False)
    assert [r.rate for r in results] == vr.sweep(5)
    nbytes = [r.bpp for r in results]
    est = [r.bpp_estimated for r in results]
    # the lowest rates may share a floor: every element coded as its mean (lambda 0.01), and
    # the real bytes' header and three rANS flushes
    for curve in (nbytes, est):
        assert all(a <= b for a, b in zip(curve, curve[1:])) and curve[0] < curve[-1], curve
        assert curve[2] < curve[3] < curve[4], curve  # above the floor: strictly more
    # lambda 0.01 against 100: the top anchor is the better predictor (RMSE: lower)
    assert results[-1].value < 0.99 * results[0].value, ([r.value for r in results], nbytes, est)


def test_training_reports_every_anchor(trained):
    trainer, out = trained
    assert [r.rate for r in trainer.final_results] == vr.anchor_rates(3)
    lines = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert sorted(d["rate"] for d in lines if d["kind"] == "eval") == vr.anchor_rates(3)
    steps = [d for d in lines if d["kind"] == "step"]
    assert {d["lmbda"] for d in steps} == {0.01, 1.0, 100.0} and len(steps) == 60


# -- checkpoints, evaluation, CLI -------------------------------------------------------------
def test_checkpoint_loads_and_codes_at_any_rate(trained):
    trainer, out = trained
    model, _ = load_checkpoint(out)
    assert model.variable_rate and model.rate_lambdas == (0.01, 1.0, 100.0)
    x = trainer.val_set[0]["image"].unsqueeze(0)
    for rate in (0.0, 0.123, 0.5, 0.999, 1.0):
        data = coder.encode(model, x, "depth", rate=rate)
        assert torch.equal(coder.decode(model, data).prediction,
                           model.predict(x, "depth", rate=rate).prediction)
        # the reloaded task file codes exactly as the trained model
        assert bytes(data) == bytes(coder.encode(trainer.model, x, "depth", rate=rate))


def test_ra_curves_sweep_a_variable_rate_run(trained):
    _, out = trained
    pts = run_points(out, rates=3, max_images=2)  # one one-point curve per rate
    assert [p.points[0]["rate"] for p in pts] == [0.0, 0.5, 1.0]
    assert [p.points[0]["lmbda"] for p in pts] == [0.01, 1.0, 100.0]  # the anchors' lambdas
    assert pts[0].settings["variable_rate"] is True
    assert [p.bpp for p in run_points(out, rates=3, max_images=2)] == [p.bpp for p in pts]  # cached
    (curve,) = ra_curves([out], rates=3, max_images=2)["depth"]  # one run = one whole curve
    assert curve.name.endswith("variable-rate") and len(curve.bpp) == 3
    assert curve.bpp == sorted(curve.bpp) and curve.bpp_payload is not None
    single = evaluate(load_checkpoint(out)[0], [], "depth", rate=0.5)
    assert single.rate == 0.5 and single.images == 0


def test_cli_encode_decode_info_and_eval(trained, tmp_path, capsys):
    _, out = trained
    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    sizes = []
    for rate in ("0", "1"):
        f = tmp_path / f"r{rate}.icm"
        assert main(["encode", str(tmp_path / "in.png"), "--checkpoint", str(out),
                     "--rate", rate, "-o", str(f)]) == 0
        assert f"rate {float(rate):g}" in capsys.readouterr().out
        assert unpack(f.read_bytes()).rate == float(rate)
        sizes.append(f.stat().st_size)
        assert main(["decode", str(f), "--checkpoint", str(out), "-o", str(tmp_path / "dec")]) == 0
        assert f"at rate {float(rate):g}" in capsys.readouterr().out
        assert np.load(tmp_path / "dec" / f"r{rate}.depth.npy").shape == (1, 50, 70)
    assert sizes[0] < sizes[1]
    assert main(["encode", str(tmp_path / "in.png"), "--checkpoint", str(out), "--rate", "1.5",
                 "-o", str(tmp_path / "bad.icm")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ConfigError: rate=1.5 is outside")
    assert main(["eval", str(out), "--max-images", "1", "--rates", "3",
                 "--out", str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev" / "results-depth.json").read_text())
    assert len(doc["results"]["bpp"]) == 3 and sorted(p["rate"] for p in doc["points"]) == [0, .5, 1]
    capsys.readouterr()
    assert main(["info", "experiment=quick_vr"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variable_rate"] is True
    assert info["rate_range"] == {"rate": [0.0, 1.0], "lambdas": list(TASK_RATE_LAMBDAS["semseg"])}
    plain = model_info(["experiment=quick"])
    assert plain["variable_rate"] is False and plain["rate_range"] is None
    # 2 (A, M, 1, 1) scales per head: a few hundred parameters
    M = compose(("experiment=quick_vr",)).model.latent_channels
    assert info["head_params"] - plain["head_params"] == 2 * 4 * M


def test_demo_variable_rate_writes_a_curve_of_seven_points(tmp_path):
    from icm_core.studies.demo import run_demo

    run_demo(tmp_path, steps=2, variable_rate=True, val_images=1, size=64, eval_size=None,
             progress=False, extra_overrides=["data.workers=0", "backbone=tiny_random"])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["results"]["bpp"]) == len(doc["results"]["mIoU"]) == 7
    assert sorted(p["rate"] for p in doc["points"]) == vr.sweep(7)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["vr"]  # one training
    assert resolve_checkpoint_dir(tmp_path / "vr").is_dir()
    assert math.isfinite(doc["results"]["bpp"][0])


def test_icm_demo_defaults_to_one_variable_rate_model(tmp_path):
    """The interface: ``icm demo --task T --out DIR`` writes a CompressAI results.json of at
    least 5 points, all from one model."""
    out = tmp_path / "demo"
    assert main(["demo", "--task", "depth", "--out", str(out), "--steps", "1", "data.workers=0",
                 "data.size=[32,32]", "data.val_length=1", "backbone=tiny_random"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["results"]["bpp"]) == len(doc["results"]["RMSE"]) >= 5
    assert {p["run"] for p in doc["points"]} == {str(out / "vr")}
    assert "one variable-rate model" in doc["description"]

def test_fig5_rows_of_a_variable_rate_run_give_a_point_per_rate(trained):
    """The Ablation panel's rows: one per rate, each with the lambda its rate stands for."""
    from icm_core.studies import ablation as ab

    trainer, out = trained
    rows = ab.fig5_rows([out], max_images=1)
    assert sorted(r["rate"] for r in rows) == vr.sweep(DEFAULT_RATE_POINTS)
    counts = parameter_counts(trainer.model, "depth")
    for r in rows:
        assert r["lmbda"] == vr.lambda_at(r["rate"], [0.01, 1.0, 100.0])
        assert (r["trainable_params"], r["backbone_params"]) == (
            counts["trainable_backbone_params"], counts["backbone_params"])
