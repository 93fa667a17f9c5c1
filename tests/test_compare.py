"""``icm compare`` end to end on tiny runs: files, layouts, real rates, BD-rates, complexity."""

import csv
import importlib
import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import icm_core.baselines.jpeg_proxy as jpeg_proxy
import icm_core.evaluation.evaluate as ev
import icm_core.evaluation.score as sc
import icm_core.studies.compare as cmp
from icm_core.baselines.classical import available_codecs
from icm_core.baselines.jpeg_proxy import ProxyOutput
from icm_core.baselines.preprocessor import PreprocessorConfig, load_preprocessor
from icm_core.cli.main import main
from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.evaluation.accounting import component_flops, side_flops
from icm_core.evaluation.evaluate import EvalResult
from icm_core.evaluation.results import Curve, bd_rows, envelope, eval_curve, load_results
from icm_core.models.icm import build_model
from icm_core.studies.compare import (
    ANCHOR_KINDS,
    ENVELOPE,
    PREPROC_ENVELOPE,
    SMALL_LADDERS,
    compare,
)
from icm_core.tasks.metrics import make_metric
from icm_core.training.checkpoint import load_checkpoint
from icm_core.training.trainer import Trainer
from icm_core.viz.figures import MAX_SHOWN, comparison_figure
from tests.helpers import tiny_config

N, SIZE = 4, 64
CODECS, SCALES = ["jpeg", "webp"], [1.0, 0.5]
CLASSICAL = ["jpeg", "jpeg@0.5", "webp", "webp@0.5"]
PP = PreprocessorConfig(steps=2, batch_size=2, size=64, width=8, blocks=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models at 64 px gain nothing from a second thread; on a shared, loaded machine the
    two threads' synchronisation cost this file 10x its one-thread time."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _train(out, *overrides):
    Trainer(tiny_config("train.max_steps=3", "data.val_length=1", f"out_dir={out}", *overrides),
            device="cpu").fit(progress=False)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for lm in (0.1, 4):  # a folder of runs, as icm demo writes
        _train(root / "learned" / f"lmbda-{lm:g}", "task=depth", f"lmbda={lm}")
    _train(root / "semseg", "task=semseg")  # a task without baseline
    _train(root / "base", "task=depth", "model.compression=false")
    logs = []
    result = compare([root / "learned", root / "semseg"], [root / "base"], codecs=CODECS,
                     scales=SCALES, images=N, size=SIZE, out=root / "out", preprocessor="train",
                     preprocessor_config=PP, log=logs.append)
    return root, result, logs


def test_files_and_compressai_layout(setup):
    root, result, logs = setup
    out = root / "out"
    preproc = [f"preproc+{m}" for m in CLASSICAL]
    for name in ["learned", *CLASSICAL, *preproc, ENVELOPE, PREPROC_ENVELOPE]:
        doc = json.loads((out / f"{name}-depth.json").read_text())
        assert doc["name"] == name and doc["task"] == "depth" and doc["metric"] == "RMSE"
        assert doc["higher_is_better"] is False and doc["rate"] == "file"
        envelope_file = name in (ENVELOPE, PREPROC_ENVELOPE)
        assert set(doc["results"]) == ({"bpp", "RMSE"} if envelope_file else
                                       {"bpp", "bpp_payload", "RMSE"})
        if not envelope_file:  # the payload leaves out container bytes: never more
            assert all(p <= b for p, b in zip(doc["results"]["bpp_payload"], doc["results"]["bpp"]))
        else:  # the envelope counted the payload way has its own file
            pay = json.loads((out / f"{name}-depth-payload.json").read_text())
            assert pay["rate"] == "payload" and pay["results"]["bpp"]
        bpp = doc["results"]["bpp"]
        assert len(bpp) == len(doc["results"]["RMSE"]) and bpp == sorted(bpp)
        assert doc["uncompressed"] > 0
        back = load_results(out / f"{name}-depth.json")
        assert (back.name, back.task, back.metric, back.higher_is_better) == (name, "depth", "RMSE",
                                                                             False)
        assert back.bpp == bpp and back.values == doc["results"]["RMSE"]
    assert len(json.loads((out / "learned-depth.json").read_text())["results"]["bpp"]) == 2
    for name in CLASSICAL:
        pts = json.loads((out / f"{name}-depth.json").read_text())["points"]
        assert sorted(p["quality"] for p in pts) == sorted(SMALL_LADDERS[name.split("@")[0]])
    assert (out / "ra-depth.html").stat().st_size > 1000
    assert (out / "preproc-depth-jpeg.safetensors").is_file()  # one per (task, proxy): JPEG only
    assert not (out / "preproc-depth-webp.safetensors").exists()
    # semseg has a learned curve but no baseline: its pipelines are skipped, and said so
    assert (out / "learned-semseg.json").is_file() and not (out / "jpeg-semseg.json").exists()
    assert any("semseg" in s and "--baseline" in s for s in result.skipped)
    assert any(s in logs for s in result.skipped)


def test_classical_rate_is_file_bits_over_original_pixels(setup):
    root, _, _ = setup
    doc = json.loads((root / "out" / "jpeg@0.5-depth.json").read_text())
    i = [p["quality"] for p in doc["points"]].index(1)
    ds = SyntheticScenes("test", size=(SIZE, SIZE), tasks=["depth"], length=N)
    bits = 0
    for k in range(N):
        rgb = (ds[k]["image"].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        small = Image.fromarray(rgb).resize((SIZE // 2, SIZE // 2), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=1, optimize=True, subsampling="4:2:0")
        bits += 8 * len(buf.getvalue())
    assert doc["results"]["bpp"][i] == pytest.approx(bits / (N * SIZE * SIZE), rel=1e-12)


def test_bd_rate_csv_has_every_method_against_every_anchor(setup):
    root, result, _ = setup
    rows = list(csv.DictReader((root / "out" / "bd_rate.csv").read_text().splitlines()))
    assert list(rows[0]) == ["task", "method", "anchor", "rate", "bd_rate_percent", "metric_lo",
                             "metric_hi", "reason"]
    methods = {c.name for c in result.curves["depth"]}
    anchors = {*CLASSICAL, ENVELOPE, *(f"preproc+{m}" for m in CLASSICAL), PREPROC_ENVELOPE}
    triples = {(r["method"], r["anchor"], r["rate"]) for r in rows}
    assert triples == {(m, a, rate) for m in methods for a in anchors if m != a
                       for rate in ("file", "payload")}
    assert len(rows) == len(triples) and {r["task"] for r in rows} == {"depth"}
    # the payload leaves out container bytes: the payload envelope sits at lower rates
    env_pay, env_file = (result.curve("depth", ENVELOPE, r) for r in ("payload", "file"))
    assert env_pay.rate == "payload" and min(env_pay.bpp) < min(env_file.bpp)
    for r in rows:  # a number with its accuracy range, or no number and the reason
        if r["bd_rate_percent"]:
            assert not r["reason"] and float(r["metric_lo"]) <= float(r["metric_hi"])
        else:
            assert r["reason"] and not r["metric_lo"]
    # the envelope: classical points that no cheaper-or-equal classical point beats
    pts = [(b, v) for n in CLASSICAL for b, v in zip(result.curve("depth", n).bpp,
                                                      result.curve("depth", n).values)]
    env = result.curve("depth", ENVELOPE, "file")
    for b, v in zip(env.bpp, env.values):
        assert (b, v) in pts
        assert not any(b2 <= b and v2 < v for b2, v2 in pts)  # RMSE: lower is better
    front = [p for p in pts if not any(q[0] <= p[0] and q[1] < p[1] for q in pts)]
    assert min(env.bpp) == min(b for b, _ in front)
    # best-preproc is the same envelope over the pre-processor pipelines only
    pp_pts = {(b, v) for n in CLASSICAL for b, v in zip(result.curve("depth", f"preproc+{n}").bpp,
                                                         result.curve("depth", f"preproc+{n}").values)}
    pp_env = result.curve("depth", PREPROC_ENVELOPE, "file")
    assert set(zip(pp_env.bpp, pp_env.values)) <= pp_pts
    assert pp_env.kind == "envelope" and pp_env.bpp


def bd_rows_of(curves):
    """The rows ``compare`` writes for one task: every curve against every anchor kind."""
    return bd_rows(curves, [c for c in curves if c.kind in ANCHOR_KINDS])


def test_bd_rows_on_constructed_curves():
    bpp, rmse = [0.1, 0.2, 0.4, 0.8], [0.9, 0.7, 0.6, 0.55]
    a = Curve("jpeg", "depth", "RMSE", False, bpp, rmse, "classical")
    b = Curve("webp", "depth", "RMSE", False, [2 * x for x in bpp], rmse, "classical")
    learned = Curve("learned", "depth", "RMSE", False, [x / 2 for x in bpp], rmse, "learned")
    env = envelope([a, b, learned])
    assert env.bpp == bpp and env.values == rmse  # webp costs double everywhere: jpeg is best
    rows = {(r["method"], r["anchor"]): r for r in bd_rows_of([a, b, learned, env])}
    assert rows[("learned", ENVELOPE)]["bd_rate_percent"] == pytest.approx(-50.0, abs=1e-6)
    assert rows[("learned", "webp")]["bd_rate_percent"] == pytest.approx(-75.0, abs=1e-6)
    assert rows[("webp", "jpeg")]["bd_rate_percent"] == pytest.approx(100.0, abs=1e-6)
    assert (rows[("learned", "jpeg")]["metric_lo"], rows[("learned", "jpeg")]["metric_hi"]) == \
        (0.55, 0.9)
    assert ("learned", "learned") not in rows and ("jpeg", "learned") not in rows
    assert envelope([learned]) is None
    # the pre-processor is an anchor too: the learned codec against it, and its own envelope
    pp = Curve("preproc+jpeg", "depth", "RMSE", False, [0.8 * x for x in bpp], rmse, "preproc")
    pp_env = envelope([a, pp, learned], kind="preproc", name=PREPROC_ENVELOPE)
    assert (pp_env.name, pp_env.bpp) == (PREPROC_ENVELOPE, pp.bpp)
    rows = {(r["method"], r["anchor"]): r for r in bd_rows_of([a, pp, learned, env, pp_env])}
    assert rows[("learned", "preproc+jpeg")]["bd_rate_percent"] == pytest.approx(-37.5, abs=1e-6)
    assert rows[("learned", PREPROC_ENVELOPE)]["bd_rate_percent"] == pytest.approx(-37.5, abs=1e-6)
    assert rows[("preproc+jpeg", ENVELOPE)]["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-6)


def test_complexity_table_is_measured(setup):
    root, result, _ = setup
    rows = {(r["task"], r["method"]): r
            for r in csv.DictReader((root / "out" / "complexity.csv").read_text().splitlines())}
    assert json.loads((root / "out" / "complexity.json").read_text())[0]["method"] == "learned"
    learned = rows[("depth", "learned")]
    assert int(learned["timed_images"]) == N
    assert int(learned["encoder_flops"]) > 0 and int(learned["decoder_flops"]) > 0
    assert int(learned["parameters"]) > int(learned["trainable_parameters"]) > 0
    for name in CLASSICAL:
        r = rows[("depth", name)]
        assert r["encoder_flops"] == "" and "not applicable" in r["note"]
        assert int(r["timed_images"]) == N * len(SMALL_LADDERS[name.split("@")[0]])
        assert int(r["decoder_flops"]) > 0
    for r in rows.values():
        assert float(r["encode_ms"]) > 0 and float(r["decode_ms"]) > 0
    # pre-processor rows add its parameters (residual CNN: head, 1 block of 2 convs, tail)
    w = PP.width
    pp_params = (3 * w * 9 + w) + 2 * (w * w * 9 + w) + (w * 3 * 9 + 3)
    pre = rows[("depth", "preproc+jpeg")]
    assert int(pre["parameters"]) == int(rows[("depth", "jpeg")]["parameters"]) + pp_params
    assert int(pre["encoder_flops"]) > 0
    assert ("semseg", "learned") in rows and ("semseg", "jpeg") not in rows


def _forward_flops(model, task):
    """The whole eval forward, attention included (the fused CPU kernel is invisible to the
    counter)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.predict(torch.rand(1, 3, SIZE, SIZE), task=task)
    return counter.get_total_flops()


def test_model_flops_split_adds_up(setup):
    root, _, _ = setup
    base, _ = load_checkpoint(root / "base")  # no compression: the two sides are the forward
    f = side_flops(base, "depth", (SIZE, SIZE))
    assert f["encoder"] > 0 and f["decoder"] > 0
    assert f["encoder"] + f["decoder"] == _forward_flops(base, "depth")
    # with compression, the receiver runs the entropy model's hyper synthesis and spatial prior
    # again (the sender needs them to code): both sides = the forward + those networks
    learned, _ = load_checkpoint(root / "learned" / "lmbda-4")
    c, f = component_flops(learned, "depth", (SIZE, SIZE)), side_flops(learned, "depth", (SIZE, SIZE))
    # the forward adds the factorized prior's likelihood of z (not counted by convention): per
    # value of z, the lower and upper bound through compressai's 1-3-3-3-3-1 channel MLP
    n_z = learned.cfg.model.hyper_channels * 1 * 1  # z is (1, N, 1, 1) for a 64 x 64 image
    assert _forward_flops(learned, "depth") - c["total"] == 2 * 2 * (3 + 9 + 9 + 9 + 3) * n_z
    prior = f["decoder"] - c["decoder"]
    assert 0 < prior < c["entropy_model"]
    assert f["encoder"] == c["total"] - c["decoder"]
    assert f["encoder"] + f["decoder"] == c["total"] + prior


def test_cli_compare_with_a_saved_preprocessor(setup, tmp_path, capsys):
    root, _, _ = setup
    path = root / "out" / "preproc-depth-jpeg.safetensors"
    assert load_preprocessor(path).cfg == PP
    rc = main(["compare", str(root / "learned" / "lmbda-4"), "--baseline", str(root / "base"),
               "--codecs", "jpeg,webp", "--scales", "1", "--images", "2", "--size", "64",
               "--preprocessor", str(path), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0 and "bd_rate.csv" in printed
    assert f"--preprocessor {path} was trained through the jpeg proxy; it is used for webp" in printed
    doc = json.loads((tmp_path / "preproc+jpeg-depth.json").read_text())
    assert doc["kind"] == "preproc" and len(doc["results"]["bpp"]) == len(SMALL_LADDERS["jpeg"])
    # the one file is in front of every codec, and each pipeline records what trained it
    webp = json.loads((tmp_path / "preproc+webp-depth.json").read_text())
    assert {p["preprocessor_proxy"] for p in doc["points"] + webp["points"]} == {"jpeg"}
    assert "JPEG-trained pre-processor" in webp["description"]


def _pipeline_doc(out, name):
    return json.loads((out / f"{name}-depth.json").read_text())


def test_codecs_without_a_proxy_get_the_jpeg_trained_preprocessor_and_say_so(setup):
    root, _, logs = setup
    out = root / "out"
    for name in CLASSICAL:
        assert all("preprocessor_proxy" not in p for p in _pipeline_doc(out, name)["points"])
        doc = _pipeline_doc(out, f"preproc+{name}")
        assert {p["preprocessor_proxy"] for p in doc["points"]} == {"jpeg"}
        assert "after the JPEG-trained pre-processor" in doc["description"]
        said = "(trained through the jpeg proxy: webp has no differentiable proxy)"
        assert (said in doc["description"]) == name.startswith("webp")
    assert "depth: no differentiable proxy for webp: it gets the JPEG-trained pre-processor" in logs
    assert any(s.startswith("webp at scale 1: ") and s.endswith(
        "(and pre-processed by the JPEG-trained pre-processor)") for s in logs)


class _ToyProxy(torch.nn.Module):
    """A differentiable stand-in for a second codec: a blur, and bits for its detail."""

    def forward(self, image, quality):
        blurred = F.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
        bits = (image - blurred).abs().flatten(1).sum(1) * quality
        return ProxyOutput(blurred, bits)


def test_a_codec_with_a_proxy_gets_its_own_preprocessor(setup, tmp_path, monkeypatch):
    root, result, _ = setup
    monkeypatch.setitem(jpeg_proxy.PROXIES, "webp", _ToyProxy)
    calls, train = [], cmp.pre.train_preprocessor

    def spy(model, task, dataset, cfg, **kw):
        calls.append((task, cfg.codec))
        return train(model, task, dataset, cfg, **kw)

    monkeypatch.setattr(cmp.pre, "train_preprocessor", spy)
    logs = []
    args = dict(codecs=CODECS, scales=[1.0], images=N, size=SIZE, flops=False, log=logs.append)
    compare([root / "learned" / "lmbda-4"], [root / "base"], out=tmp_path / "a",
            preprocessor="train", preprocessor_config=PP, **args)
    assert calls == [("depth", "jpeg"), ("depth", "webp")]  # once per (task, proxy)
    assert load_preprocessor(tmp_path / "a" / "preproc-depth-webp.safetensors").cfg == replace(
        PP, codec="webp")
    webp = _pipeline_doc(tmp_path / "a", "preproc+webp")
    assert {p["preprocessor_proxy"] for p in webp["points"]} == {"webp"}
    assert "after the WEBP-trained pre-processor," in webp["description"]
    assert not any("no differentiable proxy" in s for s in logs)
    # the JPEG pipeline is the one the JPEG-only comparison measured, to the bit
    jpeg = _pipeline_doc(tmp_path / "a", "preproc+jpeg")
    alone = result.curve("depth", "preproc+jpeg")
    assert (jpeg["results"]["bpp"], jpeg["results"]["RMSE"]) == (alone.bpp, alone.values)
    # the folder it wrote gives each codec its own file back, training nothing
    compare([root / "learned" / "lmbda-4"], [root / "base"], out=tmp_path / "b",
            preprocessor=str(tmp_path / "a"), **args)
    assert len(calls) == 2
    for name in ("preproc+jpeg", "preproc+webp"):
        assert _pipeline_doc(tmp_path / "b", name)["results"] == _pipeline_doc(
            tmp_path / "a", name)["results"]
    # without its file, webp falls back to the JPEG one, and says so
    (tmp_path / "a" / "preproc-depth-webp.safetensors").unlink()
    logs.clear()
    compare([root / "learned" / "lmbda-4"], [root / "base"], out=tmp_path / "c",
            preprocessor=str(tmp_path / "a"), **args)
    assert {p["preprocessor_proxy"] for p in _pipeline_doc(tmp_path / "c", "preproc+webp")[
        "points"]} == {"jpeg"}
    assert any("has no preproc-depth-webp.safetensors: webp gets the JPEG-trained" in s
               for s in logs)


def test_a_folder_with_the_older_file_name_still_loads(setup, tmp_path):
    root, result, _ = setup
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(root / "out" / "preproc-depth-jpeg.safetensors", old / "preproc-depth.safetensors")
    run, base = [root / "learned" / "lmbda-4"], [root / "base"]
    r = compare(run, base, codecs=CODECS, scales=[1.0], images=N, size=SIZE, flops=False,
                out=tmp_path / "out", preprocessor=str(old), log=lambda s: None)
    for name in ("preproc+jpeg", "preproc+webp"):
        assert r.curve("depth", name).values == result.curve("depth", name).values
        assert {p["preprocessor_proxy"] for p in r.curve("depth", name).points} == {"jpeg"}
    with pytest.raises(ConfigError, match="no preproc-depth-jpeg.safetensors .nor "
                       "preproc-depth.safetensors. for the jpeg pipeline of depth"):
        compare(run, base, codecs=CODECS, scales=[1.0], images=N, size=SIZE, flops=False,
                out=tmp_path / "out", preprocessor=str(tmp_path / "out"), log=lambda s: None)


def test_errors_name_the_problem(setup, tmp_path, capsys):
    root, _, _ = setup
    learned, base = str(root / "learned"), str(root / "base")
    with pytest.raises(ConfigError, match="codec 'foo' is unknown.*jpeg"):
        compare([learned], [base], codecs=["foo"], out=tmp_path)
    with pytest.raises(ConfigError, match="scale=2.0"):
        compare([learned], [base], codecs=["jpeg"], scales=[2], out=tmp_path)
    if "vvc" not in available_codecs():  # asked for by name: an error that says what to install
        with pytest.raises(ConfigError, match="--codecs vvc: .*vvencapp.*available here"):
            compare([learned], [base], codecs=["vvc"], out=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        compare([str(tmp_path / "nope")], [base], out=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no checkpoint"):
        compare([str(tmp_path / "empty")], [base], out=tmp_path)
    with pytest.raises(ConfigError, match="nothing to compare"):
        compare([learned], [], codecs=["jpeg"], out=tmp_path)
    with pytest.raises(ConfigError, match="give it as --baseline"):
        compare([base], [base], codecs=["jpeg"], out=tmp_path)
    assert main(["compare", learned, "--baseline", base, "--codecs", "jpeg,bogus",
                 "--out", str(tmp_path)]) == 2
    assert "ConfigError: codec 'bogus' is unknown" in capsys.readouterr().err


def test_load_results_reads_icm_eval_files_and_refuses_others(tmp_path):
    rs = [EvalResult("depth", "RMSE", v, b, b, 8, False) for v, b in ((0.6, 0.2), (0.7, 0.1))]
    (tmp_path / "eval.json").write_text(json.dumps(eval_curve("run", "an icm eval file", rs).to_json()))
    c = load_results(tmp_path / "eval.json")
    assert (c.name, c.task, c.metric, c.higher_is_better) == ("run", "depth", "RMSE", False)
    assert c.bpp == [0.1, 0.2] and c.values == [0.7, 0.6] and c.uncompressed is None
    (tmp_path / "two.json").write_text(json.dumps(
        {"name": "x", "results": {"bpp": [0.1], "psnr-rgb": [30.0], "ms-ssim": [0.9]}}))
    assert load_results(tmp_path / "two.json", metric="ms-ssim").values == [0.9]
    with pytest.raises(ConfigError, match="choose one of"):
        load_results(tmp_path / "two.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json.*not JSON"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_results(tmp_path / "missing.json")


def test_boundary_thresholds_reach_every_method(monkeypatch, tmp_path):
    """``--boundary-thresholds`` becomes one metric option for boundary, used by the learned
    codec (``evaluate``), the baselines and every pipeline (``score``) alike."""
    seen = {}
    monkeypatch.setattr(importlib.import_module("icm_core.cli.main"), "compare", lambda *a, **k: seen.update(k) or
                        cmp.Comparison({}, [], [], [], tmp_path))
    assert main(["compare", str(tmp_path), "--boundary-thresholds", "19"]) == 0
    assert seen["metric_options"] == {"boundary": {"n_thresholds": 19}}
    assert main(["compare", str(tmp_path)]) == 0
    assert seen["metric_options"] is None  # the metric's own 99
    # score (baselines, pipelines) and evaluate (the learned codec) build their metric with it
    made = []

    def spy(task, **kw):
        made.append(kw.get("n_thresholds"))
        return make_metric(task, **kw)

    monkeypatch.setattr(sc, "make_metric", spy)
    monkeypatch.setattr(ev, "make_metric", spy)
    model = build_model(tiny_config("tasks=[boundary]")).eval()
    ds = SyntheticScenes("test", size=(48, 48), tasks=["boundary"], length=2)
    sc.score(model, "boundary", [ds[i]["image"] for i in range(2)],
              [ds[i]["boundary"] for i in range(2)], {"n_thresholds": 19})
    ev.evaluate(model, ds, "boundary", metric_options={"n_thresholds": 19})
    assert made and set(made) == {19}, made


def test_crowded_figures_show_the_learned_codec_and_the_envelopes():
    def curve(name, kind):
        return Curve(name, "depth", "RMSE", False, [0.1, 0.2], [1.0, 0.9], kind)

    few = [curve("learned", "learned"), curve("jpeg", "classical"), curve(ENVELOPE, "envelope")]
    assert all(t.visible in (None, True) for t in comparison_figure(few).data)
    many = [curve("learned", "learned"), curve(ENVELOPE, "envelope"),
            curve(PREPROC_ENVELOPE, "envelope")]
    many += [curve(f"jpeg@{i}", "classical") for i in range(MAX_SHOWN)]
    shown = {t.name for t in comparison_figure(many).data if t.visible in (None, True)}
    assert shown == {"learned", ENVELOPE, PREPROC_ENVELOPE}


# -- issue 21: held-out splits and seeds, rate counted two ways, photos without labels -------
def test_held_out_split_and_seed_pick_other_scenes_the_same_for_everyone():
    from icm_core.data.held_out import HeldOut

    def images(**kw):
        return [s["image"] for s in HeldOut(2, 32, ["depth"], **kw).samples]

    test0, again = images(split="test", seed=0), images(split="test", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(test0, again))  # same args: same scenes
    for other in (images(split="test", seed=7), images(split="val", seed=0)):
        assert not any(torch.equal(a, b) for a, b in zip(test0, other))
    with pytest.raises(ConfigError, match="split='train'"):
        HeldOut(2, 32, ["depth"], split="train")


def test_compare_scores_every_method_on_the_seed_it_is_given(setup, tmp_path, monkeypatch):
    """--seed reaches the held-out scenes, and the learned and classical methods see the same
    images (the dataset compare builds once is what both are scored on)."""
    root, _, _ = setup
    seen = []
    real_evaluate = cmp.evaluate_rates

    def spy(model, dataset, *a, **kw):
        seen.append(("learned", [dataset[i]["image"] for i in range(len(dataset))]))
        return real_evaluate(model, dataset, *a, **kw)

    real_code = cmp.code_images

    def spy_code(codec, images, q, s):
        seen.append(("classical", list(images)))
        return real_code(codec, images, q, s)

    monkeypatch.setattr(cmp, "evaluate_rates", spy)
    monkeypatch.setattr(cmp, "code_images", spy_code)
    compare([root / "learned"], [root / "base"], codecs=["jpeg"], scales=[1.0], images=2,
            size=SIZE, out=tmp_path / "o", flops=False, seed=7, log=lambda s: None)
    from icm_core.data.held_out import HeldOut
    want = HeldOut(2, SIZE, ["depth"], seed=7)
    learned = [x for k, x in seen if k == "learned"][0]
    classical = [x for k, x in seen if k == "classical"][0]
    assert all(torch.equal(a, b["image"]) for a, b in zip(learned, want.samples))
    assert [np.asarray(im).tobytes() for im in classical] == \
        [np.asarray(im).tobytes() for im in want.images]
    doc = json.loads((tmp_path / "o" / "learned-depth.json").read_text())
    assert "seed 7" in doc["description"] and "test scenes" in doc["description"]


def test_learned_payload_is_the_stream_less_its_header(setup):
    from icm_core.codec import coder
    from icm_core.data.held_out import HeldOut

    root, _, _ = setup
    model, _ = load_checkpoint(root / "learned" / "lmbda-4")
    ds = HeldOut(2, SIZE, ["depth"])
    res = ev.evaluate(model.eval(), ds, "depth", per_image=True)
    headers = [coder.encode(model, s["image"], "depth").sections.header for s in ds.samples]
    assert [r.bytes - r.payload_bytes for r in res.records] == headers
    assert res.bpp_payload == pytest.approx(res.bpp - 8 * sum(headers) / (2 * SIZE * SIZE))


def test_curve_at_rate_and_its_json_keep_both_counts(tmp_path):
    c = Curve("jpeg", "depth", "RMSE", False, [0.4, 0.2], [0.6, 0.7], "classical",
              bpp_payload=[0.1, 0.05])
    pay = c.at_rate("payload")
    assert pay.rate == "payload" and pay.bpp == [0.05, 0.1] and pay.values == [0.7, 0.6]
    assert c.at_rate("file") is c
    path = tmp_path / "c.json"
    path.write_text(json.dumps(c.to_json()))
    back = load_results(path)
    assert back.bpp == [0.2, 0.4] and back.bpp_payload == [0.05, 0.1] and back.rate == "file"
    with pytest.raises(ConfigError, match="no payload rates"):
        Curve("x", "depth", "RMSE", False, [0.1], [1.0]).at_rate("payload")
    with pytest.raises(ConfigError, match="rate='bits'"):
        c.at_rate("bits")
    with pytest.raises(ConfigError, match="count both the same way"):
        bd_rows([Curve("learned", "depth", "RMSE", False, [0.1, 0.2], [0.7, 0.6], "learned",
                       rate="payload")], [c])


def test_pseudo_labels_follow_the_task_kind():
    from icm_core.evaluation.score import pseudo_label

    probs = torch.tensor([[[0.2, 0.7]], [[0.8, 0.3]]])  # (C=2, 1, 2)
    assert pseudo_label("semseg", probs).tolist() == [[[1, 0]]]
    assert pseudo_label("saliency", torch.tensor([[[0.4, 0.6]]])).tolist() == [[[0.0, 1.0]]]
    depth = torch.tensor([[[1.5, 2.0]]])
    assert torch.equal(pseudo_label("depth", depth), depth)


def test_compare_on_a_folder_of_photos_scores_fidelity_to_the_baseline(setup, tmp_path):
    """data=folder: no labels, so the baseline's own predictions on the originals are the
    reference; the baseline then scores perfectly (RMSE 0) and bd_rate.csv is written."""
    root, _, _ = setup
    photos = tmp_path / "photos"
    photos.mkdir()
    g = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (48, 72, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    rc = main(["compare", str(root / "learned"), "--baseline", str(root / "base"),
               "data=folder", f"data.root={photos}", "--codecs", "jpeg", "--scales", "1",
               "--images", "2", "--size", str(SIZE), "--out", str(tmp_path / "o")])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "o" / "bd_rate.csv").read_text().splitlines()))
    assert {r["rate"] for r in rows} == {"file", "payload"}
    assert any(r["method"] == "learned" and r["anchor"] == ENVELOPE for r in rows)
    doc = json.loads((tmp_path / "o" / "learned-depth.json").read_text())
    assert doc["uncompressed"] == pytest.approx(0.0, abs=1e-6)  # itself is the reference
    assert "unlabelled" in doc["description"]
