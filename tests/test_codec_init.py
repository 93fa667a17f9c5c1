"""Warm-starting the codec (issue 22's lever): a head pretrained on the image itself, saved once,
loaded into every task head of a new run where names and shapes match, fine-tuned there; the
trained run needs nothing but its own files."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from icm_core.errors import ConfigError
from icm_core.models.entropy import TABLE_BUFFERS
from icm_core.training.checkpoint import load_checkpoint
from icm_core.training.codec_init import load_codec, pretrain_codec, save_codec
from icm_core.training.trainer import Trainer

from .helpers import TINY, tiny_config

RUN = [*TINY, "data.val_length=1", "train.eval_every=0", "train.max_steps=2"]


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory):
    cfg = tiny_config()
    head, history = pretrain_codec(cfg, steps=3, seed=5)
    path = tmp_path_factory.mktemp("codec") / "codec.safetensors"
    save_codec(head, cfg, path, history)
    return path, head, history


def test_pretraining_codes_and_reconstructs_and_is_reproducible(codec_file):
    _, head, history = codec_file
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(h["bpp"] > 0 and 0 < h["psnr"] < 100 for h in history)
    again, _ = pretrain_codec(tiny_config(), steps=3, seed=5)
    for (k, a), b in zip(head.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    other, _ = pretrain_codec(tiny_config(), steps=3, seed=6)
    assert not torch.equal(other.decoder.in_proj.weight, head.decoder.in_proj.weight)


def test_a_new_run_starts_from_the_codec_where_shapes_match(codec_file, tmp_path):
    path, _, _ = codec_file
    saved = load_file(str(path))
    assert not any(k.rsplit(".", 1)[-1] in TABLE_BUFFERS for k in saved)  # rebuilt, not stored
    cold = Trainer(tiny_config(*RUN, "task=semseg", f"out_dir={tmp_path / 'cold'}"), device="cpu")
    warm = Trainer(tiny_config(*RUN, "task=semseg", f"train.codec_init={path}",
                               f"out_dir={tmp_path / 'warm'}"), device="cpu")
    head, fresh = warm.model.heads["semseg"].state_dict(), cold.model.heads["semseg"].state_dict()
    report = warm.codec_init["semseg"]
    # semseg has 12 classes, the codec 3 (RGB): the layers sized by the task stay fresh
    assert {"prelim.head.weight", "proj.weight", "decoder.out_proj.weight"} <= set(report["fresh"])
    for k in report["fresh"]:
        assert torch.equal(head[k], fresh[k]), k
    entropy = [k for k in head if k.startswith("entropy.") and
               k.rsplit(".", 1)[-1] not in TABLE_BUFFERS]
    assert entropy and set(entropy) <= set(report["loaded"])
    assert "decoder.stages.0.blocks.0.attn.q.weight" in report["loaded"]
    for k in report["loaded"]:
        assert torch.equal(head[k], saved[k]), k
    moved = [k for k in report["loaded"] if not torch.equal(fresh[k], saved[k])]
    assert len(moved) > 0.9 * len(report["loaded"])  # pretrained values, not initial ones


def test_variable_rate_steps_stay_the_tasks_own(codec_file, tmp_path):
    path, _, _ = codec_file
    warm = Trainer(tiny_config(*RUN, "model.variable_rate=true", "model.rate_lambdas=[0.1,1]",
                               "task=normals",
                               f"train.codec_init={path}", f"out_dir={tmp_path}"), device="cpu")
    assert {"q_scale_enc", "q_scale_dec"} <= set(warm.codec_init["normals"]["fresh"])
    # normals has 3 channels like RGB: everything else comes from the codec
    assert set(warm.codec_init["normals"]["fresh"]) == {"q_scale_enc", "q_scale_dec"}


def test_the_trained_run_decodes_without_the_init_file(codec_file, tmp_path):
    path, _, _ = codec_file
    mine = tmp_path / "codec.safetensors"
    shutil.copy(path, mine)
    trainer = Trainer(tiny_config(*RUN, "task=depth", f"train.codec_init={mine}",
                                  f"out_dir={tmp_path / 'run'}"), device="cpu")
    trainer.fit(progress=False)
    mine.unlink()
    model, _ = load_checkpoint(tmp_path / "run")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.predict(x, "depth").prediction,
                       trainer.model.predict(x, "depth").prediction)


def test_the_command_writes_a_file_a_run_starts_from(tmp_path):
    from icm_core.cli.main import main

    out = tmp_path / "c.safetensors"
    assert main(["pretrain-codec", "--steps", "1", "--out", str(out), *TINY]) == 0
    head = Trainer(tiny_config(*RUN, f"train.codec_init={out}", f"out_dir={tmp_path / 'r'}"),
                   device="cpu").model.heads["semseg"]
    assert torch.equal(head.entropy.h_a[0].weight, load_file(str(out))["entropy.h_a.0.weight"])


def test_bad_codec_files_are_refused_by_name_and_leave_the_head_alone(codec_file, tmp_path):
    path, _, _ = codec_file
    head = Trainer(tiny_config(*RUN, f"out_dir={tmp_path / 'r'}"), device="cpu").model.heads["semseg"]
    before = {k: v.clone() for k, v in head.state_dict().items()}
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"entropy.h_a.0.weight": torch.zeros(1)}, str(foreign))
    wide = tmp_path / "wide.safetensors"
    wcfg = tiny_config("model.latent_channels=32")
    save_codec(pretrain_codec(wcfg, steps=1)[0], wcfg, wide)
    for bad, words in ((tmp_path / "absent.safetensors", "no such file"),
                       (junk, "not a readable safetensors"), (foreign, "format"),
                       (wide, "latent_channels 32")):
        with pytest.raises(ConfigError, match=words) as e:
            load_codec(head, bad)
        assert str(bad) in str(e.value)
        for k, v in head.state_dict().items():
            assert torch.equal(v, before[k]), (bad, k)
    with pytest.raises(ConfigError, match="steps"):
        pretrain_codec(tiny_config(), steps=0)
