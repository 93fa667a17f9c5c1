"""Self-supervised pretraining (issue 11): the objective, the masking, disjoint data,
exact resume, and an exported file that loads into the downstream Backbone."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
import torch
from safetensors import safe_open

from icm_core.cli.hydra_app import pretrain_app
from icm_core.config import load_config
from icm_core.config.compose import EXPERIMENT_STORE, compose_config
from icm_core.config.schema import BackboneConfig, ExperimentConfig
from icm_core.data.synthetic import SPLITS, SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.models.backbone import SYNTHETIC_WEIGHTS, Backbone
from icm_core.training.pretrain import (
    PRETRAIN_STORE,
    MIMModel,
    PretrainConfig,
    PretrainDataConfig,
    Pretrainer,
    block_mask,
    card_path,
    check_disjoint,
    export_backbone,
    load_pretrain_config,
    patch_targets,
    portable_paths,
    random_mask,
)

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "icm_core/conf/pretrain").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine it spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(out_dir, **kw) -> PretrainConfig:
    """A 4-block EVA-02-tiny on 64 px crops (4x4 patches) of a pool of 4 scenes."""
    base = load_pretrain_config(["pretrain=quick", f"out_dir={out_dir}"])
    data = replace(base.data, length=4, render_size=[64, 64], size=[64, 64])
    return replace(base, data=data, **kw)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- the objective ---------------------------------------------------------------------------
def test_patch_targets_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 32, 48)).astype(np.float32)
    p = 16
    ref = np.empty((2, 2, 3, p * p * 3), np.float64)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                patch = img[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].transpose(1, 2, 0).ravel()
                ref[b, i, j] = (patch - patch.mean()) / np.sqrt(patch.var() + 1e-6)
    got = patch_targets(torch.from_numpy(img), p, norm_pix=True).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    raw = patch_targets(torch.from_numpy(img), p, norm_pix=False).numpy()
    np.testing.assert_array_equal(raw[1, 1, 2], img[1, :, 16:32, 32:48].transpose(1, 2, 0).ravel())


@pytest.mark.parametrize("make", [block_mask, random_mask])
def test_masks_hide_exactly_the_asked_count_and_follow_the_generator(make):
    for seed in range(20):
        n = 5 + seed % 9
        m = make(4, 4, n, torch.Generator().manual_seed(seed))
        assert m.shape == (4, 4) and m.dtype == torch.bool and int(m.sum()) == n
        assert torch.equal(m, make(4, 4, n, torch.Generator().manual_seed(seed)))
    big = make(8, 8, 32, torch.Generator().manual_seed(0))
    assert int(big.sum()) == 32


def test_block_mask_hides_contiguous_blocks():
    """Block-wise masks are mostly runs of neighbours, unlike scattered random patches."""
    def neighbours(m):  # masked patches with a masked 4-neighbour
        p = torch.nn.functional.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
        n = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
        return ((n > 0) & m).float().sum() / m.sum()

    g = torch.Generator().manual_seed(0)
    block = np.mean([neighbours(block_mask(14, 14, 59, g)) for _ in range(10)])
    rand = np.mean([neighbours(random_mask(14, 14, 59, g)) for _ in range(10)])
    assert block > 0.9 and block > rand


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    t = Pretrainer(tiny(tmp_path, lr=1e-3, warmup=0, steps=1000), progress=False)
    images, masks = t.batch(0)
    losses = [t.update(images, masks)["loss"] for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_masked_pixels_never_reach_the_encoder(tmp_path):
    """Whatever the hidden pixels hold (even NaN), features and predictions are bit-identical;
    only the reconstruction target of the hidden patches changes."""
    torch.manual_seed(0)
    model = MIMModel(tiny(tmp_path)).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 64, 64, generator=g)
    masks = torch.stack([block_mask(4, 4, 8, g) for _ in range(2)])
    pix = masks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None].expand_as(images)
    wild = torch.where(pix, torch.randn(images.shape, generator=g) * 100, images)
    poisoned = torch.where(pix, torch.full_like(images, float("nan")), images)
    with torch.no_grad():
        a, b = model(images, masks), model(wild, masks)
        feats_nan = model.encode(poisoned, masks)
        c = model(images.clone().index_fill_(3, torch.tensor([0]), 0.5), masks)
    assert torch.equal(a.features, b.features) and torch.equal(a.features, feats_nan)
    assert torch.equal(a.prediction, b.prediction)
    assert torch.equal(a.target[~masks], b.target[~masks])
    assert not torch.equal(a.target[masks], b.target[masks])
    # not vacuous: the encoder does read the visible pixels (column 0 holds visible patches)
    assert (~masks[:, :, 0]).any() and not torch.equal(a.features, c.features)
    # and the hidden patches enter as the learned mask token (SimMIM), not as zeros
    with torch.no_grad():
        model.mask_token.add_(1.0)
        assert not torch.equal(model.encode(images, masks), a.features)


def test_loss_counts_only_the_masked_patches(tmp_path):
    torch.manual_seed(0)
    model = MIMModel(tiny(tmp_path)).eval()
    g = torch.Generator().manual_seed(2)
    images, masks = torch.rand(2, 3, 64, 64, generator=g), torch.stack(
        [random_mask(4, 4, 6, g) for _ in range(2)])
    with torch.no_grad():
        out = model(images, masks)
    pred, target = out.prediction.numpy().astype(np.float64), out.target.numpy().astype(np.float64)
    ref = ((pred - target) ** 2).mean(-1)[masks.numpy()].mean()
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)


# --- data: disjoint from every downstream split ----------------------------------------------
@pytest.mark.parametrize("split", [s for s in SPLITS if s != "pretrain"])
def test_downstream_scenes_are_refused(split):
    with pytest.raises(ConfigError, match="data.split"):
        PretrainDataConfig(split=split)
    with pytest.raises(ConfigError, match="overlap"):
        check_disjoint(SyntheticScenes(split=split, size=(16, 16), length=4))
    with pytest.raises(ConfigError, match="data.split"):
        load_pretrain_config(["pretrain=quick", f"data.split={split}"])


def test_overlap_is_judged_by_the_scene_seeds_not_the_label():
    class Relabelled(SyntheticScenes):  # says 'pretrain', renders train scenes
        def scene_seed(self, index):
            return super().scene_seed(index) - SPLITS.index("pretrain") * 2**31

    ds = Relabelled(split="pretrain", size=(16, 16), length=4)
    with pytest.raises(ConfigError, match="overlap"):
        check_disjoint(ds)


def test_pretrain_scene_seeds_are_used_by_no_downstream_dataset():
    first, last = check_disjoint(SyntheticScenes(split="pretrain", size=(16, 16), seed=3,
                                                 length=1000))
    for split in ("train", "val", "test"):
        for seed in range(8):
            ds = SyntheticScenes(split=split, size=(16, 16), seed=seed, length=2**31)
            lo, hi = ds.scene_seed(0), ds.scene_seed(2**31 - 1)
            assert hi < first or lo > last


# --- runs: reproducible and resumable --------------------------------------------------------
def _losses(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"])
            for r in map(json.loads, (run / "history.jsonl").read_text().splitlines())]


def test_resume_continues_exactly(tmp_path):
    cfg = tiny(tmp_path / "a", steps=6, warmup=2)
    straight = Pretrainer(cfg, progress=False)
    straight.fit()
    part = Pretrainer(replace(cfg, out_dir=str(tmp_path / "b")), progress=False)
    part.fit(until=3)
    assert part.step == 3 and (tmp_path / "b/LATEST").read_text() == "ckpt-000003"
    with pytest.raises(ConfigError, match="resume=true"):  # never silently start over
        Pretrainer(replace(cfg, out_dir=str(tmp_path / "b")), progress=False).fit()
    with pytest.raises(ConfigError, match="lr"):  # nor continue a different run
        Pretrainer(replace(cfg, out_dir=str(tmp_path / "b"), resume=True, lr=1e-4),
                   progress=False).fit()
    rest = Pretrainer(replace(cfg, out_dir=str(tmp_path / "b"), resume=True, workers=1),
                      progress=False)
    tail = rest.fit()
    assert [r["step"] for r in tail] == [4, 5, 6]
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    mine, theirs = _state(straight.model), _state(rest.model)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert (tmp_path / "b/backbone.safetensors").is_file()


def test_worker_processes_prepare_the_same_batches(tmp_path):
    t = Pretrainer(tiny(tmp_path, workers=2), progress=False)
    ahead = list(t.batches(3, 6))
    for step, (images, masks) in zip(range(3, 6), ahead):
        ref_images, ref_masks = t.batch(step)
        assert torch.equal(images, ref_images) and torch.equal(masks, ref_masks)
    assert not torch.equal(ahead[0][0], ahead[1][0])
    assert ahead[0][1].sum(dim=(1, 2)).tolist() == [8] * t.cfg.batch_size  # 50 % of 4x4


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    a = Pretrainer(tiny(tmp_path / "a", steps=2), progress=False).fit()
    b = Pretrainer(tiny(tmp_path / "b", steps=2), progress=False).fit()
    c = Pretrainer(tiny(tmp_path / "c", steps=2, seed=1), progress=False).fit()
    assert [r["loss"] for r in a] == [r["loss"] for r in b] != [r["loss"] for r in c]


# --- export ----------------------------------------------------------------------------------
def _strings(tree):
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in _strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in _strings(v)]
    return [tree] if isinstance(tree, str) else []


def test_portable_paths_strips_absolute_paths_only():
    card = {"config": {"out_dir": "/home/me/runs/pretrain", "backbone": {"weights": "C:\\w\\b.pt"},
                       "rel": "runs/p", "none": "none", "n": 3, "flag": None},
            "list": ["/abs/x.safetensors", "x", 1.5], "note": "area 0.35-1, aspect 3/4-4/3"}
    assert portable_paths(card) == {
        "config": {"out_dir": "pretrain", "backbone": {"weights": "b.pt"}, "rel": "runs/p",
                   "none": "none", "n": 3, "flag": None},
        "list": ["x.safetensors", "x", 1.5], "note": "area 0.35-1, aspect 3/4-4/3"}


def test_shipped_card_names_no_absolute_path():
    card = json.loads(card_path(SYNTHETIC_WEIGHTS).read_text())
    found = [s for s in _strings(card) if Path(s).is_absolute() or PureWindowsPath(s).drive]
    assert not found, f"absolute paths in the shipped card: {found}"
    assert portable_paths(card) == card


def test_export_loads_strictly_into_backbone_and_matches_its_card(tmp_path):
    cfg = tiny(tmp_path / "run", steps=2)
    t = Pretrainer(cfg, progress=False)
    t.fit()
    out = tmp_path / "ship" / "eva02_tiny_synthetic.safetensors"
    card = export_backbone(tmp_path / "run", out)
    assert json.loads(card_path(out).read_text()) == card
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["bytes"] == out.stat().st_size <= 12 * 2**20
    assert card["data"]["split"] == "pretrain" and card["objective"]["labels_used"] == "none"
    assert card["optimization"]["steps"] == 2 and card["wall_time_s"] >= 0
    assert {"platform", "cpu_count", "torch", "device"} <= card["machine"].keys()
    first, last = card["data"]["scene_seed_range"]
    assert last - first == cfg.data.length - 1
    # the run folder was an absolute path of this machine: the card keeps only its name
    assert Path(cfg.out_dir).is_absolute() and card["config"]["out_dir"] == "run"
    assert str(tmp_path) not in card_path(out).read_text()

    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())  # noqa: SIM118
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys)
    b = cfg.backbone
    arch = Backbone(BackboneConfig(name=b.name, depth=b.depth, patch_size=b.patch_size,
                                   img_size=b.img_size), load_weights=False)
    assert keys == set(arch.model.state_dict())  # no missing, no unexpected key
    loaded = Backbone(BackboneConfig(name=b.name, depth=b.depth, patch_size=b.patch_size,
                                     img_size=b.img_size, weights=str(out)))
    assert loaded.pretrained
    # tiny_random's img_size (224) loads it too: timm resamples the position grid
    assert Backbone(BackboneConfig(name=b.name, depth=b.depth, patch_size=b.patch_size,
                                   img_size=224, weights=str(out))).pretrained
    # the same encoder as in pretraining, up to fp16 rounding; also at another input size
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref, got = t.model.encoder.eval()(x), loaded.eval()(x)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=0.02, atol=0.02)


def test_export_refuses_an_oversized_file(tmp_path):
    Pretrainer(tiny(tmp_path / "run", steps=1), progress=False).fit()
    with pytest.raises(ConfigError, match="MB"):
        export_backbone(tmp_path / "run", tmp_path / "x.safetensors", max_bytes=1000)
    assert not (tmp_path / "x.safetensors").exists()


# --- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_ships_under_12_mb(preset):
    cfg = load_pretrain_config([f"pretrain={preset}"])
    assert cfg.data.split == "pretrain" and cfg.backbone.out_indices is None
    arch = Backbone(cfg.backbone, load_weights=False)
    assert 2 * sum(v.numel() for v in arch.model.state_dict().values()) <= 12 * 2**20


@pytest.mark.parametrize("override, field", [
    ("mask_ratio=0.95", "mask_ratio"), ("mask_ratio=0.05", "mask_ratio"),
    ("mask_mode=grid", "mask_mode"), ("steps=0", "steps"), ("lr=0", "lr"), ("batch_size=0", "batch_size"),
    ("warmup=-1", "warmup"), ("decoder_layers=3", "decoder_layers"), ("loss=huber", "loss"),
    ("data.size=[60,60]", "data.size"), ("data.size=[128,128]", "data.size"),
    ("data.min_scale=0", "data.min_scale"), ("data.length=0", "data.length"),
    ("backbone.out_indices=[0,1,2,3]", "backbone.out_indices"), ("device=tpu", "device"),
    ("workers=-1", "workers"),
])
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_pretrain_config(["pretrain=quick", override])


def test_one_hydra_loader_composes_both_trees():
    """``load_pretrain_config`` and ``load_config`` are the one ``compose_config`` under two
    primary configs: the same tree, the same errors."""
    pre = compose_config("pretrain_root", PretrainConfig, ["pretrain=quick", "steps=3"], PRETRAIN_STORE)
    assert pre == load_pretrain_config(["pretrain=quick", "steps=3"]) and pre.steps == 3
    exp = compose_config("config", ExperimentConfig, ["task=depth"], EXPERIMENT_STORE)
    assert exp == load_config(["task=depth"]) and exp.tasks == ["depth"]
    with pytest.raises(ConfigError, match="overrides"):
        compose_config("no_such_root", PretrainConfig, [], PRETRAIN_STORE)


def test_unknown_override_is_a_config_error():
    with pytest.raises(ConfigError, match="mask_rate"):
        load_pretrain_config(["pretrain=quick", "mask_rate=0.5"])


def test_hydra_app_runs_a_preset_and_exits_2_on_bad_input(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["icm pretrain", "pretrain=quick", f"out_dir={run}", "steps=1",
                                      "data.length=2", "data.render_size=[64,64]"])
    pretrain_app()
    assert (run / "backbone.safetensors").is_file() and len(_losses(run)) == 1
    monkeypatch.setattr(sys, "argv", ["icm pretrain", "pretrain=quick", f"out_dir={tmp_path / 'x'}",
                                      "data.split=train"])
    with pytest.raises(SystemExit) as e:
        pretrain_app()
    assert e.value.code == 2 and "data.split" in capsys.readouterr().err
