import json
from pathlib import Path

import pytest
import timm
import torch

from icm_core import ConfigError
from icm_core.cli import main, model_info
from icm_core.config import BackboneConfig, load_config
from icm_core.models import adapters as ad
from icm_core.models.backbone import Backbone
from icm_core.models.decoder import TransformerDecoder
from icm_core.models.icm import build_model
from icm_core.tasks import TASKS

from .helpers import tiny_config

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parent.parent / "icm_core/conf/experiment").glob("*.yaml"))
ALL_TASKS = "tasks=[semseg,depth,normals,boundary,human_parts,saliency]"


@pytest.fixture(scope="module")
def six_task_model():
    torch.manual_seed(0)
    return build_model(tiny_config(ALL_TASKS))


def test_paper_preset_trains_041_percent_of_the_backbone():
    info = model_info(["experiment=paper"])
    assert info["backbone"] == "eva02_large_patch14_448.mim_m38m_ft_in22k"
    assert info["trainable_backbone_params"] == 1_253_376
    assert round(info["trainable_percent"], 2) == 0.41
    # DoRA r8 on q,k,v of 24 blocks: (8*1024 + 1024*8 + 1024) * 3 * 24 float32 + safetensors header
    assert 1_253_376 * 4 < info["adapter_bytes"] < 1_253_376 * 4 + 40_000  # header: 216 key names


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_builds(experiment):
    info = model_info([f"experiment={experiment}"])
    cfg = load_config([f"experiment={experiment}"])
    expected = {"dora": None, "lora": None, "full": info["backbone_params"],
                "fixed": 0, "scratch": info["backbone_params"]}[cfg.adapter.mode]
    if expected is None:
        assert 0 < info["trainable_backbone_params"] < 0.05 * info["backbone_params"]
    else:
        assert info["trainable_backbone_params"] == expected
    assert info["compression"] == (experiment not in ("dora_baseline", "full_baseline"))


def test_icm_info_cli_prints_json(capsys):
    assert main(["info", "adapter=lora_r16_qv", "task=depth"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tasks"] == ["depth"] and info["adapter"]["targets"] == ["q", "v"]
    assert info["pretrained"] is False


def test_bad_override_is_a_config_error(capsys):
    assert main(["info", "adapter=nonexistent"]) == 2
    assert "ConfigError" in capsys.readouterr().err


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("size", [(64, 64), (97, 130)])
def test_forward_shapes_every_task_odd_sizes(six_task_model, task, size):
    m = six_task_model
    m.set_task(task)
    C = TASKS[task].out_channels("synthetic")
    out = m(torch.rand(2, 3, *size), return_attention=True)
    assert out.task == task
    assert out.prediction.shape == (2, C, *size)
    assert out.preliminary.shape == (2, C, *size)
    hp, wp = -(-size[0] // 64) * 4, -(-size[1] // 64) * 4
    assert out.y_hat.shape == (2, 16, hp, wp)
    assert out.bit_map.shape == (2, hp, wp) and (out.bpp > 0).all()
    # keys at stride 64 in every stage; queries grow 4x per stage
    nk = {a.scores.shape[-1] for a in out.attention}
    assert nk == {(hp // 4) * (wp // 4)}
    nq = [a.scores.shape[-2] for a in out.attention]
    assert nq[1] == 4 * nq[0] and nq[2] == 4 * nq[1]


def test_decoder_cross_scale_fusion_is_learnable():
    dec = TransformerDecoder(8, 3, [16, 16, 16], [1, 1, 1], 2)
    out = dec(torch.randn(1, 8, 8, 8), (128, 128)).prediction
    out.square().mean().backward()
    alphas = [s.alpha for s in dec.stages]
    assert alphas[0] is None  # stage 1 has no previous stage
    assert all(a.grad is not None and a.grad.abs() > 0 for a in alphas[1:])


def test_full_decoder_variant_attends_everywhere():
    dec = TransformerDecoder(8, 3, [16, 16, 16, 16], [1, 1, 1, 1], 2, kind="full")
    out = dec(torch.randn(1, 8, 4, 4), (64, 64), return_attention=True)
    assert out.prediction.shape == (1, 3, 64, 64)
    assert [a.scores.shape[-1] for a in out.attention] == [16, 64, 256, 1024]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.decoder_dims"):
        load_config(["model.decoder=full"])
    with pytest.raises(ConfigError, match="adapter.targets"):
        load_config(["adapter.targets=[q,x]"])
    with pytest.raises(ConfigError, match="backbone.weights=none"):
        build_model(load_config(["adapter=scratch", "backbone.weights=/nonexistent.safetensors"]))
    with pytest.raises(ConfigError, match="no such file"):
        Backbone(BackboneConfig(depth=4, weights="/nonexistent.safetensors"))


def test_fused_checkpoint_loads_into_unfused_backbone(tmp_path):
    torch.manual_seed(1)
    fused = timm.create_model("eva02_tiny_patch14_224", num_classes=0, depth=4, dynamic_img_size=True)
    assert any(k.endswith("attn.qkv.weight") for k in fused.state_dict())
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-zero q/v biases too
    torch.save(fused.state_dict(), tmp_path / "fused.pth")
    bb = Backbone(BackboneConfig(depth=4, patch_size=14, weights=str(tmp_path / "fused.pth")))
    assert bb.pretrained and hasattr(bb.model.blocks[0].attn, "q_proj")
    x = torch.rand(1, 3, 56, 84)
    ref = fused.forward_intermediates((x - bb.mean) / bb.std, indices=bb.out_indices,
                                      intermediates_only=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(bb(x), ref))


ADAPTER_CASES = [("dora", ["q", "k", "v"]), ("lora", ["q", "v"]), ("dora", ["o", "up", "down"]),
                 ("lora", ["up", "down"]), ("dora", ["q", "k", "v", "o", "up", "down"])]


@pytest.mark.parametrize("mode,targets", ADAPTER_CASES)
def test_every_adapter_tensor_trains_and_is_in_the_forward_path(mode, targets):
    torch.manual_seed(0)
    tl = "[" + ",".join(targets) + "]"
    # without compression: rounding the latent would hide small changes from the output
    m = build_model(tiny_config(f"adapter.mode={mode}", f"adapter.targets={tl}", "tasks=[semseg,depth]",
                                "model.compression=false"))
    m.set_task("depth")
    x = torch.rand(2, 3, 64, 64)
    named = dict(m.backbone.named_parameters())
    mine = {n: p for n, p in named.items() if ".depth." in n or n.endswith(".depth")}
    other = {n: p.detach().clone() for n, p in named.items() if ".semseg." in n}
    assert mine and other
    assert all(p.requires_grad for p in mine.values())
    assert not any(named[n].requires_grad for n in other)
    assert not any(p.requires_grad for n, p in named.items() if "lora_" not in n)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    got_grad = dict.fromkeys(mine, False)
    for _ in range(2):  # B starts at zero: A's gradient appears at the second step
        opt.zero_grad()
        m(x).prediction.square().mean().backward()
        for n, p in mine.items():
            got_grad[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step()
    assert all(got_grad.values()), [n for n, g in got_grad.items() if not g]
    assert all(torch.equal(named[n], v) for n, v in other.items())  # the other task is untouched
    m.eval()
    with torch.no_grad():
        base = m(x).prediction
        for n, p in mine.items():
            saved = p.detach().clone()
            # random, not constant: a constant A shift meets LayerNorm's zero-mean inputs
            p.add_(torch.randn_like(p) * (p.abs().mean() + 0.1))
            # exact comparison: a random-init ViT damps the change, but any change is a path
            changed = not torch.equal(m(x).prediction, base)
            p.copy_(saved)
            assert changed, f"{n} is bypassed in the forward pass"
        assert torch.equal(m(x).prediction, base)  # deterministic: equality means 'bypassed'


@pytest.mark.parametrize("mode,expect_backbone_grad", [("full", True), ("scratch", True), ("fixed", False)])
def test_full_fixed_scratch_modes(mode, expect_backbone_grad):
    m = build_model(tiny_config(f"adapter={mode}"))
    params = list(m.backbone.parameters())
    assert all(p.requires_grad == expect_backbone_grad for p in params)
    report = m.trainable_parameters()
    assert report.trainable_backbone_params == (report.backbone_params if expect_backbone_grad else 0)


def test_saving_one_task_leaves_the_others_bit_identical():
    torch.manual_seed(0)
    m = build_model(tiny_config("tasks=[semseg,depth]"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    depth_before = {k: v.clone() for k, v in m.task_state_dict("depth").items()}
    semseg = m.task_state_dict("semseg")
    assert all(k.startswith(("adapter.", "head.")) for k in semseg)
    assert not any("depth" in k for k in semseg)
    # a fresh model takes the semseg weights; its depth weights stay as they were
    torch.manual_seed(1)
    other = build_model(tiny_config("tasks=[semseg,depth]"))
    other_depth = {k: v.clone() for k, v in other.task_state_dict("depth").items()}
    other.load_task_state_dict("semseg", semseg)
    assert all(torch.equal(v, semseg[k]) for k, v in other.task_state_dict("semseg").items())
    assert all(torch.equal(v, other_depth[k]) for k, v in other.task_state_dict("depth").items())
    assert all(torch.equal(v, depth_before[k]) for k, v in m.task_state_dict("depth").items())
    x = torch.rand(1, 3, 64, 64)
    m.eval()
    other.eval()
    m.set_task("semseg")
    other.set_task("semseg")
    with torch.no_grad():
        assert torch.equal(m(x).prediction, other(x).prediction)
    assert m.fingerprint("semseg") == other.fingerprint("semseg")
    assert m.fingerprint("depth") != other.fingerprint("depth")


def test_adapter_presets_match_the_paper_study():
    assert ad.PRESETS["dora_r8_qkv"].targets == ["q", "k", "v"]
    assert ad.PRESETS["lora_r16_qv"].mode == "lora" and ad.PRESETS["lora_r16_qv"].rank == 16
    for name, preset in ad.PRESETS.items():
        cfg = load_config([f"adapter={name}"]).adapter
        assert (cfg.mode, cfg.rank, list(cfg.targets)) == (preset.mode, preset.rank, list(preset.targets))


def test_other_timm_vits_work_with_unfused_targets():
    cfg = load_config(["backbone.name=vit_tiny_patch16_224", "backbone.depth=4", "adapter.targets=[o,up,down]"])
    m = build_model(cfg)
    assert m(torch.rand(1, 3, 64, 96)).prediction.shape == (1, 6, 64, 96)
    assert 0 < m.trainable_parameters().trainable_backbone_params
    with pytest.raises(ConfigError, match="fused qkv cannot be adapted"):
        build_model(load_config(["backbone.name=vit_tiny_patch16_224", "backbone.depth=4"]))


def test_task_files_round_trip_one_task(tmp_path):
    from icm_core.checkpoint import load_task, save_task

    torch.manual_seed(0)
    m = build_model(tiny_config("tasks=[semseg,depth]"))
    with torch.no_grad():
        for p in m.heads["depth"].parameters():
            p.add_(0.1)
    save_task(m, "depth", tmp_path / "depth.safetensors")
    other = build_model(tiny_config("tasks=[semseg,depth]"))
    semseg = other.task_state_dict("semseg")
    load_task(other, "depth", tmp_path / "depth.safetensors")
    assert other.fingerprint("depth") == m.fingerprint("depth")
    assert all(torch.equal(v, semseg[k]) for k, v in other.task_state_dict("semseg").items())
    with pytest.raises(ConfigError, match="holds task 'depth'"):
        load_task(other, "semseg", tmp_path / "depth.safetensors")
