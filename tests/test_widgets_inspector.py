"""The inspector panel: drive its callbacks as a user would and check the values it shows."""

import dataclasses

import numpy as np
import pytest
import torch
from plotly.callbacks import Points

from icm_core.codec import coder
from icm_core.errors import ConfigError
from icm_core.inspection import image as ins
from icm_core.models.icm import build_model
from icm_core.training.checkpoint import save_checkpoint
from icm_core.viz import inspector as figs
from widgets.inspector import VIEWS, InspectorPanel

from .helpers import tiny_config

VR = ["model.variable_rate=true", "model.rate_lambdas=[0.25,1.0,4.0]"]


def _model(*overrides):
    m = build_model(tiny_config("tasks=[semseg,depth]", "data.size=[128,192]", *overrides))
    with torch.no_grad():
        for h in m.heads.values():
            h.proj.weight.mul_(40)  # real bits from an untrained entropy model
    return m


@pytest.fixture(scope="module")
def panel():
    return InspectorPanel().open(_model())


def test_predictions_view_shows_the_error_of_a_scene(panel):
    assert panel.task.options == ("semseg", "depth") and panel.insp.target is not None
    assert VIEWS[panel.tabs.selected_index] == "Predictions"
    i = panel.insp
    want = (i.prediction.argmax(0) != i.target).double().numpy()  # no ignore pixels in scenes
    shown = np.asarray(panel.pred_fig.data[-1].z, dtype=float)
    np.testing.assert_array_equal(shown, want)
    assert f"{want.mean():.4g}" in panel.pred_box.children[1].value
    panel.task.value = "depth"
    assert panel.insp.task == "depth"
    assert "absolute error" in panel.pred_fig.layout.annotations[4].text


def test_bits_view_shows_the_stream_sections_and_the_map(panel):
    panel.select_view("Bits")
    b = panel.insp.bits
    stream = coder.encode(panel.model, panel.insp.image, panel.insp.task)
    real = [bar.y[0] for bar in panel.sections_fig.data]
    assert sum(real) == len(stream) == b.total_bytes
    assert real == [b.header_bytes, b.z_bytes, b.step1_bytes, b.step2_bytes]
    est = sum(bar.y[1] for bar in panel.sections_fig.data)
    assert est * 8 == pytest.approx(stream.bits_y + stream.bits_z, rel=1e-5)
    z = np.asarray(panel.bits_fig.data[1].z, dtype=float)
    assert z.shape == (8, 12) and z.sum() == pytest.approx(stream.bits_y, rel=1e-5)
    panel.opacity.value = 0.25
    assert panel.bits_fig.data[1].opacity == 0.25
    panel.bits_which.value = "step2"
    z2 = np.asarray(panel.bits_fig.data[1].z, dtype=float)
    np.testing.assert_allclose(z2, b.step2_map.numpy(), rtol=1e-6)
    bars = panel.channels_fig.data[0]
    assert list(bars.x) == [str(c) for c in panel.insp.channel_order()]
    assert np.all(np.diff(np.asarray(bars.y)) <= 0)


def test_attention_click_selects_the_query(panel):
    panel.select_view("Attention")
    fig = panel.att_fig
    fig.data[1]._dispatch_on_click(Points(point_inds=[0], xs=[150.0], ys=[100.0], trace_name="",
                                          trace_index=1), None)
    q = panel.query
    assert panel.query_yx == (100.0, 150.0) and q.weights.shape == (2, 3)
    assert q.weights.sum() == pytest.approx(1, abs=1e-6)
    assert "sum 1.0000" in panel.att_text.value
    assert "alpha per stage 2: 0.100" in panel.att_text.value
    fig = panel.att_fig  # no browser drew the first one: the click built a new figure
    assert fig.data[1]._click_callbacks  # which answers clicks too
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float), q.over_image[::8, ::8])
    assert (fig.data[2].x[0], fig.data[2].y[0]) == (q.query_pixel[1], q.query_pixel[0])
    panel.head.value = 1
    panel.fused.value = False
    m = [a for a in panel.insp.attention if a.stage == 3][-1]
    raw = m.raw[0, 1, panel.query.query].double()
    np.testing.assert_allclose(panel.query.weights.ravel(), raw.softmax(0).numpy(), rtol=1e-6)
    panel.att_source.value = "backbone"
    panel.use_rollout.value = True
    q = panel.query
    assert q.weights.shape == (8, 12) and q.key_spacing == 16
    assert q.weights.sum() + q.prefix_weight == pytest.approx(1, abs=1e-6)
    assert "rollout" in panel.att_text.value


def test_attention_figure_changes_in_place_only_once_drawn(panel):
    """plotly's widget drops a figure's click handler when the figure changes while its view is
    still drawing (widgets/_figure.py): until the view reports its traces, a new query builds a
    new figure; afterwards the drawn figure is updated in place."""
    panel.select_view("Attention")
    first = panel.att_fig
    panel.select_query(20.0, 20.0)
    second = panel.att_fig
    assert second is not first and second.data[1]._click_callbacks
    second._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": -1}  # what a view sends
    q = panel.select_query(100.0, 150.0)
    assert panel.att_fig is second
    assert (second.data[2].x[0], second.data[2].y[0]) == (q.query_pixel[1], q.query_pixel[0])
    np.testing.assert_allclose(np.asarray(second.data[1].z, dtype=float), q.over_image[::8, ::8])


def test_latents_and_dora_views(panel):
    panel.select_view("Latents")
    order = panel.insp.channel_order()
    assert [v for _, v in panel.channel.options] == order
    panel.channel.value = order[1]
    i = panel.insp
    shown = {d.name: np.asarray(d.z, dtype=float) for d in panel.planes_fig.data}
    np.testing.assert_allclose(shown["bits"], i.element_bits[order[1]].numpy(), rtol=1e-6)
    np.testing.assert_allclose(shown["y_hat"], i.entropy.y_hat[0, order[1]].numpy())
    panel.select_view("DoRA")
    assert panel.layer.options[0] == "blocks.0.attn.q_proj"
    v = panel.dora
    np.testing.assert_allclose(np.asarray(panel.dora_fig.data[0].y), v.magnitude)
    np.testing.assert_allclose(np.asarray(panel.dora_fig.data[0].x), v.w0_norms)
    assert "DORA rank 8" in panel.dora_text.value
    panel.task_b.value = "semseg"
    assert "vs semseg: cosine of the two updates" in panel.dora_text.value


def test_open_a_sweep_run_and_move_the_lambda_slider(tmp_path, panel):
    model = panel.model  # lambda 4: the panel's model; lambda 0.5: other weights (another seed)
    cfg = model.cfg
    try:
        model.cfg = dataclasses.replace(cfg, lmbda=4.0)
        save_checkpoint(tmp_path / "l4.0", model, step=1)
    finally:
        model.cfg = cfg
    save_checkpoint(tmp_path / "l0.5", _model("lmbda=0.5", "train.seed=1"), step=1)
    p = InspectorPanel().open(tmp_path / "l4.0")
    assert [o[0] for o in p.lmbda.options] == ["0.5", "4"] and p.lmbda.value == 1
    assert not p.lmbda.disabled
    p.select_view("Bits")
    p.lmbda.value = 0
    other = ins.bit_allocation(ins.load_run(tmp_path / "l0.5"), p.insp.image, p.insp.task)
    assert [bar.y[0] for bar in p.sections_fig.data] == [other.header_bytes, other.z_bytes,
                                                         other.step1_bytes, other.step2_bytes]
    assert f"stream {other.total_bytes} bytes" in p.bits_text.value
    p.set_image(999)  # a scene that does not exist: said in the panel, nothing raised
    assert "DatasetError" in p.message.value


def test_fixed_rate_model_has_its_rate_slider_disabled_with_why(panel):
    assert panel.rate.disabled and panel.rate_value is None
    assert "one fixed rate" in panel.rate_note.value and "quick_vr" in panel.rate_note.value
    assert panel.lmbda.layout.display != "none"  # a per-lambda run moves along its sweep
    panel.select_view("Bits")
    assert panel.rate in panel.bits_box.children[0].children
    assert panel.rate_note in panel.bits_box.children
    assert panel.insp.rate is None and "at rate" not in panel.bits_text.value
    with pytest.raises(ConfigError, match="fixed rate"):
        ins.bit_allocation(panel.model, panel.insp.image, panel.insp.task, rate=0.5)


def test_rate_slider_recodes_a_variable_rate_model_at_that_rate():
    model = _model(*VR, "tasks=[depth]", "data.size=[64,64]")
    p = InspectorPanel().open(model)
    assert not p.rate.disabled and p.rate.value == 1.0
    assert p.lmbda.layout.display == "none" and p.lmbda.disabled  # the rate slider is the sweep
    assert "lambda 4 (0: lambda 0.25, 1: lambda 4)" in p.rate_note.value
    p.select_view("Bits")
    high = p.insp.bits
    assert high.rate == 1.0
    p.rate.value = 0.0  # what moving the slider does
    low, image = p.insp.bits, p.insp.image
    stream = coder.encode(model, image, "depth", rate=0.0)
    assert low.rate == p.insp.rate == 0.0 and low.total_bytes == len(stream)
    assert low.total_bytes < high.total_bytes  # a lower rate: fewer bytes
    assert [bar.y[0] for bar in p.sections_fig.data] == [low.header_bytes, low.z_bytes,
                                                         low.step1_bytes, low.step2_bytes]
    z = np.asarray(p.bits_fig.data[1].z, dtype=float)
    assert z.sum() == pytest.approx(stream.bits_y, rel=1e-5)
    assert f"stream at rate 0 {len(stream)} bytes" in p.bits_text.value
    assert f"{low.bpp:.4f} bpp at rate 0" in p.message.value
    assert low.bpp == 8 * len(stream) / (64 * 64)
    assert "lambda 0.25" in p.rate_note.value
    p.rate.value = 0.5  # between anchors; the other views code at the slider's rate too
    mid = ins.bit_allocation(model, image, "depth", rate=0.5)
    assert p.insp.bits == mid and len(coder.encode(model, image, "depth", rate=0.5)) == \
        mid.total_bytes
    assert low.total_bytes <= mid.total_bytes <= high.total_bytes
    p.select_view("Predictions")
    with torch.no_grad():
        ref = model.predict(image.unsqueeze(0), "depth", rate=0.5).prediction[0]
    torch.testing.assert_close(p.insp.prediction, ref.float(), rtol=1e-4, atol=1e-4)


def test_inspector_figures_are_library_code(panel):
    """The figures live in icm_core.viz.inspector (the panel only wires them): a bit map is
    cropped to the positions that cover the image, on the total map's colour scale."""
    b, image = panel.insp.bits, panel.insp.image
    h, w = b.valid_hw
    fig = figs.bits_figure(image, b, "step1", opacity=0.3)
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float), b.step1_map[:h, :w].numpy())
    assert fig.data[1].zmax == pytest.approx(float(b.bits_map[:h, :w].max()))
    assert fig.data[1].opacity == 0.3 and fig.data[1].dx == b.latent_stride
    with pytest.raises(ConfigError, match="choose one of"):
        figs.bits_figure(image, b, "step3")
    assert figs.error_caption(None, "abs error") == ""
    assert figs.error_caption(np.array([[1.0, np.nan], [3.0, 5.0]]), "abs error") == "mean abs error: 3"
