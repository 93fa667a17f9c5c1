"""Untrusted inputs (issue 8): partial or foreign checkpoints, hostile run folders, odd images.

Each must end in an ICMError naming what is wrong, with nothing loaded and nothing written.
"""

import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from icm_core.cli.main import main
from icm_core.data.images import load_image
from icm_core.errors import ConfigError, DatasetError
from icm_core.files import write_text
from icm_core.models import adapters as ad
from icm_core.models.icm import build_model
from icm_core.training.checkpoint import (
    load_checkpoint,
    load_config_file,
    load_task,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from icm_core.training.trainer import Trainer

from .helpers import tiny_config

TWO = ("tasks=[semseg,depth]", "data.val_length=1")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-task run (checkpoint at step 2, history.jsonl); tests copy it to break it."""
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_config(*TWO, "train.max_steps=2", f"out_dir={out}")).fit(progress=False)
    return out


@pytest.fixture
def run_copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _read(f):
    with safe_open(str(f), "pt") as sf:
        return sf.metadata(), {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118


def _snapshot(model):
    return {(t, k): v.clone() for t in model.tasks for k, v in model.task_state_dict(t).items()}


def _same(model, snapshot) -> bool:
    now = _snapshot(model)
    return now.keys() == snapshot.keys() and all(torch.equal(now[k], v) for k, v in snapshot.items())


def _fails(capsys, argv, error: str) -> str:
    """Run the CLI: exit code 2 and exactly one stderr line ``error: ...``; returns the line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{error}: "), err
    return err[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit gray pixels but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


# -- item 7: partial task files, adapter mismatches -------------------------------------------
@pytest.mark.parametrize("drop_head", [False, True])
def test_partial_task_file_is_refused_naming_the_missing_keys(run_copy, drop_head):
    f = resolve_checkpoint_dir(run_copy) / "task-depth.safetensors"
    meta, state = _read(f)
    gone = [sorted(k for k in state if k.startswith("adapter."))[0]]
    if drop_head:
        gone.append("head.proj.weight")
    save_file({k: v for k, v in state.items() if k not in gone}, str(f), metadata=meta)
    model = build_model(tiny_config(*TWO))
    before = _snapshot(model)
    with pytest.raises(ConfigError, match="missing") as e:
        load_checkpoint(run_copy, model=model)
    assert all(k in str(e.value) for k in gone)
    assert _same(model, before)  # semseg, read first and intact, was not loaded either
    partial = {k: v for k, v in state.items() if k not in gone}
    with pytest.raises(ConfigError, match="missing"):
        model.load_task_state_dict("depth", partial)
    with pytest.raises(ConfigError, match=gone[0].removeprefix("adapter.")):
        ad.load_adapter_state_dict(model.backbone, "depth",
                                   {k[8:]: v for k, v in partial.items() if k.startswith("adapter.")})
    assert _same(model, before)


def test_adapter_mismatch_is_a_config_error_naming_both_values(run, tmp_path):
    ckpt = resolve_checkpoint_dir(run)
    r4 = build_model(tiny_config(*TWO, "adapter.rank=4"))
    with pytest.raises(ConfigError, match=r"rank is '8'.*adapter\.rank='4'"):
        load_checkpoint(run, model=r4)
    with pytest.raises(ConfigError, match=r"rank is '8'.*adapter\.rank='4'"):
        load_task(r4, "depth", ckpt / "task-depth.safetensors")
    qv = build_model(tiny_config(*TWO, "adapter.targets=[q,v]"))
    with pytest.raises(ConfigError, match=r"targets is 'k,q,v'.*'q,v'"):
        load_checkpoint(run, model=qv)
    # a file from before the adapter metadata: the shapes still refuse it, as a ConfigError
    meta, state = _read(ckpt / "task-depth.safetensors")
    old = {k: meta[k] for k in ("format", "task", "backbone", "backbone_hash", "adapter_mode")}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=old)
    before = _snapshot(r4)
    with pytest.raises(ConfigError, match="wrong shape"):
        load_task(r4, "depth", tmp_path / "old.safetensors")
    assert _same(r4, before)


# -- item 8: resume never half-loads and never silently restarts ------------------------------
def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


BREAKAGES = {
    "truncated task file": lambda c: _truncate(c / "task-depth.safetensors"),
    "missing task file": lambda c: (c / "task-depth.safetensors").unlink(),
    "no trainer.pt": lambda c: (c / "trainer.pt").unlink(),
    "corrupt trainer.pt": lambda c: (c / "trainer.pt").write_bytes(b"PK\x03\x04 not a zip"),
    "LATEST to a missing folder": lambda c: (c.parent / "LATEST").write_text("ckpt-000099"),
    "config.yaml not YAML": lambda c: (c / "config.yaml").write_text("tasks: [semseg\n"),
}


def test_resume_refuses_a_broken_checkpoint_and_keeps_the_history(run, tmp_path):
    trainer = Trainer(tiny_config(*TWO, "train.max_steps=4", "resume=true", f"out_dir={tmp_path}"))
    before = _snapshot(trainer.model)
    for i, (what, breakage) in enumerate(BREAKAGES.items()):
        out = shutil.copytree(run, tmp_path / f"r{i}")
        history = (out / "history.jsonl").read_bytes()
        breakage(out / "ckpt-000002")
        trainer.out_dir = out
        with pytest.raises(ConfigError):
            trainer.fit(progress=False)
        assert (out / "history.jsonl").read_bytes() == history, what
        assert trainer.global_step == 0 and _same(trainer.model, before), what
    trainer.out_dir = shutil.copytree(run, tmp_path / "intact")
    assert trainer.resume() and trainer.global_step == 2
    _, saved = _read(tmp_path / "intact" / "ckpt-000002" / "task-depth.safetensors")
    mine = trainer.model.task_state_dict("depth")
    assert all(torch.equal(mine[k], v) for k, v in saved.items())


def test_trainer_start_cleans_orphans_and_saves_its_rng(tmp_path):
    (tmp_path / ".ckpt-000005.partial").mkdir()
    (tmp_path / ".ckpt-000005.partial" / "task-semseg.safetensors").write_bytes(b"half")
    (tmp_path / ".LATEST.x1y2.tmp").write_text("ckpt-000005")
    trainer = Trainer(tiny_config("train.max_steps=1", "data.val_length=1", "resume=true",
                                  f"out_dir={tmp_path}"))
    left = []  # at the first step, before any save: the orphans must already be gone
    trainer.subscribe(lambda e: left.append(sorted(p.name for p in tmp_path.glob(".*"))))
    trainer.fit(progress=False)  # no checkpoint at all: resume=true starts at step 0
    assert left[0] == [] and trainer.global_step == 1
    assert resolve_checkpoint_dir(tmp_path).name == "ckpt-000001"
    # the run's own generator state travels with the checkpoint and comes back on resume
    # (per process: tests/test_reproducible.py)
    state = trainer.generator.get_state()
    trainer.save()
    saved = torch.load(tmp_path / "ckpt-000001" / "trainer.pt", weights_only=True)
    assert saved["rng_device"] == "cpu" and [s.tolist() for s in saved["rng"]] == [state.tolist()]
    torch.empty(10).uniform_(generator=trainer.generator)
    assert trainer.resume()
    assert torch.equal(trainer.generator.get_state(), state)


# -- item 11: images and CLI outputs ----------------------------------------------------------
def test_load_image_scales_by_the_true_bit_depth(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgb.png").permute(1, 2, 0), rgb / 255.0,
                               atol=1e-7)

    g16 = np.array([[0, 257, 32768], [4096, 60000, 65535]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    x = load_image(tmp_path / "g16.png")
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    for c in range(3):
        np.testing.assert_allclose(x[c], g16 / 65535.0, atol=1e-7)

    pal = Image.fromarray(np.array([[0, 1], [1, 2]], dtype=np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    want = np.array([[[255, 0, 0], [0, 0, 255]], [[0, 0, 255], [10, 20, 30]]]) / 255.0
    np.testing.assert_allclose(load_image(tmp_path / "pal.png").permute(1, 2, 0), want, atol=1e-7)

    rgba = np.dstack([rgb, np.zeros((5, 7), np.uint8)])  # fully transparent: alpha is ignored
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png").permute(1, 2, 0), rgb / 255.0,
                               atol=1e-7)

    la = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), mode="LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(load_image(tmp_path / "la.png")[2], rgb[..., 0] / 255.0, atol=1e-7)

    Image.fromarray(np.array([[0.25, 1.5]], np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(DatasetError, match=r"0.25\.\.1.5, not in \[0, 1\]"):
        load_image(tmp_path / "f.tiff")
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i32.tiff")
    with pytest.raises(DatasetError, match="no known white level"):
        load_image(tmp_path / "i32.tiff")


def test_encode_codes_a_16_bit_image_like_its_8_bit_twin(run, tmp_path, capsys):
    v = np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8)
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(np.dstack([v, v, v])).save(tmp_path / "rgb8.png")
    for name in ("g16", "rgb8"):
        assert main(["encode", str(tmp_path / f"{name}.png"), "--checkpoint", str(run),
                     "-o", str(tmp_path / f"{name}.icm")]) == 0
    assert (tmp_path / "g16.icm").read_bytes() == (tmp_path / "rgb8.icm").read_bytes()


@pytest.mark.parametrize("size,named", [((20000, 20), "20000x20 px"),
                                        ((20000, 20000), "400000000 pixels")])
def test_oversized_images_are_refused_before_anything_else(tmp_path, capsys, size, named):
    (tmp_path / "big.png").write_bytes(_png_header(*size))
    out = tmp_path / "big.icm"
    # refused from the header alone: before the (here missing) checkpoint is even looked at
    line = _fails(capsys, ["encode", str(tmp_path / "big.png"), "--checkpoint",
                           str(tmp_path / "nowhere"), "-o", str(out)], "DatasetError")
    assert named in line and "16384" in line and not out.exists()


def test_decode_into_an_existing_file_and_encode_onto_a_folder(run, tmp_path, capsys):
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "in.png")
    assert main(["encode", str(tmp_path / "in.png"), "--checkpoint", str(run),
                 "-o", str(tmp_path / "x.icm")]) == 0
    (tmp_path / "taken").write_text("keep me")
    line = _fails(capsys, ["decode", str(tmp_path / "x.icm"), "--checkpoint", str(run),
                           "-o", str(tmp_path / "taken")], "ConfigError")
    assert "taken: is a file" in line and (tmp_path / "taken").read_text() == "keep me"
    (tmp_path / "dir").mkdir()
    _fails(capsys, ["encode", str(tmp_path / "in.png"), "--checkpoint", str(run),
                    "-o", str(tmp_path / "dir")], "ConfigError")
    assert not any((tmp_path / "dir").iterdir())


def test_truncated_safetensors_in_a_checkpoint_is_a_one_line_error(run_copy, tmp_path, capsys):
    _truncate(resolve_checkpoint_dir(run_copy) / "task-semseg.safetensors")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "in.png")
    line = _fails(capsys, ["encode", str(tmp_path / "in.png"), "--checkpoint", str(run_copy),
                           "-o", str(tmp_path / "x.icm")], "ConfigError")
    assert "task-semseg.safetensors" in line and "truncated or corrupt" in line
    assert not (tmp_path / "x.icm").exists()


# -- item 12: hostile run folders, file modes, orphans -----------------------------------------
def test_config_interpolations_are_refused_not_resolved(run_copy, monkeypatch):
    monkeypatch.setenv("ICM_SECRET", "s3cr3t-value")
    monkeypatch.setenv("HOME", "/home/h0me-value")
    ckpt = resolve_checkpoint_dir(run_copy)
    text = (ckpt / "config.yaml").read_text()
    text = text.replace("name: quick", "name: ${oc.env:HOME}", 1)
    (ckpt / "config.yaml").write_text(text + "extra: pre-${oc.env:ICM_SECRET}\n")
    with pytest.raises(ConfigError, match=r"\['name', 'extra'\] hold interpolations") as e:
        load_config_file(ckpt)
    assert "h0me" not in str(e.value) and "s3cr3t" not in str(e.value)
    with pytest.raises(ConfigError, match="interpolations"):
        load_checkpoint(run_copy)


def test_latest_must_name_a_checkpoint_folder_of_its_own_run(run_copy, tmp_path):
    evil = shutil.copytree(resolve_checkpoint_dir(run_copy), tmp_path / "elsewhere" / "ckpt-000002")
    (run_copy / "ckpt-000009").symlink_to(evil, target_is_directory=True)
    for name in ("../elsewhere/ckpt-000002", str(evil), "ckpt-000002/../../elsewhere/ckpt-000002",
                 "ckpt-000009", "../../../etc"):
        (run_copy / "LATEST").write_text(name)
        with pytest.raises(ConfigError, match="must name a ckpt-NNNNNN folder inside"):
            resolve_checkpoint_dir(run_copy)
    (run_copy / "LATEST").write_text("ckpt-000002\n")
    assert resolve_checkpoint_dir(run_copy) == run_copy / "ckpt-000002"


def test_files_respect_the_umask_and_saves_clean_orphans(run, tmp_path):
    model, _ = load_checkpoint(run)
    out = tmp_path / "out"
    (out / ".ckpt-000005.partial").mkdir(parents=True)
    (out / ".LATEST.abc123.tmp").write_text("ckpt-000005")
    old = os.umask(0o022)
    try:
        ckpt = save_checkpoint(out, model, 7)
        write_text(tmp_path / "a.txt", "a")
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "b")
    finally:
        os.umask(old)
    files = [out / "LATEST", *ckpt.iterdir(), tmp_path / "a.txt"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o644" for f in files}
    assert oct((tmp_path / "b.txt").stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "ckpt-000007"]
