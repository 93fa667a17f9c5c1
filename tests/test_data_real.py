"""Real-data loaders on tiny fixture folders written here in the exact on-disk formats (PNG,
JPEG, NPY, MAT, a saved Hugging Face dataset): values after loading, layout detection, the
data check's report, and a short training run on a NYUD-layout fixture."""

import json
import logging

import datasets as hfd
import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from icm_core.cli.main import main
from icm_core.config import load_config
from icm_core.config.overrides import config_overrides
from icm_core.config.schema import DATASETS, DataConfig
from icm_core.data.check import check_dataset
from icm_core.data.folder import ImageFolder
from icm_core.data.hf import HFDataset
from icm_core.data.nyud import NYUD
from icm_core.data.pascal_context import NORMALS_CLASSES, PASCALContext, boundary_from_labelmap
from icm_core.data.registry import (
    _REGISTRY,
    dataset_names,
    get_dataset,
    make_dataset,
    register_dataset,
)
from icm_core.data.transforms import EvalTransform, TrainTransform, hflip, sample_generator
from icm_core.errors import ConfigError, DatasetError
from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir

from .helpers import TINY

H, W = 24, 32


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _npy(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _nyud_labels(seed):
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 41, (H, W)).astype(np.uint8)
    seg[0, :4] = [0, 1, 40, 7]  # unlabelled, first class, last class, another
    depth = rng.uniform(0.5, 5.0, (H, W)).astype(np.float32)
    depth[1, 0] = 0.0  # invalid
    n = rng.normal(size=(H, W, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    edge = np.zeros((H, W), np.float32)
    edge[5, :] = 1.0
    return seg, depth, n, edge


def make_nyud(root, layout="NYUDv2", ids=("000001", "000002", "000003"), val=("000004",),
              skip=()):
    """A NYUD-v2 fixture: ``skip`` = (folder, id) pairs left out."""
    for i, id_ in enumerate([*ids, *val]):
        seg, depth, n, edge = _nyud_labels(i)
        files = {}
        if layout == "NYUDv2":
            files["images"] = lambda p, k=i: _png(p.with_suffix(".png"), _rgb(k))
            npng = np.round((n + 1) * 255 / 2).astype(np.uint8)
            npng[2, 3] = 0  # an invalid (black) pixel
            files["normals"] = lambda p, a=npng: _png(p.with_suffix(".png"), a)
            files["edge"] = lambda p, e=edge: _png(p.with_suffix(".png"), (e * 255).astype(np.uint8))
        else:
            files["images"] = lambda p, k=i: Image.fromarray(_rgb(k)).save(p.with_suffix(".jpg"),
                                                                       quality=95)
            files["normals"] = lambda p, a=n: _npy(p.with_suffix(".npy"), a)
            files["edge"] = lambda p, e=edge: _npy(p.with_suffix(".npy"), e)
        files["segmentation"] = lambda p, s=seg: _png(p.with_suffix(".png"), s)
        files["depth"] = lambda p, d=depth: _npy(p.with_suffix(".npy"), d)
        for folder, write in files.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            if (folder, id_) not in skip:
                write(root / folder / id_)
    (root / "gt_sets").mkdir(parents=True, exist_ok=True)
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(val) + "\n")
    return root


def _raw(ds, i=0):
    return ds.raw(i)


# -- NYUD-v2 --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NYUDv2", "NYUD_MT"])
def test_nyud_layout_detected_and_labels_decoded(tmp_path, layout, caplog):
    root = make_nyud(tmp_path / "nyud", layout)
    with caplog.at_level(logging.INFO, logger="icm.data"):
        ds = NYUD(root, "train", size=(H, W), augment=False)
    assert ds.layout == layout and f"{layout} layout" in caplog.text
    seg, depth, n, edge = _nyud_labels(0)
    s = _raw(ds)
    assert s["image"].shape == (3, H, W) and 0 <= s["image"].min() and s["image"].max() <= 1
    # segmentation: 0 -> ignore 255, c -> c - 1 (40 classes 0..39)
    assert s["semseg"][0, :4].tolist() == [255, 0, 39, 6]
    want = np.where(seg == 0, 255, seg.astype(np.int64) - 1)
    assert torch.equal(s["semseg"], torch.from_numpy(want))
    assert s["depth"].shape == (1, H, W) and s["depth"][0, 1, 0] == 0
    assert torch.allclose(s["depth"][0], torch.from_numpy(depth))
    # normals in [-1, 1]; PNG: 2x/255 - 1 (8-bit quantization), a black pixel -> 0 = invalid
    assert s["normals"].shape == (3, H, W) and s["normals"].abs().max() <= 1
    assert torch.allclose(s["normals"].permute(1, 2, 0)[0, 0], torch.from_numpy(n[0, 0]), atol=1 / 255)
    if layout == "NYUDv2":
        assert s["normals"][:, 2, 3].tolist() == [0, 0, 0]
    # edges binarized: one row of ones
    assert set(s["boundary"].unique().tolist()) == {0.0, 1.0}
    assert s["boundary"][0, 5].eq(1).all() and s["boundary"].sum() == W


def test_nyud_layout_can_be_forced_and_mismatch_is_reported(tmp_path):
    root = make_nyud(tmp_path / "nyud", "NYUDv2")
    with pytest.raises(DatasetError, match=r"images/000001\.jpg \(image\): missing"):
        NYUD(root, "train", size=(H, W), layout="NYUD_MT")


def test_nyud_missing_files_named_relative_to_root_with_their_task(tmp_path):
    root = make_nyud(tmp_path / "nyud", skip={("normals", "000002"), ("depth", "000003")})
    with pytest.raises(DatasetError) as e:
        NYUD(root, "train", size=(H, W))
    msg = str(e.value)
    assert "normals/000002.png (normals): missing" in msg
    assert "depth/000003.npy (depth): missing" in msg
    assert str(tmp_path) + "/nyud/normals" not in msg  # relative paths


def test_nyud_partial_dataset_trains_what_it_has(tmp_path):
    root = make_nyud(tmp_path / "nyud", skip={("normals", "000002")})
    ds = NYUD(root, "train", size=(H, W), strict=False, augment=False)
    assert ds.missing == {"normals": ["normals/000002.png"]}
    assert ds.tasks_available == ("semseg", "depth", "normals", "boundary")
    s = ds.raw(ds.ids.index("000002"))
    assert s["normals"].abs().sum() == 0  # all invalid: no loss there
    assert s["semseg"].ne(255).any()  # the other tasks are intact


def test_nyud_task_without_any_file_is_refused_even_when_not_strict(tmp_path):
    root = make_nyud(tmp_path / "nyud", skip={("edge", i) for i in ("000001", "000002", "000003")})
    with pytest.raises(DatasetError, match=r"no files at all for task\(s\) \['boundary'\]"):
        NYUD(root, "train", strict=False)
    ds = NYUD(root, "train", ["semseg", "depth"], size=(H, W))  # the tasks that are there
    assert ds.tasks_available == ("semseg", "depth")


def test_malformed_files_are_named(tmp_path):
    root = make_nyud(tmp_path / "nyud")
    (root / "depth" / "000001.npy").write_bytes(b"not an array")
    _png(root / "normals" / "000002.png", np.zeros((H, W), np.uint8))  # grayscale normals
    with pytest.raises(DatasetError) as e:
        NYUD(root, "train")
    assert "depth/000001.npy (depth): malformed" in str(e.value)
    assert "normals/000002.png (normals): malformed" in str(e.value) and "mode L" in str(e.value)


def test_missing_root_and_split_files(tmp_path):
    with pytest.raises(DatasetError, match="data='nyud': data.root is not set"):
        make_dataset(DataConfig(name="nyud"), "train", ["semseg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"gt_sets/train\.txt \(split\): missing"):
        NYUD(tmp_path / "empty", "train")


# -- transforms -------------------------------------------------------------------------------
def test_flip_negates_normals_x_and_mirrors_everything(tmp_path):
    root = make_nyud(tmp_path / "nyud")
    s = NYUD(root, "train", size=(H, W), augment=False).raw(0)
    f = hflip(s)
    assert torch.equal(f["semseg"], s["semseg"].flip(-1))
    assert torch.equal(f["normals"][0], -s["normals"][0].flip(-1))
    assert torch.equal(f["normals"][1:], s["normals"][1:].flip(-1))
    assert torch.equal(hflip(f)["normals"], s["normals"])


def test_train_augmentation_is_seeded_consistent_and_pads_with_ignore(tmp_path):
    root = make_nyud(tmp_path / "nyud", "NYUD_MT")
    ds = NYUD(root, "train", size=(32, 48), seed=3)
    a, b = ds[(1, 7)], ds[(1, 7)]
    assert all(torch.equal(a[k], b[k]) for k in ("image", "semseg", "depth", "normals", "boundary"))
    assert any(not torch.equal(a["image"], ds[(1, e)]["image"]) for e in range(8, 12))
    assert a["image"].shape == (3, 32, 48) and a["semseg"].shape == (32, 48)
    # a crop larger than the scaled image: padding carries the ignore values
    t = TrainTransform((64, 64), scales=(1.0, 1.0), flip=False, jitter=False)
    out = t(ds.raw(0), sample_generator(0, 0, 0))
    assert out["semseg"][H:].eq(255).all() and out["boundary"][:, H:].eq(255).all()
    assert out["depth"][:, H:].eq(0).all() and out["normals"][:, H:].eq(0).all()
    # normals stay unit vectors or zero after scaling and flipping (nearest neighbours)
    for e in range(6):
        n = ds[(0, e)]["normals"]
        norm = n.norm(dim=0)
        assert (((norm - 1).abs() < 1e-4) | (norm == 0)).all()


def test_eval_transform_fits_then_pads():
    s = {"image": torch.rand(3, 40, 60), "semseg": torch.zeros(40, 60, dtype=torch.int64)}
    out = EvalTransform((32, 64))(s)
    assert out["image"].shape == (3, 32, 64) and out["meta"]["valid"] == (32, 48)
    assert out["semseg"][:, 48:].eq(255).all() and out["semseg"][:, :48].eq(0).all()


# -- PASCAL-Context -------------------------------------------------------------------------
def _anno(objects):
    """A PASCAL-Part ``anno`` struct as scipy.io writes MATLAB structs."""
    part_t = [("part_name", "O"), ("mask", "O")]
    obj_t = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    objs = np.zeros((1, len(objects)), dtype=obj_t)
    for k, (cls, mask, parts) in enumerate(objects):
        p = np.zeros((1, len(parts)), dtype=part_t)
        for j, (name, pm) in enumerate(parts):
            p[0, j] = (name, pm.astype(np.uint8))
        objs[0, k] = ("person" if cls == 15 else "dog", np.array([[cls]]), mask.astype(np.uint8),
                      p if parts else np.zeros((0, 0)))
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = ("x", objs)
    return {"anno": anno}


def make_pascal(root, with_parts_list=True):
    ids = ["2008_000001", "2008_000002"]
    val = ["2008_000003"]
    labels = np.full((H, W), 440, np.int32)  # wall: an NYU-compatible class
    labels[:, W // 2:] = 187  # grass: not in NYUD-v2
    for k, id_ in enumerate([*ids, *val]):
        Image.fromarray(_rgb(k)).save(_mk(root / "JPEGImages" / f"{id_}.jpg"), quality=95)
        seg = np.zeros((H, W), np.uint8)
        seg[:, :5], seg[0, 0] = 15, 255
        folder = "VOC12" if k == 0 else "pascal-context"
        _png(root / "semseg" / folder / f"{id_}.png", seg)
        sal = np.zeros((H, W), np.uint8)
        sal[:, :8], sal[:, 8:10] = 200, 120  # 200/255 > 0.5, 120/255 < 0.5
        _png(root / "sal_distill" / f"{id_}.png", sal)
        normals = np.full((H, W, 3), 200, np.uint8)
        _png(root / "normals_distill" / f"{id_}.png", normals)
        sio.savemat(_mk(root / "pascal-context" / "trainval" / f"{id_}.mat"), {"LabelMap": labels})
        person = np.zeros((H, W), bool)
        person[2:20, 2:12] = True
        head, torso, lfoot = (np.zeros((H, W), bool) for _ in range(3))
        head[2:6, 2:12], torso[6:14, 2:12], lfoot[18:20, 2:6] = True, True, True
        dog = np.zeros((H, W), bool)
        dog[20:, 20:] = True
        objects = [(12, dog, [])]
        if k == 0:  # only the first image has a person (with parts)
            objects.append((15, person, [("head", head), ("hair", head), ("torso", torso),
                                         ("lfoot", lfoot)]))
        sio.savemat(_mk(root / "human_parts" / f"{id_}.mat"), _anno(objects))
    _mk(root / "ImageSets" / "Context" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text("\n".join(val) + "\n")
    if with_parts_list:
        _mk(root / "ImageSets" / "Parts" / "train.txt").write_text(
            json.dumps({ids[0]: [12, 15], ids[1]: [12]}))
        (root / "ImageSets" / "Parts" / "val.txt").write_text(json.dumps({val[0]: [12]}))
    return root


def _mk(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("with_parts_list", [True, False])
def test_pascal_labels(tmp_path, with_parts_list):
    root = make_pascal(tmp_path / "PASCAL_MT", with_parts_list)
    ds = PASCALContext(root, "train", size=(H, W), augment=False)
    assert ds.layout == "PASCAL_MT" and len(ds) == 2
    s0, s1 = ds.raw(0), ds.raw(1)
    # semseg as stored (21 classes, 255 ignore), from VOC12 or pascal-context
    assert s0["semseg"][0, 0] == 255 and s0["semseg"][1, 0] == 15 and s1["semseg"][1, 7] == 0
    # human parts from the .mat: head 1 (hair too), torso 2, left foot 6, the rest 0
    p = s0["human_parts"]
    assert p[3, 3] == 1 and p[8, 3] == 2 and p[18, 3] == 6 and p[16, 3] == 0 and p[0, 0] == 0
    assert p[21, 21] == 0  # the dog is background
    assert s1["human_parts"].eq(255).all()  # no person: ignored
    # saliency: above 0.5 of 255
    assert s0["saliency"][0, 0, :8].eq(1).all() and s0["saliency"][0, 0, 8:].eq(0).all()
    # normals kept on NYU-compatible classes (wall) and zero elsewhere (grass)
    v = 2 * 200 / 255 - 1
    assert 440 in NORMALS_CLASSES and 187 not in NORMALS_CLASSES
    assert torch.allclose(s0["normals"][:, :, : W // 2], torch.tensor(v))
    assert s0["normals"][:, :, W // 2:].eq(0).all()
    # boundary: where the class map changes, one pixel wide
    b = s0["boundary"][0]
    assert set(b.unique().tolist()) == {0.0, 1.0}
    cols = b.nonzero()[:, 1].unique().tolist()
    assert cols and all(abs(c - (W // 2 - 0.5)) <= 1 for c in cols) and len(cols) == 1


def test_boundary_from_labelmap_is_thin():
    labels = np.zeros((16, 16), np.int32)
    labels[4:12, 4:12] = 3
    b = boundary_from_labelmap(labels)[0].numpy().astype(bool)
    assert b[4, 6] or b[3, 6]  # the top border of the square
    assert not (b[3, 6] and b[4, 6])  # thinned to one pixel across
    assert not b[8, 8] and not b[0, 0]


# -- data check and the CLI -----------------------------------------------------------------
def test_data_check_reports_counts_and_missing_files_relative_to_root(tmp_path, capsys):
    root = make_nyud(tmp_path / "nyud", skip={("normals", "000004"), ("images", "000002")})
    report = check_dataset(root, "nyud")
    assert not report.ok and report.layout == "NYUDv2"
    assert report.counts["train"] == {"listed": 3, "images": 2, "semseg": 3, "depth": 3,
                                      "normals": 3, "boundary": 3}
    assert report.counts["val"]["normals"] == 0
    assert report.missing("normals") == ["normals/000004.png"]
    assert report.missing("image") == ["images/000002.png"]
    assert main(["data", "check", str(root), "--dataset", "nyud"]) == 1
    out = capsys.readouterr().out
    assert "normals/000004.png (normals): missing" in out
    assert "images/000002.png (image): missing" in out
    assert str(tmp_path / "nyud" / "normals") not in out
    good = make_nyud(tmp_path / "good")
    assert main(["data", "check", str(good), "--dataset", "nyud"]) == 0
    assert "no missing or malformed files" in capsys.readouterr().out


def test_data_check_pascal_and_folder(tmp_path, capsys):
    root = make_pascal(tmp_path / "PASCAL_MT")
    (root / "sal_distill" / "2008_000002.png").unlink()
    (root / "pascal-context" / "trainval" / "2008_000003.mat").unlink()
    assert main(["data", "check", str(root), "--dataset", "pascal_context"]) == 1
    out = capsys.readouterr().out
    assert "sal_distill/2008_000002.png (saliency): missing" in out
    assert "pascal-context/trainval/2008_000003.mat (boundary): missing" in out
    assert "pascal-context/trainval/2008_000003.mat (normals): missing" in out
    photos = tmp_path / "photos"
    _png(photos / "a.png", _rgb(0))
    _png(photos / "sub" / "b.png", _rgb(1))
    (photos / "broken.jpg").write_bytes(b"nope")
    assert main(["data", "check", str(photos), "--dataset", "folder"]) == 1
    out = capsys.readouterr().out
    assert "broken.jpg (image): malformed" in out and "images 2" in out


def test_data_preview_of_a_real_dataset(tmp_path):
    root = make_nyud(tmp_path / "nyud")
    out = tmp_path / "p.png"
    assert main(["data", "preview", "nyud", "--root", str(root), "--out", str(out), "-n", "2",
                 "--height", "32", "--width", "32"]) == 0
    with Image.open(out) as im:
        assert im.width > 5 * 32 and im.height > 2 * 32  # image + 4 tasks, 2 rows


# -- folder and Hugging Face ----------------------------------------------------------------
def test_folder_of_photos_has_images_only_and_cannot_train(tmp_path):
    _png(tmp_path / "p" / "b.png", _rgb(1))
    Image.fromarray(_rgb(2)[:, :20]).save(tmp_path / "p" / "a.jpg")
    ds = make_dataset(DataConfig(name="folder", root=str(tmp_path / "p"), size=[32, 32]), "val",
                      ["semseg"])
    assert isinstance(ds, ImageFolder) and not ds.labelled and ds.tasks == ()
    s = ds[0]
    assert set(s) == {"image", "meta"} and s["meta"]["id"] == "a.jpg" and not s["meta"]["labelled"]
    assert s["image"].shape == (3, 32, 32) and s["meta"]["valid"] == (24, 20)
    with pytest.raises(DatasetError, match="no labels, so it cannot train"):
        make_dataset(DataConfig(name="folder", root=str(tmp_path / "p")), "train", ["semseg"])


def test_hf_saved_dataset_with_column_mapping(tmp_path):
    seg = np.zeros((H, W), np.uint8)
    seg[:, :4] = 3
    seg[0, 0] = 255
    depth = np.full((H, W), 2.0, np.float32)
    feats = hfd.Features({"img": hfd.Image(), "label": hfd.Image(),
                          "dep": hfd.Array2D((H, W), "float32"), "name": hfd.Value("string")})
    rows = {"img": [Image.fromarray(_rgb(i)) for i in range(3)],
            "label": [Image.fromarray(seg)] * 3, "dep": [depth] * 3, "name": ["a", "b", "c"]}
    hfd.DatasetDict({"train": hfd.Dataset.from_dict(rows, features=feats),
                     "validation": hfd.Dataset.from_dict(rows, features=feats)}
                    ).save_to_disk(str(tmp_path / "hf"))
    cfg = DataConfig(name="hf", root=str(tmp_path / "hf"), size=[H, W],
                     columns={"image": "img", "semseg": "label", "depth": "dep"}, labels="nyud")
    assert cfg.label_space == "nyud"
    ds = make_dataset(cfg, "val", ["semseg", "depth"])
    s = ds[1]
    assert set(s) == {"image", "semseg", "depth", "meta"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, H, W)
    assert torch.allclose(s["image"], torch.from_numpy(_rgb(1)).permute(2, 0, 1) / 255)
    assert s["semseg"].dtype == torch.int64 and s["semseg"][0, 0] == 255 and s["semseg"][1, 0] == 3
    assert s["depth"].shape == (1, H, W) and s["depth"].eq(2).all()
    tr = make_dataset(cfg, "train", ["semseg"])
    assert tr[(0, 1)]["semseg"].shape == (H, W)
    with pytest.raises(DatasetError, match=r"no column 'normals' for normals"):
        HFDataset(str(tmp_path / "hf"), "val", ["normals"], columns={"image": "img"})
    rep = check_dataset(tmp_path / "hf", "hf", columns={"image": "img", "semseg": "label"})
    assert rep.ok and rep.counts["train"] == {"rows": 3, "semseg": 3}
    assert main(["data", "check", str(tmp_path / "hf"), "--dataset", "hf",
                 "--columns", "image=img,semseg=label"]) == 0
    # a parquet file (one split) with columns named like the keys
    hfd.Dataset.from_dict(rows, features=feats).rename_columns(
        {"img": "image", "label": "semseg"}).to_parquet(str(tmp_path / "d.parquet"))
    pq = HFDataset(str(tmp_path / "d.parquet"), "val", size=(H, W), labels="nyud")
    assert pq.tasks == ("semseg",) and pq[0]["semseg"][1, 0] == 3


# -- registry and config ----------------------------------------------------------------------
def test_registry_and_config_agree():
    assert dataset_names() == list(DATASETS)
    assert get_dataset("pascal_context").name == "pascal"
    with pytest.raises(ConfigError, match="data.layout='NYU'"):
        DataConfig(name="nyud", layout="NYU")
    with pytest.raises(ConfigError, match="data.labels='cityscapes'"):
        DataConfig(name="hf", labels="cityscapes")
    with pytest.raises(ConfigError, match="data.name='coco'"):
        DataConfig(name="coco")


def test_hf_columns_from_the_command_line_and_a_registered_plugin_dataset():
    cfg = load_config(["data=hf", "data.root=/x", "data.columns={image:img,semseg:label}"])
    assert cfg.data.columns == {"image": "img", "semseg": "label"} and cfg.data.label_space == "nyud"
    assert "data.columns={image:img,semseg:label}" in config_overrides(cfg)
    with pytest.raises(ConfigError, match="data.columns"):
        load_config(["data.columns=[a]"])
    seen = []
    register_dataset("tiny_plugin", lambda c, split, tasks: seen.append((split, tasks)) or [],
                     label_space="synthetic")
    try:
        make_dataset(DataConfig(name="tiny_plugin"), "val", ["semseg"])
        assert seen == [("val", ["semseg"])]
    finally:
        _REGISTRY.pop("tiny_plugin")


def test_icm_train_on_a_nyud_fixture_runs_end_to_end(tmp_path):
    root = make_nyud(tmp_path / "nyud", "NYUD_MT")
    out = tmp_path / "run"
    rc = main(["train", *TINY, "data=nyud", f"data.root={root}", "data.size=[32,32]",
               "backbone.depth=4", "backbone.patch_size=8", "tasks=[semseg,depth]",
               "train.max_steps=2", "train.batch_size=2", f"out_dir={out}",
               f"hydra.run.dir={tmp_path / 'hydra'}"])
    assert rc == 0
    cfg = load_config_file(resolve_checkpoint_dir(out))
    assert cfg.data.name == "nyud" and cfg.data.root == str(root)
    lines = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines if d["kind"] == "step"] == [1, 2]
    assert all(np.isfinite(d["loss"]) for d in lines if d["kind"] == "step")
