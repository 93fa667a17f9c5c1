"""The paper's (InvPT's) evaluation and training conventions, on inputs where alternatives differ.

Every expected value comes from a numpy (or hand) reference written here from the formula.
"""

import math

import numpy as np
import pytest
import torch

from icm_core.models.decoder import (
    AttentionMaps,
    DownsampledAttention,
    TransformerDecoder,
    _interp_queries,
)
from icm_core.models.icm import build_model
from icm_core.tasks.metrics import make_metric
from icm_core.tasks.registry import TASKS

from .helpers import tiny_config


# -- saliency maxF: counts pooled over the dataset -------------------------------------------
def _f(p, r, b2=0.3):
    return (1 + b2) * p * r / (b2 * p + r) if p + r > 0 else 0.0


def test_maxf_pools_counts_over_the_dataset():
    big, small = np.zeros((64, 64)), np.zeros((64, 64))
    big[:32, :] = 1  # 2048 salient pixels, all found
    small[10, 10] = 1  # 1 salient pixel, missed: nothing predicted in this image
    preds = np.stack([big * 0.9, np.zeros((64, 64))])
    targets = np.stack([big, small])
    ths = np.arange(1, 20) / 20
    pooled, per_image = [], []
    for th in ths:
        b = preds >= th
        t = targets > 0.5
        tp, npred, nact = (b & t).sum(), b.sum(), t.sum()
        pooled.append(_f(tp / npred if npred else np.nan, tp / nact) if tp else 0.0)
        prec = [((bi & ti).sum() / bi.sum()) if bi.sum() else 0.0 for bi, ti in zip(b, t)]
        rec = [(bi & ti).sum() / ti.sum() for bi, ti in zip(b, t)]
        per_image.append(_f(np.mean(prec), np.mean(rec)))
    assert max(pooled) * 100 == pytest.approx(100 * _f(1.0, 2048 / 2049))  # ~99.98
    assert max(per_image) * 100 == pytest.approx(50.0)  # the other rule
    m = make_metric("saliency", dataset="pascal")
    m.update(torch.tensor(preds, dtype=torch.float32)[:, None], torch.tensor(targets)[:, None])
    assert m.compute() == pytest.approx(max(pooled) * 100, rel=1e-9)


def _maxf(pred, target, **options):
    m = make_metric("saliency", **options)
    m.update(torch.tensor([[pred]], dtype=torch.float32), torch.tensor([[target]]))
    return m.compute()


def test_maxf_thresholds_are_invpt_005_to_095_with_ge():
    t = [[1.0, 1.0, 0.0, 0.0]]
    assert _maxf([[0.5, 0.5, 0.49, 0.49]], t) == pytest.approx(100.0)  # 0.5 >= 0.5 splits them
    # no threshold in (0.96, 0.97] (a 0.01 grid would have one); none below 0.05
    assert _maxf([[0.97, 0.97, 0.96, 0.96]], t) == pytest.approx(100 * _f(0.5, 1.0))
    assert _maxf([[0.04, 0.04, 0.0, 0.0]], t) == 0.0


def test_maxf_can_reproduce_invpts_second_sigmoid():
    # InvPT's meter computes sigmoid(probability): 0.30 -> 0.574 and 0.27 -> 0.567, with no
    # threshold between them; on the probabilities themselves 0.30 splits them
    s = 1 / (1 + np.exp(-np.array([0.3, 0.27])))
    assert 0.55 < s[1] < s[0] < 0.6
    p, t = [[0.3, 0.3, 0.27, 0.27]], [[1.0, 1.0, 0.0, 0.0]]
    assert _maxf(p, t, invpt_sigmoid=True) == pytest.approx(100 * _f(0.5, 1.0))
    assert _maxf(p, t) == pytest.approx(100.0)


# -- mIoU over all classes -------------------------------------------------------------------
def test_miou_counts_an_absent_class_as_zero():
    target = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1, 2]])
    C = 3  # class 2 is never labelled; predicted once on an ignored pixel only
    ious = []
    valid = target != 255
    for c in range(C):
        tp = ((pred == c) & (target == c) & valid).sum()
        fp = ((pred == c) & (target != c) & valid).sum()
        fn = ((pred != c) & (target == c) & valid).sum()
        ious.append(tp / max(tp + fp + fn, 1e-8))
    assert ious[2] == 0
    m = make_metric("semseg", num_classes=C)
    m.update(torch.tensor(pred)[None], torch.tensor(target)[None])
    assert m.compute() == pytest.approx(100 * np.mean(ious))  # (1/2 + 2/3 + 0) / 3
    assert m.compute() != pytest.approx(100 * np.mean(ious[:2]))  # not the present-only mean


def test_miou_prediction_outside_the_classes_is_a_miss():
    m = make_metric("semseg", num_classes=2)
    m.update(torch.tensor([[[0, 7]]]), torch.tensor([[[0, 1]]]))
    assert m.compute() == pytest.approx(100 * (1.0 + 0.0) / 2)  # class 1 gets fn only


# -- depth RMSE ------------------------------------------------------------------------------
def test_rmse_clamps_nonpositive_predictions_and_pools_pixels():
    p1 = np.array([[-2.0, 0.0, 3.0]])
    t1 = np.array([[1.0, 2.0, 0.0]])  # last pixel invalid
    p2 = np.array([[1.0, 1.0, 1.0]])
    t2 = np.array([[4.0, 4.0, 2.0]])
    sq, n = 0.0, 0
    for p, t in ((p1, t1), (p2, t2)):
        v = t > 0
        pc = np.where(p <= 0, 1e-9, p)
        sq += ((pc - t)[v] ** 2).sum()
        n += v.sum()
    expected = math.sqrt(sq / n)
    per_image = np.mean([math.sqrt((((np.where(p <= 0, 1e-9, p) - t)[t > 0]) ** 2).mean())
                         for p, t in ((p1, t1), (p2, t2))])
    raw = math.sqrt((((p1 - t1)[t1 > 0] ** 2).sum() + ((p2 - t2)[t2 > 0] ** 2).sum()) / n)
    assert abs(expected - per_image) > 0.1 and abs(expected - raw) > 0.1
    m = make_metric("depth", dataset="nyud")
    for p, t in ((p1, t1), (p2, t2)):
        m.update(torch.tensor(p)[None, None], torch.tensor(t)[None, None])
    assert m.compute() == pytest.approx(expected, rel=1e-9)


# -- normals -------------------------------------------------------------------------------
def test_normals_loss_sums_channels_and_divides_by_valid_pixels():
    pred = torch.tensor([[[[3.0, 1.0, 5.0]], [[0.0, 0.0, 0.0]], [[4.0, 0.0, 0.0]]]])  # (1,3,1,3)
    target = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]]])
    # pixel 0: unit(3,0,4) = (.6, 0, .8) vs (0,0,1): |.6| + 0 + |.8 - 1| = 0.8
    # pixel 1: (1,0,0) vs (0,1,0): 1 + 1 + 0 = 2; pixel 2: target all zero, invalid
    assert TASKS["normals"].loss(pred, target).item() == pytest.approx((0.8 + 2.0) / 2)


def test_mean_angle_is_exact_at_small_angles():
    a = np.deg2rad(0.01)
    pred = torch.tensor([[[[math.sin(a)]], [[0.0]], [[math.cos(a)]]]], dtype=torch.float32)
    target = torch.tensor([[[[0.0]], [[0.0]], [[1.0]]]])
    m = make_metric("normals")
    m.update(pred, target)
    assert m.compute() == pytest.approx(0.01, rel=1e-3)  # acos of a float32 cosine gives 0


# -- boundary losses ---------------------------------------------------------------------------
def test_balanced_bce_matches_invpt_term_by_term():
    x = np.array([0.3, -1.2, 2.0, 0.0])
    y = np.array([1.0, 0.0, 0.5, 255.0])  # a soft label and an ignored pixel
    v = y != 255
    s = 1 / (1 + np.exp(-x[v]))
    w = 0.95
    ref = np.mean(-(w * y[v] * np.log(s) + (1 - w) * (1 - y[v]) * np.log(1 - s)))
    def as4d(a):
        return torch.tensor(a)[None, None, None]

    got = TASKS["boundary"].loss(as4d(x), as4d(y))
    assert got.item() == pytest.approx(ref, rel=1e-6)
    # saliency: w = fraction of negative (valid) pixels of the batch
    ys = np.array([1.0, 0.0, 0.0, 255.0])
    ws = 1 - ys[v].mean()
    ref_s = np.mean(-(ws * ys[v] * np.log(s) + (1 - ws) * (1 - ys[v]) * np.log(1 - s)))
    got_s = TASKS["saliency"].loss(as4d(x), as4d(ys))
    assert got_s.item() == pytest.approx(ref_s, rel=1e-6)


# -- boundary odsF -----------------------------------------------------------------------------
def _line(size, row, value=1.0, cols=(10, -10)):
    x = np.zeros((size, size))
    x[row, cols[0]:cols[1]] = value
    return x


def test_odsf_is_the_dataset_optimal_threshold_not_per_image():
    size = 128
    gt = _line(size, 60)
    pa = _line(size, 60, 0.95) + _line(size, 100, 0.45)  # true line sure, a false one at 0.45
    pb = _line(size, 60, 0.25)  # true line found only at low thresholds
    ths = np.arange(1, 10) / 10

    def counts(p, th):  # lines sit exactly on the truth or 40 px away: matches are overlaps
        b = p >= th
        return (b & (gt > 0)).sum(), b.sum(), (gt > 0).sum()

    def f(c):
        m, npred, ngt = c
        prec, rec = (m / npred if npred else 0.0), m / ngt
        return 2 * prec * rec / (prec + rec) if prec + rec else 0.0

    per_th = [f(np.add(counts(pa, th), counts(pb, th))) for th in ths]
    ods = max(per_th)
    ois = np.mean([max(f(counts(p, th)) for th in ths) for p in (pa, pb)])
    assert ods == pytest.approx(0.8) and ois == pytest.approx(1.0)
    # the reference pairs every overlapping pixel, as the fast matching does; SEISM's may leave
    # one unpaired (tests/test_boundary_match.py)
    m = make_metric("boundary", dataset="nyud", n_thresholds=9, matching="fast")
    m.update(torch.tensor(np.stack([pa, pb]), dtype=torch.float32)[:, None],
             torch.tensor(np.stack([gt, gt]))[:, None])
    assert m.compute() == pytest.approx(100 * ods)


def test_odsf_tolerance_nyud_0011_pascal_00075_of_the_diagonal():
    size = 256
    diag = math.hypot(size, size)
    assert 0.0075 * diag < 3 <= 0.011 * diag  # a 3-pixel offset: within NYUD's, not PASCAL's
    gt = torch.tensor(_line(size, 60))[None, None]
    pred = torch.tensor(_line(size, 63, 0.9))[None, None]
    scores = {}
    for dataset in ("nyud", "pascal"):
        m = make_metric("boundary", dataset=dataset, n_thresholds=3)
        m.update(pred, gt)
        scores[dataset] = m.compute()
    assert scores == {"nyud": pytest.approx(100.0), "pascal": pytest.approx(0.0)}


# -- rate: bits per unpadded pixel ---------------------------------------------------------------
def test_bpp_divides_by_the_unpadded_pixels():
    model = build_model(tiny_config("tasks=[semseg]")).eval()
    H, W = 80, 72  # padded to 128 x 128 inside
    with torch.no_grad():
        out = model(torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)))
    bits = sum(-np.log2(v.double().numpy()).reshape(2, -1).sum(1) for v in out.likelihoods.values())
    assert out.prediction.shape[-2:] == (H, W)
    np.testing.assert_allclose(out.bpp.double().numpy(), bits / (H * W), rtol=1e-5)


# -- DoRA ----------------------------------------------------------------------------------------
def test_peft_dora_layer_is_the_papers_reparameterization():
    cfg = tiny_config("tasks=[semseg]", "adapter.mode=dora", "adapter.rank=4", "adapter.alpha=8")
    model = build_model(cfg)
    name = next(n for n, _ in model.backbone.model.named_modules()
                if n.endswith("blocks.1.attn.v_proj"))
    layer = model.backbone.model.get_submodule(name)
    W0 = layer.base_layer.weight.detach().double()  # (out, in)
    b = layer.base_layer.bias.detach().double()
    A, B = layer.lora_A["semseg"].weight, layer.lora_B["semseg"].weight  # (r, in), (out, r)
    mag = layer.lora_magnitude_vector["semseg"].weight  # (out,)
    s = layer.scaling["semseg"]
    assert s == pytest.approx(2.0)
    assert mag.shape == (W0.shape[0],)
    # m starts at the per-output-unit (row) norms of W0; B starts at zero
    np.testing.assert_allclose(mag.detach().double().numpy(), np.linalg.norm(W0.numpy(), axis=1),
                               rtol=1e-6)
    assert torch.count_nonzero(B) == 0
    with torch.no_grad():
        B.copy_(0.05 * torch.randn(B.shape, generator=torch.Generator().manual_seed(1)))
        mag.mul_(torch.linspace(0.5, 1.5, mag.numel()))  # m away from the norms
    x = torch.randn(3, 5, W0.shape[1], generator=torch.Generator().manual_seed(2))
    r = torch.randn(3, 5, W0.shape[0], generator=torch.Generator().manual_seed(3))

    # reference: W' = m * V / ||V||_row, V = W0 + s B A; ||V|| a constant for the gradient
    A_, B_, m_ = (t.detach().double().clone().requires_grad_() for t in (A, B, mag))

    def reference(detach_norm: bool):
        V = W0 + s * B_ @ A_
        norm = V.norm(dim=1, keepdim=True)
        Wp = m_[:, None] * V / (norm.detach() if detach_norm else norm)
        return x.double() @ Wp.T + b

    y_ref = reference(True)
    y = layer(x)
    np.testing.assert_allclose(y.detach().double().numpy(), y_ref.detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    (y.double() * r).sum().backward()
    (y_ref * r.double()).sum().backward()
    for got, want in ((A.grad, A_.grad), (B.grad, B_.grad), (mag.grad, m_.grad)):
        np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-3, atol=1e-5)
    # the test tells the two apart: with the norm in the graph, B's gradient differs
    A_.grad = B_.grad = m_.grad = None
    (reference(False) * r.double()).sum().backward()
    assert not torch.allclose(B.grad.double(), B_.grad, rtol=1e-3, atol=1e-5)


# -- cross-scale attention fusion ---------------------------------------------------------------
def _bilinear_2x(n: int) -> np.ndarray:
    """(2n, n) weights of 2x bilinear upsampling, half-pixel centres, edge-clamped."""
    U = np.zeros((2 * n, n))
    for o in range(2 * n):
        src = max((o + 0.5) / 2 - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1, lam = min(i0 + 1, n - 1), src - i0
        U[o, i0] += 1 - lam
        U[o, i1] += lam
    return U


def test_interp_queries_upsamples_over_the_query_grid_only():
    h, w, heads, nk = 3, 5, 2, 4  # non-square grid and several keys/heads to catch mix-ups
    scores = torch.zeros(1, heads, h * w, nk)
    qi, qj = 1, 3
    scores[0, 0, qi * w + qj, 2] = 1.0  # head 0, key 2, query (1, 3) only
    scores[0, 1, 0, 1] = -2.0  # head 1, key 1, query (0, 0)
    out = _interp_queries(AttentionMaps(scores, (h, w), (1, nk)), (2 * h, 2 * w)).numpy()
    assert out.shape == (1, heads, 4 * h * w, nk)
    Uh, Uw = _bilinear_2x(h), _bilinear_2x(w)
    for hd in range(heads):
        for k in range(nk):
            grid = scores[0, hd, :, k].numpy().reshape(h, w)
            ref = (Uh @ grid @ Uw.T).reshape(-1)
            np.testing.assert_allclose(out[0, hd, :, k], ref, atol=1e-6)
    lands = out[0, 0, :, 2].reshape(2 * h, 2 * w)
    peak = np.argwhere(lands == lands.max())
    assert {tuple(p) for p in peak} == {(2 * qi + a, 2 * qj + b) for a in (0, 1) for b in (0, 1)}
    assert np.count_nonzero(out[0, 0, :, [0, 1, 3]]) == 0 and np.count_nonzero(out[0, 1, :, 2]) == 0


def test_fusion_adds_alpha_times_the_interpolated_scores_in_the_block():
    torch.manual_seed(0)
    attn = DownsampledAttention(dim=8, heads=2, q_stride=2, kv_stride=8).eval()
    x = torch.randn(1, 8, 16, 24)  # queries 8 x 12, keys 2 x 3
    prev_scores = torch.zeros(1, 2, 4 * 6, 6)
    prev_scores[0, 1, 2 * 6 + 5, 4] = 3.0  # previous stage: query (2, 5) of a 4 x 6 grid, key 4
    prev = AttentionMaps(prev_scores, (4, 6), (2, 3))
    alpha = torch.tensor(0.7)
    with torch.no_grad():
        plain, maps0 = attn(x)
        fused, maps1 = attn(x, prev, alpha)
        zero, _ = attn(x, prev, torch.tensor(0.0))
    torch.testing.assert_close(zero, plain, rtol=1e-5, atol=1e-6)  # alpha = 0 is no fusion
    delta = (maps1.scores - maps0.scores).numpy()
    ref = (_bilinear_2x(4) @ prev_scores[0, 1, :, 4].numpy().reshape(4, 6) @ _bilinear_2x(6).T)
    np.testing.assert_allclose(delta[0, 1, :, 4], 0.7 * ref.reshape(-1), atol=1e-5)
    delta[0, 1, :, 4] = 0
    np.testing.assert_allclose(delta, 0, atol=1e-5)
    assert not torch.allclose(fused, plain)


def test_decoder_with_zero_alpha_equals_decoder_without_fusion():
    torch.manual_seed(0)
    dec = TransformerDecoder(8, 3, dims=[16, 16, 8], depths=[1, 1, 1], heads=2).eval()
    y = torch.randn(1, 8, 4, 6)
    with torch.no_grad():
        fused = dec(y, (64, 96)).prediction  # alpha 0.1 at init
        for stage in dec.stages[1:]:
            stage.alpha.zero_()
        with_zero = dec(y, (64, 96)).prediction
        for stage in dec.stages[1:]:
            stage.alpha = None  # no fusion at all
        without = dec(y, (64, 96)).prediction
    torch.testing.assert_close(with_zero, without, rtol=1e-5, atol=1e-6)  # sdpa vs softmax: ulps
    assert not torch.allclose(fused, without)  # the keys match, so fusion did act at alpha 0.1


# -- multi-task training: a step of one task leaves the other alone ----------------------------
def test_a_step_of_one_task_leaves_the_other_tasks_weights_bit_identical(tmp_path):
    from icm_core.training.trainer import Trainer

    cfg = tiny_config("tasks=[semseg,depth]", "train.batch_size=2", "train.weight_decay=0.01",
                      "data.val_length=2", f"out_dir={tmp_path}")
    trainer = Trainer(cfg, device="cpu")
    model = trainer.model
    for step in range(4):  # semseg, depth, semseg, depth: both have Adam state now
        trainer.train_step(step)
    states = trainer.optimizer.state
    for task in ("semseg", "depth"):
        own = [p for n, p in model.named_parameters() if f".{task}." in n or f"heads.{task}." in n]
        assert own and all(p in states for p in own), task
    for step, active, other in ((4, "semseg", "depth"), (5, "depth", "semseg")):
        before = model.task_state_dict(other)
        mine = model.task_state_dict(active)
        trainer.train_step(step)
        after = model.task_state_dict(other)
        assert before.keys() == after.keys()
        for k in before:
            assert torch.equal(before[k], after[k]), (other, k)
        moved = model.task_state_dict(active)
        assert any(not torch.equal(mine[k], moved[k]) for k in mine), active
