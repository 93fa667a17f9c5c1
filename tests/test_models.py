import json
import re
from pathlib import Path

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from icm_core import ConfigError
from icm_core.cli.main import main
from icm_core.codec import coder
from icm_core.config import load_config
from icm_core.config.schema import BackboneConfig
from icm_core.evaluation.cost import model_info
from icm_core.models import adapters as ad
from icm_core.models.backbone import Backbone
from icm_core.models.decoder import TransformerDecoder
from icm_core.models.icm import build_model
from icm_core.tasks.registry import TASKS
from icm_core.training.trainer import set_trainable

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
    # the whole EVA-02-L (the paper's 304 M), its pooling norm included though it is pruned
    assert info["backbone_params"] == 303_993_792
    assert round(info["trainable_percent"], 2) == 0.41
    # DoRA r8 on q,k,v of 24 blocks: (8*1024 + 1024*8 + 1024) * 3 * 24 float32 + safetensors header
    assert 1_253_376 * 4 < info["adapter_bytes"] < 1_253_376 * 4 + 40_000  # header: 216 key names


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_builds(experiment):
    info = model_info([f"experiment={experiment}"])
    cfg = load_config([f"experiment={experiment}"])
    used = info["backbone_params"] - 2 * 1024  # EVA-02-L's pooling norm is pruned: it never trains
    expected = {"dora": None, "lora": None, "full": used, "fixed": 0, "scratch": used}[cfg.adapter.mode]
    if expected is None:
        assert 0 < info["trainable_backbone_params"] < 0.05 * info["backbone_params"]
    else:
        assert info["trainable_backbone_params"] == expected
    assert info["compression"] == (experiment not in ("dora_baseline", "full_baseline"))


def test_icm_info_cli_prints_json(capsys):
    assert main(["info", "adapter=lora_r16_qv", "task=depth"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tasks"] == ["depth"] and info["adapter"]["targets"] == ["q", "v"]
    # one word for the weights: the default backbone is the shipped synthetic-pretrained one
    assert info["weights_source"] == "synthetic" and "pretrained" not in info


def test_bad_override_is_a_config_error(capsys):
    assert main(["info", "adapter=nonexistent"]) == 2
    assert "ConfigError" in capsys.readouterr().err


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("size", [(64, 64), (97, 130)])
def test_forward_shapes_every_task_odd_sizes(six_task_model, task, size):
    m = six_task_model
    C = TASKS[task].out_channels("synthetic")
    out = m(torch.rand(2, 3, *size), task=task, return_attention=True)
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
    set_trainable(m, ["depth"])  # what a trainer of depth alone decides
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
        m(x, task="depth").prediction.square().mean().backward()
        for n, p in mine.items():
            got_grad[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step()
    assert all(got_grad.values()), [n for n, g in got_grad.items() if not g]
    assert all(torch.equal(named[n], v) for n, v in other.items())  # the other task is untouched
    m.eval()
    with torch.no_grad():
        base = m(x, task="depth").prediction
        for n, p in mine.items():
            saved = p.detach().clone()
            # random, not constant: a constant A shift meets LayerNorm's zero-mean inputs
            p.add_(torch.randn_like(p) * (p.abs().mean() + 0.1))
            # exact comparison: a random-init ViT damps the change, but any change is a path
            changed = not torch.equal(m(x, task="depth").prediction, base)
            p.copy_(saved)
            assert changed, f"{n} is bypassed in the forward pass"
        assert torch.equal(m(x, task="depth").prediction, base)  # deterministic: equality means 'bypassed'


@pytest.mark.parametrize("mode,expect_backbone_grad", [("full", True), ("scratch", True), ("fixed", False)])
def test_full_fixed_scratch_modes(mode, expect_backbone_grad):
    m = build_model(tiny_config(f"adapter={mode}"))
    params = list(m.backbone.parameters())
    assert all(p.requires_grad == expect_backbone_grad for p in params)
    report = m.trainable_parameters()
    used = report.backbone_params - 2 * 192  # EVA-02-tiny's pooling norm is pruned
    assert sum(p.numel() for p in params) == used
    assert report.trainable_backbone_params == (used if expect_backbone_grad else 0)


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
    with torch.no_grad():
        assert torch.equal(m(x, task="semseg").prediction, other(x, task="semseg").prediction)
    assert coder.fingerprint(m, "semseg") == coder.fingerprint(other, "semseg")
    assert coder.fingerprint(m, "depth") != coder.fingerprint(other, "depth")


def test_adapter_presets_match_the_paper_study():
    assert ad.PRESETS["dora_r8_qkv"].targets == ["q", "k", "v"]
    assert ad.PRESETS["lora_r16_qv"].mode == "lora" and ad.PRESETS["lora_r16_qv"].rank == 16
    for name, preset in ad.PRESETS.items():
        cfg = load_config([f"adapter={name}"]).adapter
        assert (cfg.mode, cfg.rank, list(cfg.targets)) == (preset.mode, preset.rank, list(preset.targets))


def test_other_timm_vits_work_with_unfused_targets():
    cfg = load_config(["backbone=tiny_random", "backbone.name=vit_tiny_patch16_224", "backbone.depth=4", "adapter.targets=[o,up,down]"])
    m = build_model(cfg)
    classes = TASKS["semseg"].out_channels("synthetic")
    assert m(torch.rand(1, 3, 64, 96)).prediction.shape == (1, classes, 64, 96)
    assert 0 < m.trainable_parameters().trainable_backbone_params
    with pytest.raises(ConfigError, match="fused qkv cannot be adapted"):
        build_model(load_config(["backbone=tiny_random", "backbone.name=vit_tiny_patch16_224", "backbone.depth=4"]))


def test_task_files_round_trip_one_task(tmp_path):
    from icm_core.training.checkpoint import load_task, save_task

    torch.manual_seed(0)
    m = build_model(tiny_config("tasks=[semseg,depth]"))
    with torch.no_grad():
        for p in m.heads["depth"].parameters():
            p.add_(0.1)
    save_task(m, "depth", tmp_path / "depth.safetensors")
    other = build_model(tiny_config("tasks=[semseg,depth]"))
    semseg = other.task_state_dict("semseg")
    load_task(other, "depth", tmp_path / "depth.safetensors")
    assert coder.fingerprint(other, "depth") == coder.fingerprint(m, "depth")
    assert all(torch.equal(v, semseg[k]) for k, v in other.task_state_dict("semseg").items())
    with pytest.raises(ConfigError, match="holds task 'depth'"):
        load_task(other, "semseg", tmp_path / "depth.safetensors")


# -- issue 8: numeric config fields are validated where they are set ---------------------------
BAD_VALUES = [
    ("model.latent_channels=15", "model.latent_channels"), ("model.latent_channels=0", "model.latent_channels"),
    ("model.hyper_channels=0", "model.hyper_channels"), ("model.prelim_width=0", "model.prelim_width"),
    ("model.decoder_heads=0", "model.decoder_heads"), ("model.decoder_dims=[64,0,16]", "model.decoder_dims"),
    ("model.decoder_depths=[1,0,1]", "model.decoder_depths"), ("train.max_steps=0", "train.max_steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.lr=0", "train.lr"), ("train.lr=nan", "train.lr"),
    ("train.weight_decay=-1e-6", "train.weight_decay"), ("train.poly_power=-1", "train.poly_power"),
    ("train.eval_every=-1", "train.eval_every"), ("train.checkpoint_every=-5", "train.checkpoint_every"),
    ("train.seed=-1", "train.seed"), ("data.size=[64]", "data.size"), ("data.size=[0,64]", "data.size"),
    ("data.size=[64,64,64]", "data.size"), ("data.train_length=0", "data.train_length"),
    ("data.val_length=0", "data.val_length"), ("data.seed=-3", "data.seed"),
    ("backbone.patch_size=0", "backbone.patch_size"), ("backbone.img_size=0", "backbone.img_size"),
    ("backbone.depth=3", "backbone.depth"), ("backbone.out_indices=[0,1,1,2]", "backbone.out_indices"),
    ("adapter.rank=0", "adapter.rank"), ("adapter.alpha=-2", "adapter.alpha"), ("lmbda=0", "lmbda"),
]


@pytest.mark.parametrize("override,field", BAD_VALUES)
def test_bad_numeric_values_are_config_errors_naming_the_field(override, field):
    with pytest.raises(ConfigError, match="^" + re.escape(field + "=")):
        load_config([override])


# -- issue 8: the padding stride follows the backbone's patch size -----------------------------
@pytest.mark.parametrize("patch", [8, 14, 16])
def test_decode_equals_forward_for_every_patch_size(patch):
    torch.manual_seed(0)
    m = build_model(tiny_config(f"backbone.patch_size={patch}")).eval()
    assert m.stride == 4 * patch and m.backbone.stride == patch
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        ref = m(x)
    hp, wp = m.padded_size(70, 90)
    assert ref.y_hat.shape[-2:] == (hp // patch, wp // patch)
    out = coder.decode(m, coder.encode(m, x))
    assert torch.equal(out.y_hat, ref.y_hat)
    assert torch.equal(out.prediction, ref.prediction)


def test_a_patch_larger_than_the_position_grid_is_refused():
    with pytest.raises(ConfigError, match=r"backbone.patch_size=256 is larger than backbone.img_size=128"):
        load_config(["backbone.patch_size=256"])


# -- issue 8: no trainable parameter outside the forward pass (DDP needs them all used) ---------
@pytest.mark.parametrize("mode", ["full", "scratch"])
def test_every_trainable_backbone_parameter_gets_a_gradient(mode):
    m = build_model(tiny_config(f"adapter={mode}", "backbone.depth=6", "backbone.out_indices=[0,1,2,3]"))
    assert len(m.backbone.vit.blocks) == 4  # blocks after the last feature block are pruned
    m(torch.rand(2, 3, 64, 64)).prediction.square().mean().backward()
    unused = [n for n, p in m.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # before the fix: fc_norm.weight, fc_norm.bias


def test_whole_network_checkpoint_loads_into_the_pruned_backbone(tmp_path):
    torch.manual_seed(2)
    full = timm.create_model("eva02_tiny_patch14_224", num_classes=0, depth=6, patch_size=16,
                             qkv_fused=False, dynamic_img_size=True)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = full.state_dict()
    assert "fc_norm.weight" in state and "blocks.5.attn.q_proj.weight" in state
    torch.save(state, tmp_path / "full.pth")
    cfg = BackboneConfig(depth=6, out_indices=[0, 1, 2, 3], weights=str(tmp_path / "full.pth"))
    bb = Backbone(cfg)
    assert bb.pretrained and bb.pruned_params == 2 * 192 + 2 * sum(p.numel() for p in full.blocks[5].parameters())
    x = torch.rand(1, 3, 64, 96)
    ref = full.forward_intermediates((x - bb.mean) / bb.std, indices=[0, 1, 2, 3], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(bb(x), ref))
    del state["blocks.1.norm1.weight"]  # an in-use tensor missing is still an error
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"missing \['blocks.1.norm1.weight'\]"):
        Backbone(BackboneConfig(depth=6, out_indices=[0, 1, 2, 3], weights=str(tmp_path / "partial.pth")))


# -- issue 8: attention scores are materialized only where they are used ------------------------
class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (the scores, if they are built)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", ["low", "full"])
def test_decoder_without_attention_maps_matches_the_explicit_scores(kind):
    n = 3 if kind == "low" else 4
    torch.manual_seed(0)
    dec = TransformerDecoder(8, 3, [16] * n, [2] * n, 2, kind=kind)
    y = torch.randn(1, 8, *((8, 12) if kind == "low" else (2, 3)))
    results = {}
    for keep in (True, False):
        dec.zero_grad()
        yy = y.clone().requires_grad_(True)
        out = dec(yy, (16 * y.shape[-2], 16 * y.shape[-1]), return_attention=keep)
        out.prediction.square().mean().backward()
        results[keep] = (out.prediction.detach(), yy.grad, [p.grad.clone() for p in dec.parameters()])
        assert (out.attention is not None) == keep
    (p1, g1, w1), (p0, g0, w0) = results[True], results[False]
    torch.testing.assert_close(p0, p1, rtol=0, atol=1e-5)
    torch.testing.assert_close(g0, g1, rtol=0, atol=1e-5)
    for a, b in zip(w0, w1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_full_decoder_never_builds_a_score_matrix_unless_asked():
    dec = TransformerDecoder(8, 3, [16] * 4, [1] * 4, 2, kind="full").eval()
    y = torch.randn(1, 8, 4, 4)  # last stage at 32 x 32: 1024 tokens
    scores = 2 * 1024 * 1024  # one (heads, N, N) matrix of that stage
    with torch.no_grad():
        with _LargestTensor() as probe:
            dec(y, (64, 64))
        assert probe.largest < scores // 10  # the largest is a (16, 64, 64) feature map
        with _LargestTensor() as probe:
            dec(y, (64, 64), return_attention=True)
        assert probe.largest >= scores
