import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.cli.main import main
from icm_core.config import load_config
from icm_core.config.schema import DataConfig
from icm_core.errors import ConfigError, DatasetError
from icm_core.inspection.outputs import write_data_preview, write_prediction


def test_help_runs_as_console_script():
    r = subprocess.run([sys.executable, "-m", "icm_core.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: icm" in r.stdout


def test_data_preview_writes_a_grid(tmp_path):
    out = tmp_path / "sub" / "preview.png"
    assert main(["data", "preview", "synthetic", "--out", str(out), "-n", "2", "--height", "32",
                 "--width", "40"]) == 0
    img = Image.open(out)
    # 7 columns (RGB + six tasks) of 40 px plus 4 px gaps; 2 rows of 32 px plus title
    assert img.size == (7 * 44 + 4, 2 * 36 + 4 + 14)
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))  # no temporary left behind


def test_bare_info_describes_the_shipped_synthetic_backbone(capsys):
    """No overrides: the default tells the truth, the shipped synthetic-pretrained backbone
    (as experiment=quick builds it), named in the one weights vocabulary."""
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weights_source"] == "synthetic" and "pretrained" not in info
    assert info["backbone"] == load_config(["experiment=quick"]).backbone.name
    assert load_config([]).backbone == load_config(["experiment=quick"]).backbone
    assert "not ImageNet" in info["weights_notice"]


def test_random_weights_only_when_asked(capsys):
    assert main(["info", "backbone=tiny_random"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weights_source"] == "random" and "RANDOM" in info["weights_notice"]


def test_decoded_predictions_are_written_by_the_library(tmp_path):
    """What ``icm decode`` writes: class indices as PNG, values as float32 NPY, a preview each."""
    labels = torch.zeros(6, 5, 7)
    labels[3] = 1  # class 3 everywhere
    png, preview = write_prediction(tmp_path / "out", "x", "semseg", labels)
    assert png.name == "x.semseg.png" and np.asarray(Image.open(png)).tolist() == [[3] * 7] * 5
    assert Image.open(preview).size == (7, 5)
    depth = torch.linspace(0, 1, 35).view(1, 5, 7)
    npy, _ = write_prediction(tmp_path / "out", "x", "depth", depth)
    arr = np.load(npy, allow_pickle=False)
    assert npy.name == "x.depth.npy" and arr.dtype == np.float32
    np.testing.assert_allclose(arr, depth.numpy())
    assert not list((tmp_path / "out").glob(".*tmp"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write there"):
        write_prediction(tmp_path / "file", "x", "depth", depth)


def test_data_preview_refuses_a_dataset_that_is_not_there(tmp_path):
    missing = tmp_path / "NYUD_MT"
    with pytest.raises(DatasetError, match="NYUD_MT"):
        write_data_preview(tmp_path / "p.png", DataConfig(name="nyud", root=str(missing)))
    assert not (tmp_path / "p.png").exists()
