"""icm_core.inspection.image*: bit allocation, latents, error maps, attention and DoRA views.

References are computed here from the formulas (numpy), not by the code under test.
"""

import dataclasses
import math
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core import ConfigError, DatasetError
from icm_core.codec import coder
from icm_core.inspection import attention as att
from icm_core.inspection import dora, runs
from icm_core.inspection import image as ins
from icm_core.inspection.error_maps import error_map
from icm_core.models import adapters as ad
from icm_core.models.entropy import _SCALE_TABLE
from icm_core.models.icm import build_model
from icm_core.training.checkpoint import save_checkpoint

from .helpers import tiny_config


def _spread_latent(model):
    """Scale the projection to y so that the untrained entropy model spends real bits."""
    with torch.no_grad():
        for h in model.heads.values():
            h.proj.weight.mul_(40)
    return model


@pytest.fixture(scope="module")
def model():
    return _spread_latent(build_model(tiny_config("tasks=[semseg,depth]")))


@pytest.fixture(scope="module")
def odd_image():
    torch.manual_seed(1)
    return torch.rand(3, 70, 90)  # padded to 128 x 128: the padding is coded too


def _checkerboard(M, h, w):
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    even = (i + j) % 2 == 0
    return np.stack([even if c < M // 2 else ~even for c in range(M)])


def test_bit_allocation_sections_add_up_to_the_stream(model, odd_image):
    ba = ins.bit_allocation(model, odd_image, "depth")
    stream = coder.encode(model, odd_image, "depth")
    assert ba.total_bytes == len(stream) == len(bytes(stream))
    assert ba.header_bytes + ba.z_bytes + ba.step1_bytes + ba.step2_bytes == len(stream)
    s = stream.sections
    assert (ba.z_bytes, ba.step1_bytes, ba.step2_bytes) == (s.z, s.step1, s.step2)
    assert ba.bpp == pytest.approx(8 * len(stream) / (70 * 90))
    assert ba.bits_y > 100  # the test means something: real bits are spent
    assert tuple(ba.bits_map.shape) == (8, 8) and ba.valid_hw == (5, 6)
    assert float(ba.bits_map.sum()) == pytest.approx(stream.bits_y, rel=1e-5)
    assert ba.estimated_bits == pytest.approx(stream.bits_y + stream.bits_z, rel=1e-5)
    assert float(ba.bits_per_channel.sum()) == pytest.approx(stream.bits_y, rel=1e-5)
    assert ba.bits_per_channel.shape == (16,)
    # the two checkerboard steps, from the eval forward's likelihoods and a numpy mask
    out = model.predict(odd_image[None], "depth")
    bits = -np.log2(out.likelihoods["y"][0].double().numpy())
    mask = _checkerboard(16, 8, 8)
    np.testing.assert_allclose(ba.step1_map.numpy(), (bits * mask).sum(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ba.step2_map.numpy(), (bits * ~mask).sum(0), rtol=1e-5, atol=1e-4)
    # spread over the image, each position's bits cover its 16 x 16 pixels
    over = ba.map_over_image()
    assert over.shape == (70, 90)
    assert over[:64, :80].sum() == pytest.approx(float(ba.bits_map[:4, :5].sum()), rel=1e-6)


def test_inspections_are_cached_until_the_weights_change(model):
    cache = ins.InspectionCache()
    a = ins.inspect_image(model, 0, "semseg", cache=cache)
    assert a.target is not None and a.target.shape == (64, 64)  # a validation scene has labels
    assert ins.inspect_image(model, 0, "semseg", cache=cache) is a and cache.misses == 1
    w = model.heads["semseg"].decoder.out_proj.bias
    with torch.no_grad():
        w.add_(1.0)
    try:
        b = ins.inspect_image(model, 0, "semseg", cache=cache)
        assert b is not a and cache.misses == 2
        assert torch.allclose(b.prediction, a.prediction + 1.0, atol=1e-5)
    finally:
        with torch.no_grad():
            w.sub_(1.0)


def _gauss_bits(v, s):
    """-log2 of compressai's Gaussian likelihood of integer residual v at table scale s."""
    phi = np.vectorize(lambda t: 0.5 * math.erfc(-t / math.sqrt(2)))
    lik = phi((0.5 - np.abs(v)) / s) - phi((-0.5 - np.abs(v)) / s)
    return -np.log2(np.maximum(lik, 1e-9))


def test_latent_priors_and_what_the_spatial_context_saved(model):
    i = ins.inspect_image(model, 0, "depth")
    e = i.entropy
    mask = e.step1_mask[0].numpy()
    eb, hb = i.element_bits.double().numpy(), i.hyper_only_bits.double().numpy()
    np.testing.assert_allclose(hb[mask], eb[mask], atol=1e-6)  # step 1 uses the hyperprior
    y, mu0, s0 = (t.double().numpy() for t in (i.y, e.hyper_means[0], e.hyper_scales[0]))
    table = np.array(_SCALE_TABLE)
    s = table[np.searchsorted(table[:-1], s0, side="left")]  # the coder's scale
    ref = _gauss_bits(np.round(y - mu0), s)
    np.testing.assert_allclose(hb[~mask], ref[~mask], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(i.spatial_gain.numpy(), (hb - eb).sum(0), rtol=1e-5, atol=1e-4)
    order = i.channel_order()
    bpc = i.bits.bits_per_channel.numpy()
    assert sorted(order) == list(range(16)) and np.all(np.diff(bpc[order]) <= 0)
    p = i.latent_planes(order[0])
    c = order[0]
    np.testing.assert_array_equal(p["coded mean"].numpy()[mask[c]],
                                  e.hyper_means[0, c].numpy()[mask[c]])
    np.testing.assert_array_equal(p["coded mean"].numpy()[~mask[c]],
                                  e.spatial_means[0, c].numpy()[~mask[c]])
    assert float(p["bits"].sum()) == pytest.approx(float(bpc[c]), rel=1e-5)
    with pytest.raises(ConfigError, match="channels 0..15"):
        i.latent_planes(16)


def test_error_maps_against_numpy():
    logits = torch.zeros(3, 2, 3)
    want = np.array([[0, 1, 2], [2, 1, 0]])
    for c in range(3):
        logits[c][torch.from_numpy(want == c)] = 5.0
    label = torch.tensor([[0, 2, 2], [2, 255, 1]])
    e = error_map("semseg", logits, label)
    np.testing.assert_array_equal(e, [[0, 1, 0], [0, np.nan, 1]])

    pred = torch.tensor([[[1.0, -2.0], [3.0, 2.5]]])
    gt = torch.tensor([[[1.5, 1.0], [0.0, 2.0]]])
    np.testing.assert_allclose(error_map("depth", pred, gt), [[0.5, 1.0 - 1e-9], [np.nan, 0.5]])

    n_pred = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).reshape(3, 1, 3)
    n_gt = torch.tensor([[0.0, 0.0, -1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).reshape(3, 1, 3)
    n_gt[:, 0, 2] = 0  # invalid pixel
    np.testing.assert_allclose(error_map("normals", n_pred, n_gt), [[90.0, 0.0, np.nan]], atol=1e-9)

    s_logit = torch.tensor([[[0.0, 2.0, -1.0]]])
    s_gt = torch.tensor([[[1.0, 0.0, 255.0]]])
    sig = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
    np.testing.assert_allclose(error_map("saliency", s_logit, s_gt),
                               [[abs(sig[0] - 1), sig[1], np.nan]])
    with pytest.raises(ConfigError, match="does not fit"):
        error_map("depth", pred, torch.zeros(1, 3, 3))


@pytest.fixture(scope="module")
def wide(model):
    torch.manual_seed(2)
    return ins.inspect_image(model, torch.rand(3, 128, 192), "semseg")  # 2 x 3 keys


def test_a_clicked_decoder_query_weighs_the_keys_to_one(wide):
    alphas = att.stage_alphas(wide)
    assert set(alphas) == {2, 3} and all(a == pytest.approx(0.1) for a in alphas.values())
    for stage in (1, 2, 3):
        for head in (None, 0, 1):
            for fused in (True, False):
                q = att.decoder_query(wide, stage, 100.0, 150.0, head, fused=fused)
                assert q.weights.shape == (2, 3) and q.weights.sum() == pytest.approx(1, abs=1e-6)
                assert q.key_spacing == 64
    m = att.decoder_maps(wide, 3)
    q = att.decoder_query(wide, 3, 100.0, 150.0, 1, fused=False)
    assert m.query_hw == (16, 24)
    assert abs(q.query_pixel[0] - 100) <= 4 and abs(q.query_pixel[1] - 150) <= 4
    raw = m.raw[0, 1, q.query].double().numpy()
    np.testing.assert_allclose(q.weights.ravel(), np.exp(raw) / np.exp(raw).sum(), rtol=1e-6)
    np.testing.assert_allclose(q.over_image[70, 130], q.weights[1, 2])  # the key cell of (70, 130)
    fused = att.decoder_query(wide, 3, 100.0, 150.0, 1, fused=True)
    assert not np.allclose(fused.weights, q.weights)  # the fusion term is there
    with pytest.raises(ConfigError, match="stages"):
        att.decoder_query(wide, 4, 0, 0)
    with pytest.raises(ConfigError, match="heads 0..1"):
        att.decoder_query(wide, 1, 0, 0, head=2)


def test_backbone_attention_and_rollout(model, wide):
    b = att.backbone_attention(model, wide)
    assert att.backbone_attention(model, wide) is b  # captured once per inspection
    assert len(b.maps) == 4 and b.grid == (8, 12) and b.prefix == 1
    assert b.maps[0].shape == (3, 97, 97)
    r = att.rollout(b)
    np.testing.assert_allclose(r.sum(-1).numpy(), 1.0, atol=1e-9)
    ref = np.eye(97)
    for a in b.maps:
        a_hat = (a.double().numpy().mean(0) + np.eye(97)) / 2
        ref = (a_hat / a_hat.sum(1, keepdims=True)) @ ref
    np.testing.assert_allclose(r.numpy(), ref, atol=1e-10)
    for kw in (dict(use_rollout=True), dict(head=2), dict(block=1)):
        q = att.backbone_query(wide, b, 40.0, 100.0, **kw)
        assert q.weights.shape == (8, 12)
        assert q.weights.sum() + q.prefix_weight == pytest.approx(1, abs=1e-6)
        assert q.query == 1 + 2 * 12 + 6  # patch row 40 // 16, column 100 // 16
    np.testing.assert_allclose(att.backbone_query(wide, b, 40.0, 100.0, head=2).weights.ravel(),
                               b.maps[-1][2, 31, 1:].double().numpy())
    with pytest.raises(ConfigError, match="blocks 0..3"):
        att.rollout(b, 4)


@pytest.fixture
def perturbed(model):
    """The shared model with one layer's depth adapter moved off its initialization, restored
    afterwards."""
    name = dora.adapted_layers(model)[4]
    lay = dora._layer(model, name)
    saved = [t.detach().clone() for t in (lay.lora_B["depth"].weight,
                                          lay.lora_magnitude_vector["depth"].weight)]
    yield model, name, lay
    with torch.no_grad():
        lay.lora_B["depth"].weight.copy_(saved[0])
        lay.lora_magnitude_vector["depth"].weight.copy_(saved[1])


def test_dora_view_recomposes_the_merged_weight(perturbed):
    m, name, lay = perturbed
    untouched = dora.dora_view(m, "semseg", name)
    np.testing.assert_allclose(untouched.magnitude, untouched.w0_norms, rtol=1e-5)  # m = ||W0||
    assert untouched.rank_of("lora") == 0 and untouched.rank_of("delta") == 0
    with torch.no_grad():
        lay.lora_B["depth"].weight.normal_(0, 0.05)
        lay.lora_magnitude_vector["depth"].weight.mul_(torch.linspace(0.5, 1.5, 192))
    v = dora.dora_view(m, "depth", name)
    W0 = lay.get_base_layer().weight.detach().double().numpy()
    A, B = (lay.lora_A["depth"].weight.detach().double().numpy(),
            lay.lora_B["depth"].weight.detach().double().numpy())
    mag = lay.lora_magnitude_vector["depth"].weight.detach().double().numpy()
    D = W0 + 1.0 * B @ A  # alpha = rank: s = 1
    ref = mag[:, None] * D / np.linalg.norm(D, axis=1, keepdims=True)
    np.testing.assert_allclose(v.weight, ref, atol=1e-10)
    merged = dora.merged_weight(m, "depth", name).double().numpy()
    np.testing.assert_allclose(v.weight, merged, atol=1e-5)  # peft's own merge
    ad.route(m.backbone, "depth")  # and the layer computes with exactly this weight
    x = torch.randn(5, 192)
    b = lay.get_base_layer().bias  # k_proj has none in EVA-02
    bias = 0.0 if b is None else b.detach().double().numpy()
    np.testing.assert_allclose(lay(x).detach().double().numpy(), x.double().numpy() @ ref.T + bias,
                               atol=1e-4)
    cos = (W0 * ref).sum(1) / np.linalg.norm(W0, axis=1) / np.linalg.norm(ref, axis=1)
    np.testing.assert_allclose(v.direction_cosine, cos, atol=1e-12)
    assert v.rank_of("lora") == 8 and v.rank_of("delta") > 8  # DoRA is not limited to rank r
    c = dora.compare_tasks(m, "depth", "depth", name)
    assert c.update_cosine == pytest.approx(1.0) and c.magnitude_correlation == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="no adapter"):
        dora.dora_view(m, "depth", "blocks.0.mlp.fc2")


@pytest.fixture(scope="module")
def lora_model():
    return build_model(tiny_config("adapter=lora_r16_qv"))


def test_lora_view_is_rank_r(lora_model):
    m = lora_model
    name = dora.adapted_layers(m)[0]
    lay = dora._layer(m, name)
    saved = lay.lora_B["semseg"].weight.detach().clone()
    with torch.no_grad():
        lay.lora_B["semseg"].weight.normal_(0, 0.05)
    v = dora.dora_view(m, "semseg", name)
    merged = dora.merged_weight(m, "semseg", name).double().numpy()
    with torch.no_grad():
        lay.lora_B["semseg"].weight.copy_(saved)
    assert v.mode == "lora" and v.rank == 16
    np.testing.assert_allclose(v.weight, merged, atol=1e-5)
    np.testing.assert_allclose(v.magnitude, np.linalg.norm(v.weight, axis=1), rtol=1e-12)
    assert v.rank_of("delta") == v.rank_of("lora") == 16


def test_resolve_image_sources(tmp_path, model):
    rgb = (np.arange(20 * 30 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    ref = rgb.transpose(2, 0, 1) / 255.0
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes(),
                Image.fromarray(rgb), rgb, torch.from_numpy(ref).float()[None]):
        s = ins.resolve_image(src)
        assert s.targets == {} and s.image.shape == (3, 20, 30)
        np.testing.assert_allclose(s.image.numpy(), ref, atol=1e-6)
    with pytest.raises(DatasetError, match="val_length is 32"):
        ins.resolve_image(32, model.cfg)
    with pytest.raises(DatasetError, match=r"\(H, W, 3\) uint8"):
        ins.resolve_image(np.zeros((4, 4)))
    with pytest.raises(DatasetError, match="not a readable image"):
        ins.resolve_image(b"not an image")
    head = model.heads["semseg"]
    em, head.entropy = head.entropy, None  # as built with model.compression=false
    try:
        with pytest.raises(ConfigError, match="no compression"):
            ins.inspect_image(model, rgb, "semseg")
    finally:
        head.entropy = em
    assert model.heads["semseg"].entropy is em


def test_sweep_runs_and_their_allocations(tmp_path, model, lora_model, odd_image):
    cfg = model.cfg
    try:
        for lmbda in (2.0, 0.5):  # a sweep over lambda: same settings otherwise
            model.cfg = dataclasses.replace(cfg, lmbda=lmbda)
            save_checkpoint(tmp_path / "sweep" / f"l{lmbda}", model, step=1)
    finally:
        model.cfg = cfg
    save_checkpoint(tmp_path / "sweep" / "lora", lora_model, step=1)  # another adapter: not in it
    (tmp_path / "sweep" / "notes").mkdir()
    found = ins.sweep_runs(tmp_path / "sweep" / "l2.0")
    assert [(lm, d.name) for lm, d in found] == [(0.5, "l0.5"), (2.0, "l2.0")]
    a = ins.load_run(found[0][1])
    assert ins.load_run(found[0][1]) is a and a.cfg.lmbda == 0.5
    ba = ins.bit_allocation(a, odd_image, "depth")
    assert ba.total_bytes == len(coder.encode(a, odd_image, "depth"))
    same_weights = ins.bit_allocation(model, odd_image, "depth")
    assert ba.total_bytes == same_weights.total_bytes


def test_run_cache_keeps_the_most_recently_used_runs(tmp_path, model, monkeypatch):
    monkeypatch.setattr(runs, "RUN_CACHE_SIZE", 2)
    monkeypatch.setattr(runs, "_RUNS", OrderedDict())
    for name in ("a", "b", "c"):
        save_checkpoint(tmp_path / name, model, step=1)
    a = runs.load_run(tmp_path / "a")
    b = runs.load_run(tmp_path / "b")
    assert runs.load_run(tmp_path / "a") is a  # a is now the most recently used
    c = runs.load_run(tmp_path / "c")  # evicts b, the least recently used
    assert len(runs._RUNS) == 2
    assert runs.load_run(tmp_path / "a") is a and runs.load_run(tmp_path / "c") is c
    assert runs.load_run(tmp_path / "b") is not b  # loaded again
    assert len(runs._RUNS) == 2
    # a checkpoint folder rewritten in place: its old model leaves the cache at once
    ckpt = tmp_path / "c" / "ckpt-000001"
    for f in ckpt.iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    c2 = runs.load_run(tmp_path / "c")
    assert c2 is not c and sum(k[0] == str(ckpt.resolve()) for k in runs._RUNS) == 1


def test_run_cache_loads_a_run_once_across_threads(tmp_path, model, monkeypatch):
    monkeypatch.setattr(runs, "_RUNS", OrderedDict())
    save_checkpoint(tmp_path / "r", model, step=1)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: runs.load_run(tmp_path / "r"), range(8)))
    assert all(m is got[0] for m in got) and len(runs._RUNS) == 1
