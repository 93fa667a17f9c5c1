import numpy as np
import pytest
import torch

from icm_core import DatasetError
from icm_core.data.hf import to_hf_dataset
from icm_core.data.synthetic import SyntheticScenes, render_scene
from icm_core.tasks import SYNTHETIC_CLASSES


def test_deterministic_per_seed_and_split():
    a = SyntheticScenes("train", (40, 56), seed=3, length=5)[2]
    b = SyntheticScenes("train", (40, 56), seed=3, length=5)[2]
    for k in ("image", "semseg", "depth", "normals", "boundary", "saliency", "human_parts"):
        assert torch.equal(a[k], b[k]), k
    c = SyntheticScenes("val", (40, 56), seed=3, length=5)[2]
    d = SyntheticScenes("train", (40, 56), seed=4, length=5)[2]
    assert not torch.equal(a["image"], c["image"])
    assert not torch.equal(a["image"], d["image"])


@pytest.mark.parametrize("size", [(17, 23), (64, 64), (96, 160)])
def test_sample_dict_shapes_and_ranges(size):
    s = SyntheticScenes("train", size, length=2)[1]
    H, W = size
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["semseg"].shape == (H, W) and s["semseg"].dtype == torch.int64
    assert int(s["semseg"].max()) < len(SYNTHETIC_CLASSES)
    assert s["depth"].shape == (1, H, W) and (s["depth"] > 0).all()
    norms = s["normals"].norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    for k in ("boundary", "saliency"):
        assert s[k].shape == (1, H, W) and set(s[k].unique().tolist()) <= {0.0, 1.0}
    assert s["meta"]["dataset"] == "synthetic"


def test_labels_agree_with_geometry():
    a = render_scene(11, (96, 128))
    # the floor faces up: in the camera frame (y down) its normal has a negative y component
    floor = a["semseg"] == 1
    assert floor.any() and (a["normals"][floor][:, 1] < -0.5).all()
    # every normal faces the camera: it points against the pixel's viewing ray
    K = a["intrinsics"]
    v, u = np.mgrid[0:96, 0:128] + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    assert ((a["normals"] * rays).sum(-1) <= 1e-5).all()
    # parts only on objects, saliency a subset of objects, boundaries thin (< 15 % of pixels)
    objects = a["semseg"] >= 3
    assert not a["human_parts"][~objects].any() and (a["human_parts"][objects] > 0).all()
    assert not a["saliency"][~objects].any() and a["saliency"].any()
    assert 0 < a["boundary"].mean() < 0.15
    # every change of surface instance between horizontal neighbours is marked as boundary
    changes = np.diff(a["instances"], axis=1) != 0
    assert a["boundary"][:, :-1][changes].all()


def test_bad_arguments_raise_dataset_error():
    with pytest.raises(DatasetError, match="split='test'"):
        SyntheticScenes("test")
    with pytest.raises(DatasetError, match="too small"):
        SyntheticScenes("train", (4, 4))
    with pytest.raises(IndexError):
        SyntheticScenes("train", (16, 16), length=2)[2]


def test_hf_dataset_has_the_same_samples():
    hf = to_hf_dataset(2, seed=5, size=(24, 32), tasks=["semseg", "depth"])
    ref = SyntheticScenes("train", (24, 32), tasks=["semseg", "depth"], seed=5, length=2)[1]
    row = hf[1]
    assert torch.equal(row["image"], ref["image"])
    assert torch.equal(row["semseg"], ref["semseg"])
    assert torch.equal(row["depth"], ref["depth"])
    assert row["id"] == ref["meta"]["id"]
