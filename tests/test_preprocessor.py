"""The pre-processor baseline: JPEG proxy against real JPEG files, training, files, use."""

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from icm_core.baselines.classical import get_codec
from icm_core.baselines.jpeg_proxy import (
    JPEG_SYMBOL_BITS,
    PROXIES,
    JPEGProxy,
    jpeg_table,
    make_proxy,
    proxy_agreement,
    proxy_for,
)
from icm_core.baselines.preprocessor import (
    PreProcessor,
    PreprocessorConfig,
    apply_preprocessor,
    load_preprocessor,
    pil_to_tensor,
    preprocessor_loss,
    save_preprocessor,
    train_preprocessor,
)
from icm_core.data.registry import SyntheticScenes
from icm_core.errors import ConfigError, ICMError
from icm_core.models.icm import build_model
from tests.helpers import tiny_config


def _pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def scenes():
    ds = SyntheticScenes("test", size=(64, 64), tasks=["semseg"], length=4)
    return [_pil(ds[i]["image"]) for i in range(4)]


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(0)
    return build_model(tiny_config("model.compression=false")).eval()


@pytest.fixture(scope="module")
def trained(baseline):
    """A pre-processor trained hard towards fewer bits, the batch it is judged on, its log and
    the baseline's trainable flags and mode before and after."""
    data = SyntheticScenes("train", size=(32, 32), tasks=["semseg"], length=2)
    cfg = PreprocessorConfig(lmbda=1.0, qualities=(50,), steps=8, lr=3e-3, batch_size=2,
                             size=32, width=8, blocks=1)
    batch = torch.stack([data[i]["image"] for i in range(2)]), torch.stack(
        [data[i]["semseg"] for i in range(2)])
    logged = []
    state = lambda: ({n: p.requires_grad for n, p in baseline.named_parameters()},  # noqa: E731
                     baseline.training)
    before = state()
    pp = train_preprocessor(baseline, "semseg", data, cfg, log=logged.append)
    return pp, cfg, batch, logged, (before, state())


# -- the proxy against the real codec ------------------------------------------------------------
@pytest.mark.parametrize("quality", [5, 50, 90])
def test_tables_are_the_ones_pillow_writes(quality):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    with Image.open(io.BytesIO(get_codec("jpeg").encode(im, quality))) as f:
        tables = f.quantization  # natural order, luma then chroma
    np.testing.assert_array_equal(jpeg_table(quality).ravel(), np.array(tables[0]))
    np.testing.assert_array_equal(jpeg_table(quality, chroma=True).ravel(), np.array(tables[1]))


def test_proxy_decodes_like_real_jpeg(scenes):
    codec, proxy = get_codec("jpeg"), JPEGProxy()
    im = scenes[0].crop((0, 0, 56, 40))  # not a whole number of MCUs
    x = pil_to_tensor(im)[None]
    for q in (10, 50):
        real = pil_to_tensor(codec.decode(codec.encode(im, q)))
        mine = proxy(x, q).image[0]
        assert mine.shape == real.shape
        err = ((mine - real) ** 2).mean().item()
        assert 10 * np.log10(1 / err) > 38  # far closer than JPEG is to the original
        assert err < ((x[0] - real) ** 2).mean().item() / 10


def test_proxy_bits_of_flat_images_by_hand():
    """A flat 16x16 image is one MCU: 4 luma + 2 chroma blocks, all AC zero. Grey 128 has every
    coefficient 0; grey 160 has luma DC 8 * 32 = 256 -> 256 / 16 = 16 at quality 50 (first
    difference: size category 5, the others 0), chroma exactly 128 (Cb, Cr weights sum to 0)."""
    proxy, block = JPEGProxy(), JPEG_SYMBOL_BITS["block"]
    grey = torch.full((1, 3, 16, 16), 128 / 255)
    assert proxy(grey, 50).bits.item() == pytest.approx(6 * block, abs=1e-4)
    assert proxy(torch.full((1, 3, 16, 16), 160 / 255), 50).bits.item() == pytest.approx(
        6 * block + 5, abs=1e-4)


def test_proxy_rate_orders_like_real_bytes(scenes):
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 64)[None, :, None] * np.array([0.4, 0.7, 1.0])
    smooth = Image.fromarray(np.broadcast_to(ramp, (64, 64, 3)).round().astype(np.uint8))
    images = [smooth, scenes[1], noise]  # rising detail
    qualities = (10, 30, 70)
    r = proxy_agreement(images, qualities)
    bits = np.array(r["proxy_bits"]).reshape(3, 3)
    real = np.array(r["real_bytes"]).reshape(3, 3)
    assert (np.diff(bits, axis=1) > 0).all() and (np.diff(real, axis=1) > 0).all()  # finer q
    assert (np.diff(bits, axis=0) > 0).all() and (np.diff(real, axis=0) > 0).all()  # detail
    assert r["pearson"] > 0.99 and r["spearman"] > 0.95
    assert r["median_rel_error"] < 0.1
    # the reported correlation is Pearson's formula on the returned pairs
    assert r["pearson"] == pytest.approx(np.corrcoef(r["proxy_bits"], r["real_bytes"])[0, 1])


def test_proxy_is_differentiable_and_rewards_smoothing(scenes):
    x = pil_to_tensor(scenes[2])[None].requires_grad_(True)
    out = JPEGProxy()(x, 30)
    out.bits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    # a small step against the gradient costs fewer bits (what the pre-processor learns)
    with torch.no_grad():
        y = (x - 2e-3 * x.grad.sign()).clamp(0, 1)
        assert JPEGProxy()(y, 30).bits.item() < out.bits.item()


# -- the network ---------------------------------------------------------------------------------
def test_new_preprocessor_is_identity_at_any_size():
    x = torch.rand(2, 3, 37, 53)
    pp = PreProcessor(PreprocessorConfig(width=8, blocks=2))
    assert torch.equal(pp(x), x)
    with pytest.raises(ConfigError, match="expected"):
        pp(torch.rand(3, 37, 53))


def test_gradient_reaches_preprocessor(baseline, scenes):
    pp = PreProcessor(PreprocessorConfig(width=8, blocks=1))
    x = torch.stack([pil_to_tensor(scenes[0].crop((0, 0, 32, 32)))])
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    v = preprocessor_loss(pp, JPEGProxy(), baseline, "semseg", x, target, 30, lmbda=0.1)
    v["loss"].backward()
    assert pp.tail.weight.grad.abs().sum() > 0  # through the frozen task net and the proxy
    assert torch.isfinite(pp.tail.weight.grad).all()
    expected = v["task_loss"].item() + 0.1 * v["bpp"].item()
    assert v["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_training_lowers_objective_and_real_bytes(baseline, trained):
    pp, cfg, (images, targets), logged, _ = trained
    assert [e["step"] for e in logged] == list(range(1, cfg.steps + 1))
    proxy = JPEGProxy()
    with torch.no_grad():
        before = preprocessor_loss(PreProcessor(cfg), proxy, baseline, "semseg", images, targets,
                                   50, cfg.lmbda)
        after = preprocessor_loss(pp, proxy, baseline, "semseg", images, targets, 50, cfg.lmbda)
    assert after["loss"] < before["loss"]
    codec = get_codec("jpeg")
    for x in images:
        im = _pil(x)
        assert len(codec.encode(apply_preprocessor(pp, im), 50)) < len(codec.encode(im, 50))


def test_training_leaves_baseline_as_it_was(trained):
    before, after = trained[4]
    assert before == after and any(before[0].values())


def test_refuses_compressed_baseline_and_bad_config():
    data = SyntheticScenes("train", size=(32, 32), tasks=["semseg"], length=1)
    with pytest.raises(ConfigError, match="compression=false"):
        train_preprocessor(SimpleNamespace(compression=True), "semseg", data,
                           PreprocessorConfig(steps=1))
    with pytest.raises(ConfigError, match="codec='webp'"):
        PreprocessorConfig(codec="webp")
    with pytest.raises(ConfigError, match="size=40"):
        PreprocessorConfig(size=40)
    with pytest.raises(ConfigError, match="steps='10'"):
        PreprocessorConfig(steps="10")
    with pytest.raises(ConfigError, match="qualities"):
        PreprocessorConfig(qualities=(0, 50))
    with pytest.raises(ConfigError, match="bogus"):
        PreprocessorConfig.from_dict({"bogus": 1})
    assert PreprocessorConfig.from_dict({"qualities": [5, 9]}).qualities == (5, 9)


def test_the_chroma_table_needs_no_other_module():
    """The proxy module alone has JPEG's chroma table (it once got it from another module)."""
    code = ("import icm_core.baselines.jpeg_proxy as j; "
            "print(int(j.JPEG_CHROMA[0, 0]), int(j.jpeg_table(50, chroma=True)[1, 1]))")
    root = str(Path(__file__).resolve().parents[1])  # this checkout's icm_core
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.stdout.split() == ["17", "21"]


def test_proxies_are_a_registry_with_a_jpeg_fallback(monkeypatch):
    assert [proxy_for(c) for c in ("jpeg", "webp", "vvc")] == ["jpeg"] * 3
    assert isinstance(make_proxy("jpeg"), JPEGProxy)
    with pytest.raises(ConfigError, match="codec='webp' has no differentiable proxy"):
        make_proxy("webp")
    monkeypatch.setitem(PROXIES, "webp", torch.nn.Identity)  # a proxy registered by name
    assert proxy_for("webp") == "webp" and proxy_for("vvc") == "jpeg"
    assert PreprocessorConfig(codec="webp").codec == "webp"
    assert isinstance(make_proxy("webp"), torch.nn.Identity)


# -- files and use -------------------------------------------------------------------------------
def test_save_load_round_trip(trained, tmp_path, scenes):
    pp, cfg, (images, _), *_ = trained
    path = save_preprocessor(pp, tmp_path / "pp.safetensors")
    back = load_preprocessor(path)
    assert back.cfg == cfg
    with torch.no_grad():
        assert torch.equal(back(images), pp(images))
    im = scenes[0]
    assert apply_preprocessor(back, im).tobytes() == apply_preprocessor(pp, im).tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["pp.safetensors"]  # no temporary left


def test_bad_files_raise_naming_the_file(trained, tmp_path):
    pp = trained[0]
    good = save_preprocessor(pp, tmp_path / "good.safetensors").read_bytes()
    cases = {"truncated.safetensors": good[: len(good) // 2], "junk.safetensors": b"\x00" * 40}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for name in [*cases, "foreign.safetensors", "missing.safetensors"]:
        with pytest.raises(ICMError, match=name):
            load_preprocessor(tmp_path / name)


def test_apply_keeps_size_and_mode(trained, scenes):
    pp = trained[0]
    rgb = scenes[0].crop((0, 0, 37, 29))
    out = apply_preprocessor(pp, rgb)
    assert (out.size, out.mode) == ((37, 29), "RGB")
    expected = pp(pil_to_tensor(rgb)[None])[0].detach()
    np.testing.assert_allclose(pil_to_tensor(out).numpy(), expected.numpy(), atol=0.5 / 255 + 1e-6)
    assert pp.training is False
    rgba = rgb.copy()
    rgba.putalpha(Image.new("L", rgb.size, 77))
    out = apply_preprocessor(pp, rgba)
    assert (out.size, out.mode) == ((37, 29), "RGBA")
    assert set(np.asarray(out.getchannel("A")).ravel().tolist()) == {77}
    assert apply_preprocessor(pp, rgb.convert("L")).mode == "L"
    with pytest.raises(ConfigError, match="PIL"):
        apply_preprocessor(pp, np.zeros((4, 4, 3)))


def test_the_default_rate_weight_is_the_one_chosen_on_validation_scenes():
    import json

    root = Path(__file__).resolve().parents[1]
    doc = json.loads((root / "benchmarks" / "results" / "preprocessor_val.json").read_text())
    assert " val scenes " in doc["held_out"] and doc["args"]["split"] == "val"
    means = {c["lmbda"]: c["mean_bd_rate"] for c in doc["per_lambda"].values()
             if c["mean_bd_rate"] is not None}
    assert len(means) >= 3 and min(means, key=means.get) == doc["choice"]["lmbda"]
    # icm compare --preprocessor train and bench_compare_tasks.py (its --pp-lambda default) use it
    assert PreprocessorConfig().lmbda == doc["choice"]["lmbda"]
