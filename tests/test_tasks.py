import pytest
import torch

from icm_core import ConfigError, ICMError
from icm_core.tasks.registry import DATASET_TASKS, TASKS, get_task, resolve_tasks


def test_registry_matches_paper_settings():
    assert set(TASKS) == {"semseg", "depth", "normals", "boundary", "human_parts", "saliency"}
    assert TASKS["semseg"].out_channels("nyud") == 40
    assert TASKS["semseg"].out_channels("pascal") == 21
    assert TASKS["human_parts"].out_channels("pascal") == 7
    nyud = {t: TASKS[t].weight("nyud") for t in DATASET_TASKS["nyud"]}
    assert nyud == {"semseg": 1, "depth": 1, "normals": 10, "boundary": 50}
    pascal = {t: TASKS[t].weight("pascal") for t in DATASET_TASKS["pascal"]}
    assert pascal == {"semseg": 1, "human_parts": 2, "saliency": 5, "boundary": 50, "normals": 10}
    assert [TASKS[t].higher_is_better for t in ("semseg", "depth", "normals")] == [True, False, False]


def test_aliases_and_errors():
    assert get_task("edge").name == "boundary"
    assert resolve_tasks(["edge", "semseg"], "nyud") == ("boundary", "semseg")
    with pytest.raises(ConfigError, match="unknown task 'sematic'"):
        get_task("sematic")
    with pytest.raises(ConfigError, match="no 'saliency' labels"):
        resolve_tasks(["saliency"], "nyud")
    with pytest.raises(ICMError, match="has no labels in dataset 'nyud'"):
        TASKS["human_parts"].out_channels("nyud")


def test_cross_entropy_ignores_255():
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, 1] = 10.0
    target = torch.tensor([[[1, 255], [255, 255]]])
    assert TASKS["semseg"].loss(pred, target) < 1e-3
    assert TASKS["semseg"].loss(pred, torch.full((1, 2, 2), 255)) == 0


def test_depth_loss_uses_valid_pixels_only():
    pred = torch.ones(1, 1, 2, 2)
    target = torch.tensor([[[[3.0, 0.0], [0.0, 0.0]]]])
    assert TASKS["depth"].loss(pred, target).item() == pytest.approx(2.0)


def test_normals_loss_normalizes_prediction():
    target = torch.zeros(1, 3, 1, 2)
    target[0, 2, 0, 0] = 1.0  # second pixel all-zero: invalid
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 2] = 5.0
    assert TASKS["normals"].loss(pred, target).item() == pytest.approx(0.0, abs=1e-6)


def test_boundary_loss_weights_positives():
    logits = torch.zeros(1, 1, 1, 2)
    pos = TASKS["boundary"].loss(logits, torch.tensor([[[[1.0, 1.0]]]]))
    neg = TASKS["boundary"].loss(logits, torch.tensor([[[[0.0, 0.0]]]]))
    assert pos.item() / neg.item() == pytest.approx(0.95 / 0.05)


def test_saliency_loss_balances_by_batch_frequency():
    logits = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    # positive weight = 3/4, negative weight = 1/4: both classes contribute equally
    expected = (0.75 * 1 + 0.25 * 3) * torch.log(torch.tensor(2.0)) / 4
    assert TASKS["saliency"].loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
