import math

import pytest
import torch

from icm_core import ConfigError
from icm_core.tasks.metrics import make_metric, match_boundaries


def test_miou_hand_computed_and_logits():
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    m = make_metric("semseg", num_classes=2)
    m.update(pred, target)
    assert m.compute() == pytest.approx((1 / 2 + 2 / 3) / 2 * 100)
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    m2 = make_metric("semseg", num_classes=2)
    m2.update(logits, target)
    assert m2.compute() == m.compute()


def test_miou_perfect_ignore_and_empty():
    t = torch.tensor([[[0, 1, 2, 255]]])
    m = make_metric("semseg", num_classes=3)
    m.update(torch.tensor([[[0, 1, 2, 0]]]), t)
    assert m.compute() == 100.0
    empty = make_metric("semseg", num_classes=3)
    empty.update(torch.zeros(1, 1, 4, dtype=torch.long), torch.full((1, 1, 4), 255))
    assert math.isnan(empty.compute())
    with pytest.raises(ConfigError, match="label 7 outside"):
        make_metric("semseg", num_classes=3).update(t * 0, torch.tensor([[[7, 0, 0, 0]]]))


def test_rmse_is_dataset_level_over_valid_pixels():
    m = make_metric("depth")
    m.update(torch.tensor([[[[1.0, 5.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))  # one valid, err 1
    m.update(torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[[3.0, 3.0]]]]))  # two valid, err 2
    assert m.compute() == pytest.approx(math.sqrt((1 + 4 + 4) / 3))


def test_normals_angles():
    t = torch.zeros(1, 3, 1, 4)
    t[0, 2, 0, :3] = 1.0  # last pixel invalid
    p = torch.zeros(1, 3, 1, 4)
    p[0, 2, 0, 0] = 7.0  # same direction, other length: 0 deg
    p[0, 0, 0, 1] = 1.0  # perpendicular: 90 deg
    p[0, 2, 0, 2] = -1.0  # opposite: 180 deg
    p[0, 0, 0, 3] = 1.0
    m = make_metric("normals")
    m.update(p, t)
    assert m.compute() == pytest.approx(90.0, abs=1e-3)
    invalid = make_metric("normals")
    invalid.update(p, torch.zeros_like(t))
    assert math.isnan(invalid.compute())


def test_maxf_perfect_empty_and_hand_case():
    t = torch.zeros(1, 1, 2, 2)
    t[0, 0, 0, :] = 1
    perfect = make_metric("saliency")
    perfect.update(t.clone(), t)
    assert perfect.compute() == pytest.approx(100.0)
    empty = make_metric("saliency")
    empty.update(torch.zeros_like(t), t)
    assert empty.compute() == 0.0
    # everything predicted foreground: precision 1/2, recall 1
    allfg = make_metric("saliency")
    allfg.update(torch.ones_like(t), t)
    assert allfg.compute() == pytest.approx(1.3 * 0.5 / (0.3 * 0.5 + 1) * 100)


def _line(size, row):
    x = torch.zeros(1, 1, size, size)
    x[0, 0, row, 10:-10] = 1.0
    return x


def test_odsf_perfect_offset_and_far():
    gt = _line(128, 60)  # tolerance 0.011 * diag = 1.99 px
    for pred, expected in ((_line(128, 60), 100.0), (_line(128, 61), 100.0), (_line(128, 66), 0.0)):
        # the fast matching pairs every pixel of identical lines; SEISM's may leave one unpaired
        # (tests/test_boundary_match.py)
        m = make_metric("boundary", dataset="nyud", n_thresholds=5, matching="fast")
        m.update(pred * 0.9, gt)
        assert m.compute() == pytest.approx(expected), expected
    empty = make_metric("boundary", n_thresholds=5)
    empty.update(torch.zeros(1, 1, 128, 128), gt)
    assert empty.compute() == 0.0


def test_odsf_thins_thick_predictions_and_matches_one_to_one():
    gt = _line(128, 60)
    thick = torch.zeros_like(gt)
    thick[0, 0, 58:63, 10:-10] = 0.8  # a 5-pixel band thins to a line
    m = make_metric("boundary", n_thresholds=3)
    m.update(thick, gt)
    assert m.compute() > 95
    a = torch.zeros(5, 5, dtype=torch.bool)
    b = torch.zeros(5, 5, dtype=torch.bool)
    a[2, 1] = a[2, 3] = True
    b[2, 2] = True
    assert match_boundaries(a.numpy(), b.numpy(), 1.5) == (1, 1)


def test_odsf_ignores_255():
    gt = _line(128, 60)
    gt[0, 0, 100:, :] = 255
    pred = _line(128, 60)
    pred[0, 0, 110, :] = 1.0  # a false line inside the ignored region does not count
    m = make_metric("boundary", n_thresholds=3, matching="fast")
    m.update(pred, gt)
    assert m.compute() == pytest.approx(100.0)


def test_odsf_at_19_thresholds_is_the_99_threshold_count_at_every_fifth():
    """The benchmarks' fast odsF (19 thresholds, 0.05 steps) counts exactly what the BSDS 99
    count at 0.05, 0.10, ..., 0.95, so it is the 99-threshold F maximised over that subset."""
    g = torch.Generator().manual_seed(3)
    gt = _line(64, 30)
    gt[0, 0, 10:50, 20] = 1.0
    pred = (0.6 * gt + 0.5 * torch.rand(gt.shape, generator=g)).clamp(0, 1)
    m99, m19 = make_metric("boundary", n_thresholds=99), make_metric("boundary", n_thresholds=19)
    m99.update(pred, gt)
    m19.update(pred, gt)
    assert (m19.counts == m99.counts[4::5]).all()
    assert m19.compute() <= m99.compute()
    with pytest.raises(ConfigError, match="n_thresholds"):
        make_metric("boundary", n_thresholds=0)


@pytest.mark.parametrize("task", ["semseg", "depth", "normals", "saliency", "boundary"])
def test_dataset_metrics_do_not_depend_on_image_order(task):
    g = torch.Generator().manual_seed(1)
    B, H, W = 4, 48, 48
    if task == "semseg":
        pred, target = torch.randn(B, 5, H, W, generator=g), torch.randint(0, 5, (B, H, W), generator=g)
    elif task == "depth":
        pred, target = torch.rand(B, 1, H, W, generator=g), torch.rand(B, 1, H, W, generator=g)
    elif task == "normals":
        pred, target = torch.randn(B, 3, H, W, generator=g), torch.randn(B, 3, H, W, generator=g)
    else:
        pred = torch.rand(B, 1, H, W, generator=g)
        target = (torch.rand(B, 1, H, W, generator=g) > 0.9).float()
    opts = {"n_thresholds": 5} if task in ("saliency", "boundary") else {}
    if task == "semseg":
        opts["num_classes"] = 5
    a, b = make_metric(task, **opts), make_metric(task, **opts)
    a.update(pred, target)
    perm = torch.tensor([2, 0, 3, 1])
    b.update(pred[perm[:2]], target[perm[:2]])
    b.update(pred[perm[2:]], target[perm[2:]])
    assert a.compute() == pytest.approx(b.compute(), rel=1e-9)


@pytest.mark.parametrize("task", ["saliency", "boundary"])
def test_binary_metrics_all_ignore_is_nan(task):
    m = make_metric(task, n_thresholds=3)
    m.update(torch.rand(2, 1, 32, 32), torch.full((2, 1, 32, 32), 255.0))
    assert math.isnan(m.compute())
