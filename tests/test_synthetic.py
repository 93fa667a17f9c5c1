import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from icm_core import DatasetError
from icm_core.data import textures as tx
from icm_core.data.hf import to_hf_dataset
from icm_core.data.synthetic import (
    CLASS,
    MATERIAL_CLASSES,
    SPLITS,
    Plane,
    Sphere,
    SyntheticScenes,
    make_scene,
    render,
    render_scene,
    scene_seed,
)
from icm_core.tasks.registry import SYNTHETIC_CLASSES


def test_deterministic_per_seed_and_split():
    a = SyntheticScenes("train", (40, 56), seed=3, length=5)[2]
    b = SyntheticScenes("train", (40, 56), seed=3, length=5)[2]
    for k in ("image", "semseg", "depth", "normals", "boundary", "saliency", "human_parts"):
        assert torch.equal(a[k], b[k]), k
    c = SyntheticScenes("val", (40, 56), seed=3, length=5)[2]
    d = SyntheticScenes("train", (40, 56), seed=4, length=5)[2]
    assert not torch.equal(a["image"], c["image"])
    assert not torch.equal(a["image"], d["image"])


def test_cached_scenes_are_the_same_samples_rendered_once(monkeypatch):
    from icm_core.data import synthetic

    plain = SyntheticScenes("train", (40, 56), tasks=["semseg", "depth"], seed=3, length=4)
    cached = SyntheticScenes("train", (40, 56), tasks=["semseg", "depth"], seed=3, length=4,
                             cache=True)
    renders = []
    real = synthetic.render_scene
    monkeypatch.setattr(synthetic, "render_scene", lambda *a: renders.append(a) or real(*a))
    first = [cached[i] for i in (1, 2, 1, 2, 1)]
    assert len(renders) == 2  # scenes 1 and 2, each once
    for got, i in zip(first, (1, 2, 1, 2, 1)):
        want = plain[i]
        assert got["meta"] == want["meta"]
        for k in ("image", "semseg", "depth"):
            assert torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype, k
    first[0]["image"].zero_()  # a sample is the caller's: changing it leaves the cache alone
    assert torch.equal(cached[1]["image"], plain[1]["image"])


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
    with pytest.raises(DatasetError, match="split='tset'"):
        SyntheticScenes("tset")
    with pytest.raises(DatasetError, match="seed=-1"):
        SyntheticScenes("train", seed=-1)
    with pytest.raises(DatasetError, match="length="):
        SyntheticScenes("pretrain", length=2**31 + 1)
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


def test_splits_use_disjoint_blocks_of_scene_seeds():
    assert SPLITS == ("train", "val", "test", "pretrain")
    last = 2**31 - 1
    blocks = [(scene_seed(seed, sp, 0), scene_seed(seed, sp, last))
              for seed in range(3) for sp in SPLITS]
    for (a0, a1), (b0, b1) in itertools.combinations(blocks, 2):
        assert a1 - a0 == last and (a1 < b0 or b1 < a0)
    for bad in (-1, 2**31):
        with pytest.raises(DatasetError, match="outside the split's range"):
            scene_seed(0, "pretrain", bad)
    # the held-out splits render scenes that training never sees
    train = SyntheticScenes("train", (24, 24), seed=0, length=2)[1]
    for split in ("test", "pretrain"):
        other = SyntheticScenes(split, (24, 24), seed=0, length=2)[1]
        assert not torch.equal(train["image"], other["image"]), split
        assert other["meta"]["id"] == f"synthetic-{split}-0-000001"


def _rays(a):
    """World ray directions (forward component 1) of every pixel, from the returned camera."""
    H, W = a["depth"].shape
    v, u = np.mgrid[0:H, 0:W] + 0.5
    K = a["intrinsics"].astype(np.float64)
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return cam @ a["camera_to_world"][:3, :3].T


def test_objects_are_labelled_by_the_geometry_that_shows_them():
    """Where a sphere is the nearest surface (independent ray-sphere test), its pixels carry its
    class and instance; textured classes, balls and relief included."""
    seen = set()
    for seed in range(6):
        scene, a = make_scene(seed), render_scene(seed, (80, 96))
        D, o = _rays(a), a["camera_to_world"][:3, 3]
        for s in scene.objects:
            if not isinstance(s, Sphere):
                continue
            oc = o - s.center
            b, c = D @ oc, oc @ oc - s.radius**2
            aa = (D * D).sum(-1)
            disc = b * b - aa * c
            t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / aa, np.inf)
            depth = a["depth"].astype(np.float64)
            shown = (depth > t - 1e-3) & (depth < t + s.material.relief_amp + 1e-3)
            assert (a["semseg"][shown] == s.cls).all() and (a["instances"][shown] == s.inst).all()
            assert np.isfinite(t[a["instances"] == s.inst]).all()  # its pixels lie on its rays
            if shown.sum() > 10:
                seen.add(s.cls)
    assert len(seen) >= 4, seen  # several classes checked, not only one


def test_material_classes_differ_by_fine_texture_that_fades_when_small():
    """Plain objects have flat albedo; patterned classes vary inside the object at 192 px, and
    rendered 4x smaller the same surfaces are flatter (band-limited, not aliased)."""
    patterned = {CLASS[n] for n, p in MATERIAL_CLASSES.items() if p != tx.PLAIN}
    spread = {}
    for size in (192, 48):
        spread[size] = {"plain": [], "patterned": []}
        for seed in range(6):
            a = render_scene(seed, (size, size))
            lum = a["albedo"].mean(-1)
            for k in np.unique(a["instances"]):
                inner = ndimage.binary_erosion(a["instances"] == k, iterations=2)
                cls = int(a["semseg"][a["instances"] == k][0])
                if inner.sum() < 4 or k < 3:
                    continue
                cv = lum[inner].std() / lum[inner].mean()
                if cls == CLASS["plain"]:
                    spread[size]["plain"].append(cv)
                elif cls in patterned:
                    spread[size]["patterned"].append(cv)
    assert spread[192]["plain"] and max(spread[192]["plain"]) < 1e-5
    assert np.mean(spread[192]["patterned"]) > 0.1
    assert np.mean(spread[48]["patterned"]) < 0.5 * np.mean(spread[192]["patterned"])


def test_colour_does_not_identify_the_class():
    """Every large-object class draws its colour from the same per-scene palette."""
    colours = {c: [] for c in MATERIAL_CLASSES}
    for seed in range(150):
        for s in make_scene(seed).objects:
            name = SYNTHETIC_CLASSES[s.cls]
            if name in colours:
                colours[name].append(s.material.colour)
    means = np.array([np.mean(v, axis=0) for v in colours.values()])
    assert min(len(v) for v in colours.values()) > 40
    assert np.abs(means - means.mean(axis=0)).max() < 0.06


@pytest.mark.parametrize("relief", [tx.RIDGES_U, tx.RIDGES_V, tx.BUMPS])
def test_relief_depth_and_normals_agree(relief):
    """On a carved wall, normals from finite differences of the depth map match the labelled
    normals, and both show the relief (the labels tilt, the depth varies)."""
    scene = make_scene(3)
    walls = [s for s in scene.surfaces if isinstance(s, Plane) and s.cls == CLASS["wall"]]
    carved = dataclasses.replace(walls[0].material, relief=relief, relief_amp=0.02, ru=5.0, rv=5.0)
    for w in walls:
        w.material = carved
    back = next(w for w in walls if w.axis == 2 and w.sign < 0)
    H, W = 192, 256
    a = render(scene, (H, W))
    v, u = np.mgrid[0:H, 0:W] + 0.5
    K = np.linalg.inv(a["intrinsics"].astype(np.float64))
    X = np.stack([u, v, np.ones_like(u)], -1) @ K.T * a["depth"][..., None]  # camera frame
    n_fd = np.cross(X[2:, 1:-1] - X[:-2, 1:-1], X[1:-1, 2:] - X[1:-1, :-2])
    n_fd /= np.linalg.norm(n_fd, axis=-1, keepdims=True)
    R = a["camera_to_world"][:3, :3]
    z_world = (X @ R.T + a["camera_to_world"][:3, 3])[..., 2]
    on_back = (a["semseg"] == CLASS["wall"]) & (np.abs(z_world - back.value) < 0.03)
    inner = ndimage.binary_erosion(on_back, iterations=3)[1:-1, 1:-1]
    assert inner.sum() > 1000
    n = a["normals"][1:-1, 1:-1].astype(np.float64)
    err = np.degrees(np.arccos(np.clip((n * n_fd).sum(-1), -1, 1)))[inner]
    assert np.median(err) < 3 and err.max() < 6, (np.median(err), err.max())
    flat = R.T @ np.array([0.0, 0.0, -1.0])  # the uncarved back wall's normal, camera frame
    tilt = np.degrees(np.arccos(np.clip(n @ flat, -1, 1)))[inner]
    assert np.percentile(tilt, 75) > 8
    assert np.ptp(z_world[1:-1, 1:-1][inner]) > 0.01  # carved up to 2 cm deep


def test_a_scene_is_the_same_at_every_resolution():
    """Pixel (i, j) at 32 px looks along the ray of pixel (3i+1, 3j+1) at 96 px."""
    scene, small, big = make_scene(24), render_scene(24, (32, 32)), render_scene(24, (96, 96))
    assert (small["semseg"] == big["semseg"][1::3, 1::3]).mean() > 0.99
    same = small["instances"] == big["instances"][1::3, 1::3]
    carved = {s.inst for s in scene.surfaces if s.material.relief != tx.NO_RELIEF}
    assert carved  # this scene has a relief, which fades when the pixels grow
    smooth = same & ~np.isin(small["instances"], list(carved))
    diff = np.abs(small["depth"] - big["depth"][1::3, 1::3])
    assert smooth.any() and diff[smooth].max() < 1e-4 and diff[same].max() < 0.1
