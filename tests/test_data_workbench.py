"""Every command and panel takes the dataset: ``icm data preview/eval/demo`` with ``data=...``,
the Setup panel's dataset picker and root check, the inspector on a dataset sample or a photo.

Fixtures are tiny NYUD-v2 folders written by ``tests.test_data_real.make_nyud``.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.cli.main import data_config, main
from icm_core.config.schema import DataConfig
from icm_core.data.registry import _REGISTRY, dataset_names, register_dataset
from icm_core.errors import ConfigError, DatasetError
from icm_core.inspection import image as ins
from icm_core.models.icm import build_model
from icm_core.tasks.registry import IGNORE_INDEX
from widgets.inspector import InspectorPanel
from widgets.setup import SetupPanel

from .helpers import TINY, tiny_config
from .test_data_real import H, W, _nyud_labels, _rgb, make_nyud

VAL_ID = "000004"  # make_nyud's val image: the 4th written, so _rgb(3) and _nyud_labels(3)


@pytest.fixture(scope="module")
def nyud(tmp_path_factory):
    return make_nyud(tmp_path_factory.mktemp("data") / "nyud")


def _photo(path, h=40, w=56):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# -- the Setup panel --------------------------------------------------------------------------
def test_setup_panel_offers_the_registered_datasets_and_checks_the_root(tmp_path, nyud):
    register_dataset("my_plugin", lambda cfg, split, tasks: [], label_space="synthetic")
    try:
        panel = SetupPanel.from_overrides(TINY, live_readout=False)
        assert list(panel.fields["data.name"].widget.options) == dataset_names()
        assert "my_plugin" in panel.fields["data.name"].widget.options
    finally:
        _REGISTRY.pop("my_plugin")
    panel.fields["data.name"].widget.value = "nyud"
    assert "data=nyud needs data.root" in panel.message.value and "b00020" in panel.message.value
    # a root that is not there: the check's error, in the message line
    panel.fields["data.root"].widget.value = str(tmp_path / "nowhere")
    assert "data.root: DatasetError" in panel.message.value and "not a folder" in panel.message.value
    # a root with files missing: the report's first problems, relative to the root
    partial = make_nyud(tmp_path / "partial", skip=[("depth", "000002"), ("images", "000003"),
                                                    ("segmentation", "000001"),
                                                    ("segmentation", "000002")])
    panel.fields["data.root"].widget.value = str(partial)
    msg = panel.message.value
    assert "4 problem(s)" in msg and "b00020" in msg
    assert "segmentation/000001.png (semseg): missing" in msg  # the first three, in id order
    assert "depth/000002.npy (depth): missing" in msg and "images/000003.png" not in msg
    assert "... 1 more" in msg and f"icm data check {partial} --dataset nyud" in msg
    assert panel.data_report.missing("semseg") == ["segmentation/000001.png",
                                                    "segmentation/000002.png"]
    # a complete root: its counts, no error; the tasks offered are the dataset's
    panel.fields["data.root"].widget.value = str(nyud)
    assert "nyud at" in panel.message.value and "NYUDv2 layout" in panel.message.value
    assert "train 3 images; val 1 images; no missing" in panel.message.value
    assert "b00020" not in panel.message.value
    assert panel.dataset_tasks() == ("semseg", "depth", "normals", "boundary")
    shown = [t for t, b in panel.fields["tasks"].buttons.items() if b.layout.display != "none"]
    assert shown == ["semseg", "depth", "normals", "boundary"]
    assert f"data.root={nyud}" in panel.overrides() and "data.name=nyud" in panel.overrides()
    # a task picked on the buttons is an icm train override
    panel.fields["tasks"].buttons["depth"].value = True
    assert panel.config().tasks == ["semseg", "depth"]


def test_setup_panel_offers_only_the_tasks_with_files(tmp_path):
    ids = ("000001", "000002", "000003", "000004")
    root = make_nyud(tmp_path / "noedge", skip=[("edge", i) for i in ids])
    panel = SetupPanel.from_overrides([*TINY, "data=nyud", f"data.root={root}",
                                       "data.strict=false"], live_readout=False)
    assert panel.dataset_tasks() == ("semseg", "depth", "normals")
    assert panel.fields["tasks"].buttons["boundary"].layout.display == "none"
    # the folder is fixed: checking again offers boundary
    make_nyud(root)
    panel.check_data()
    assert panel.dataset_tasks() == ("semseg", "depth", "normals", "boundary")
    assert "no missing or malformed files" in panel.message.value


# -- the inspector --------------------------------------------------------------------------
def test_resolve_image_opens_a_nyud_sample_with_its_labels(nyud):
    cfg = tiny_config("data=nyud", f"data.root={nyud}", "data.size=[64,64]",
                      "tasks=[semseg,depth]")
    src = ins.resolve_image(0, cfg)
    assert src.labelled and set(src.targets) == {"semseg", "depth"} and VAL_ID in src.name
    # cropped back to the real pixels (the evaluation transform pads to data.size)
    assert src.image.shape == (3, H, W)
    np.testing.assert_allclose(src.image.numpy(), _rgb(3).transpose(2, 0, 1) / 255, atol=1e-6)
    seg, depth, _n, _e = _nyud_labels(3)
    want = np.where(seg == 0, IGNORE_INDEX, seg.astype(np.int64) - 1)
    np.testing.assert_array_equal(src.targets["semseg"].numpy(), want)
    np.testing.assert_allclose(src.targets["depth"][0].numpy(), depth)
    with pytest.raises(DatasetError, match=r"nyud validation sample 1 does not exist.*has 1; "
                                           r"pick 0\.\.0"):
        ins.resolve_image(1, cfg)


def test_resolve_image_of_a_photo_has_no_labels_and_fits_the_run_size(tmp_path, nyud):
    cfg = tiny_config("data=nyud", f"data.root={nyud}", "data.size=[32,32]")
    small = ins.resolve_image(_photo(tmp_path / "small.png", 20, 30), cfg)
    assert not small.labelled and small.targets == {} and small.image.shape == (3, 20, 30)
    big = ins.resolve_image(_photo(tmp_path / "big.jpg", 40, 80), cfg)
    assert big.targets == {} and big.image.shape == (3, 16, 32)  # aspect kept
    assert big.name == "big.jpg (fitted into 16x32)"
    assert ins.resolve_image(tmp_path / "big.jpg").image.shape == (3, 40, 80)  # no cfg: as is


def test_inspector_opens_a_nyud_sample_then_a_photo_without_error_maps(tmp_path, nyud):
    model = build_model(tiny_config("data=nyud", f"data.root={nyud}", "data.size=[64,64]",
                                    "tasks=[semseg,depth]"))
    panel = InspectorPanel().open(model)
    i = panel.insp
    assert i.source.labelled and VAL_ID in i.source.name and i.target is not None
    assert panel.error is not None and "mean" in panel.pred_box.children[1].value
    assert "error maps" not in panel.message.value
    photo = _photo(tmp_path / "my photo.png")
    panel.source.value = str(photo)  # typed into the image box
    i = panel.insp
    assert i.source.name == "my photo.png" and i.target is None and panel.error is None
    assert tuple(i.image.shape) == (3, 40, 56)
    assert "no labels: error maps skipped" in panel.message.value
    assert "error maps need labels" in panel.pred_box.children[1].value
    # the notebook's PHOTO: open(run, image=path)
    other = InspectorPanel().open(model, image=str(photo))
    assert other.source.value == str(photo) and other.insp.source.name == "my photo.png"


# -- the commands ---------------------------------------------------------------------------
def test_data_preview_takes_data_overrides(tmp_path, nyud):
    out = tmp_path / "p.png"
    assert main(["data", "preview", "data=nyud", f"data.root={nyud}", "data.size=[24,32]",
                 "--out", str(out), "-n", "2", "--split", "val"]) == 0
    with Image.open(out) as im:
        assert im.height >= 24 and im.width >= 5 * 32  # one val image: image + 4 tasks
    assert main(["data", "preview", "data=nyud", "tasks=[semseg]", "--out", str(out)]) == 2
    with pytest.raises(ConfigError, match="takes data=NAME and data.KEY=VALUE"):
        data_config(["lmbda=2"])


def test_data_config_keeps_the_base_unless_another_dataset_is_named(nyud):
    base = DataConfig(name="nyud", root="/old", size=[32, 32], layout="NYUDv2")
    moved = data_config([f"data.root={nyud}"], base)
    assert (moved.name, moved.root, moved.size, moved.layout) == ("nyud", str(nyud), [32, 32],
                                                                 "NYUDv2")
    other = data_config(["data=folder", "data.root=/photos"], base)
    assert (other.name, other.root, other.size) == ("folder", "/photos", [512, 512])


def test_train_then_eval_on_a_moved_nyud_fixture(tmp_path):
    root = make_nyud(tmp_path / "nyud", "NYUD_MT")
    run = tmp_path / "run"
    assert main(["train", *TINY, "data=nyud", f"data.root={root}", "data.size=[32,32]",
                 "backbone.depth=4", "backbone.patch_size=8", "tasks=[semseg]",
                 "train.max_steps=1", f"out_dir={run}", f"hydra.run.dir={tmp_path / 'hydra'}"]) == 0
    moved = root.rename(tmp_path / "elsewhere")
    assert main(["eval", str(run), "--out", str(tmp_path / "e1")]) == 2  # the run's root is gone
    assert main(["eval", str(run), f"data.root={moved}", "--out", str(tmp_path / "e2")]) == 0
    doc = json.loads((tmp_path / "e2" / "results-semseg.json").read_text())
    assert "1 nyud val images" in doc["description"]
    cached = json.loads((run / "ra-points.json").read_text())
    assert any(str(moved) in key for key in cached)  # cached apart from the run's own data
    _photo(tmp_path / "photos" / "a.png")
    assert main(["eval", str(run), "data=folder", f"data.root={tmp_path / 'photos'}"]) == 2
    assert main(["eval", str(run), "data=pascal", f"data.root={moved}"]) == 2


def test_demo_on_a_nyud_fixture(tmp_path, nyud):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "1", "--per-lambda", "--lambdas", "1",
                 "--task", "semseg",
                 "data=nyud", f"data.root={nyud}", "data.size=[32,32]", "data.workers=0",
                 "model.decoder_dims=[32,16,16]", "model.latent_channels=16",
                 "model.hyper_channels=16", "model.prelim_width=16"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert f"on nyud ({nyud})" in doc["description"] and "1 val images" in doc["description"]
    assert "rate-accuracy on nyud" in (out / "report.html").read_text()
    assert torch.isfinite(torch.tensor(doc["results"]["bpp"])).all()
