"""One rate-accuracy curve type: CompressAI JSON in and out, runs grouped into curves, the one
BD-rate table; the one FLOP counter; the one PIL <-> tensor; the held-out scenes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from icm_core.config import load_config
from icm_core.data.held_out import HeldOut
from icm_core.data.images import image_to_uint8, pil_to_tensor, tensor_to_pil
from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.evaluation.accounting import count_flops, decoder_cost, decoder_gflops
from icm_core.evaluation.bdrate import bd_rate
from icm_core.evaluation.evaluate import EvalResult
from icm_core.evaluation.results import (
    NO_RATE,
    Curve,
    bd_rows,
    eval_curve,
    group_runs,
    load_results,
    results_csv,
    run_settings,
    sweep_key,
    write_results,
)
from icm_core.models.icm import build_model

from .helpers import TINY


def _run_point(run, lmbda, bpp, value, **settings):
    s = {"name": "x", "adapter": "dora", "rank": 4, "targets": ["q", "v"], "lmbda": lmbda,
         "decoder": "low", "steps": 10, **settings}
    return Curve(run, "depth", "RMSE", False, [bpp], [value], "learned",
                 points=[{"run": run, "lmbda": lmbda}], settings=s, bpp_estimated=[bpp],
                 images=4)


def test_a_curve_round_trips_through_compressai_json(tmp_path):
    c = Curve("m", "depth", "RMSE", False, [0.4, None, 0.1], [0.5, 0.9, 0.7], "classical", "d",
              0.3, [{"quality": 30, "scale": 0.5}, {"quality": 1}, {"quality": 90}],
              bpp_estimated=[0.41, None, 0.11], images=3)
    doc = write_results(tmp_path / "m.json", tmp_path / "m.csv", c)
    # CompressAI's layout, points by rate (no rate first, as CompressAI's tools sort)
    assert doc["results"] == {"bpp": [None, 0.1, 0.4], "bpp_estimated": [None, 0.11, 0.41],
                              "RMSE": [0.9, 0.7, 0.5]}
    assert [p["quality"] for p in doc["points"]] == [1, 90, 30] and doc["images"] == 3
    assert json.loads((tmp_path / "m.json").read_text()) == doc
    back = load_results(tmp_path / "m.json")
    assert (back.name, back.kind, back.uncompressed, back.source) == ("m", "classical", 0.3,
                                                                      str(tmp_path / "m.json"))
    assert (back.bpp, back.values, back.bpp_estimated) == (doc["results"]["bpp"],
                                                          doc["results"]["RMSE"],
                                                          doc["results"]["bpp_estimated"])
    assert back.texts == ["quality=1", "quality=90", "quality=30 scale=0.5"]
    # the CSV keeps the curve's own order, one row per point
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "task,metric,value,bpp,bpp_estimated,images"
    assert rows[1:] == ["depth,RMSE,0.5,0.4,0.41,3", "depth,RMSE,0.9,,,3",
                        "depth,RMSE,0.7,0.1,0.11,3"]
    # a compare curve writes exactly compare's keys: no optional field it does not have
    plain = Curve("jpeg", "depth", "RMSE", False, [0.2, 0.1], [0.6, 0.7], "classical")
    assert list(plain.to_json()) == ["name", "description", "task", "metric", "higher_is_better",
                                     "kind", "uncompressed", "rate", "results", "points"]
    assert list(plain.to_json()["results"]) == ["bpp", "RMSE"]


def test_eval_results_become_one_curve_and_mixed_tasks_are_refused():
    rs = [EvalResult("semseg", "mIoU", v, b, b * 1.1, 8, True) for v, b in ((40.0, 0.2), (30.0, 0.1))]
    c = eval_curve("demo", "two lambdas", rs, points=[{"lmbda": 4.0}, {"lmbda": 1.0}])
    assert (c.task, c.metric, c.higher_is_better, c.images, c.kind) == ("semseg", "mIoU", True, 8,
                                                                       "learned")
    assert c.bpp == [0.2, 0.1] and c.texts == ["λ=4", "λ=1"]
    assert results_csv(c).splitlines()[1] == f"semseg,mIoU,40.0,0.2,{0.2 * 1.1},8"
    with pytest.raises(ConfigError, match="mix semseg/mIoU with depth/RMSE"):
        eval_curve("bad", "", [rs[0], EvalResult("depth", "RMSE", 0.5, 0.1, 0.1, 8, False)])
    with pytest.raises(ConfigError, match="no evaluation"):
        eval_curve("empty", "", [])


def test_runs_that_differ_only_in_lambda_are_one_curve_named_by_what_differs():
    pts = [_run_point("a", 1.0, 0.2, 0.6), _run_point("b", 0.1, 0.1, 0.8),
           _run_point("c", 1.0, 0.3, 0.5, steps=20), _run_point("f", 1.0, 0.25, 0.7,
                                                              adapter="fixed", rank=None)]
    curves = {c.name: c for c in group_runs(pts)}
    assert set(curves) == {"dora r4 qv (steps=10)", "dora r4 qv (steps=20)", "fixed"}
    ten = curves["dora r4 qv (steps=10)"]
    assert (ten.bpp, ten.values, ten.lmbdas, ten.runs) == ([0.1, 0.2], [0.8, 0.6], [0.1, 1.0],
                                                           ["b", "a"])
    assert ten.texts == ["λ=0.1", "λ=1"] and "lmbda" not in ten.settings
    assert ten.bpp_estimated == [0.1, 0.2] and ten.images == 4


def test_run_settings_tell_runs_apart_and_a_sweep_shares_all_but_lambda():
    a = run_settings(load_config([*TINY, "lmbda=0.5", "adapter.rank=4"]))
    b = run_settings(load_config([*TINY, "lmbda=2", "adapter.rank=4"]))
    assert a["lmbda"] == 0.5 and a["rank"] == 4 and a["tasks"] == ["semseg"]
    assert sweep_key(a) == sweep_key(b) and a != b
    fixed = run_settings(load_config([*TINY, "adapter=fixed"]))
    assert (fixed["adapter"], fixed["rank"], fixed["alpha"], fixed["targets"]) == ("fixed", None,
                                                                                  None, None)


def test_the_bd_rate_table_compares_every_curve_with_every_anchor_of_its_task():
    bpp, rmse = [0.1, 0.2, 0.4], [0.9, 0.7, 0.6]
    jpeg = Curve("jpeg", "depth", "RMSE", False, bpp, rmse, "classical")
    learned = Curve("learned", "depth", "RMSE", False, [b / 2 for b in bpp], rmse, "learned")
    flat = Curve("uncompressed", "depth", "RMSE", False, [None], [0.5])
    other = Curve("jpeg", "semseg", "mIoU", True, bpp, [30.0, 40.0, 45.0], "classical")
    rows = bd_rows([jpeg, learned, flat, other], [jpeg, other])
    assert [(r["task"], r["method"], r["anchor"]) for r in rows] == [
        ("depth", "learned", "jpeg"), ("depth", "uncompressed", "jpeg")]  # never against itself
    want = bd_rate((bpp, rmse), ([b / 2 for b in bpp], rmse), False)
    assert rows[0]["bd_rate_percent"] == pytest.approx(-50.0) == pytest.approx(want.value)
    assert (rows[0]["metric_lo"], rows[0]["metric_hi"], rows[0]["reason"]) == (0.6, 0.9, "")
    assert (rows[1]["bd_rate_percent"], rows[1]["reason"]) == (None, NO_RATE)


def test_one_flop_counter_for_models_and_the_setup_readout():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.zeros(1, 3, 10, 10)
    flops, out = count_flops(lambda: conv(x))
    assert flops == 2 * 8 * 3 * 9 * 100 and out.shape == (1, 8, 10, 10)
    cfg = load_config([*TINY, "data.size=[64,64]"])
    dec = build_model(cfg).heads["semseg"].decoder
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        dec(torch.zeros(1, 16, 4, 4), (64, 64))
    cost = decoder_cost(cfg)
    assert cost["gflops"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-12)
    assert cost["params"] == sum(p.numel() for p in dec.parameters())
    assert decoder_gflops(cfg, (50, 60)) == cost["gflops"]  # padded as the model pads


def test_pil_to_tensor_is_the_one_conversion_and_tensor_to_pil_its_inverse():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = pil_to_tensor(Image.fromarray(rgb))
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert np.array_equal(np.asarray(tensor_to_pil(x)), rgb) and np.array_equal(image_to_uint8(x), rgb)
    # 16-bit grayscale keeps its depth (Pillow's own RGB conversion would clip it at 255)
    gray = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert gray.mode.startswith("I;16")
    assert pil_to_tensor(gray)[0, 0].tolist() == pytest.approx([0.0, 32768 / 65535, 1.0])


def test_held_out_scenes_are_the_test_split_rendered_once():
    ds = HeldOut(2, 32, ["depth"])
    ref = SyntheticScenes("test", size=(32, 32), tasks=["depth"], length=2)
    assert len(ds) == 2 and ds.size == (32, 32) and ds.pixels == 2 * 32 * 32
    assert torch.equal(ds[1]["image"], ref[1]["image"])
    assert np.array_equal(np.asarray(ds.images[1]), image_to_uint8(ref[1]["image"]))
    with pytest.raises(ConfigError, match="images=0"):
        HeldOut(0, 32, ["depth"])


def test_count_flops_sees_attention_on_real_cpu_tensors():
    """The fused CPU attention kernel is invisible to FlopCounterMode; count_flops must still
    count the two products: 2 x (2 * B * heads * L * L * d) FLOPs, as on the meta device."""
    import torch.nn.functional as F

    q = torch.rand(1, 2, 16, 8)
    flops, _ = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 1 * 2 * 16 * 16 * 8)
