"""The quick preset's codec converges: a higher lambda buys more bits and a better metric.

Issue 10. The preset itself (experiment=quick: its model sizes, learning rates and head
learning rate) is trained at the lowest and highest lambda of the demo's ladder, shrunk only in
image size, steps and validation images so it runs in well under a minute; the ordering is
checked on real bitstream bytes, on a fixed seed.
"""

import pytest
import torch

from icm_core.config import load_config
from icm_core.demo import DEFAULT_LAMBDAS
from icm_core.train import Trainer

# 120 steps at 64 px: ~20-35 s a lambda on one loaded core; measured mIoU 10.5 vs 17.1 and
# 0.100 vs 0.158 bpp (real bytes) for lambda 0.25 vs 4, so the margins are wide
SHRINK = ["data.size=[64,64]", "data.workers=0", "train.max_steps=120", "data.val_length=8",
          "train.seed=0", "data.seed=0"]


@pytest.fixture
def one_thread():
    """Two intra-op threads on a busy 2-core machine made this test 5x slower (measured:
    over 5 min instead of 47 s); the margins checked are far wider than thread-count noise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _point(lmbda: float, out) -> dict:
    cfg = load_config(["experiment=quick", "task=semseg", f"lmbda={lmbda}", *SHRINK,
                       f"out_dir={out}"])
    trainer = Trainer(cfg, device="cpu")
    trainer.fit(progress=False)
    return trainer.final_results[0].summary()


def test_quick_preset_keeps_its_tuned_settings():
    cfg = load_config(["experiment=quick"])
    assert cfg.train.head_lr is not None and cfg.train.head_lr > cfg.train.lr  # heads from scratch
    assert cfg.model.hyper_channels < cfg.model.latent_channels  # z is paid at every lambda
    assert list(DEFAULT_LAMBDAS) == sorted(DEFAULT_LAMBDAS) and len(DEFAULT_LAMBDAS) == 3
    paper = load_config(["experiment=paper"])
    assert paper.train.lr == 2e-5 and paper.train.head_lr is None  # the paper keeps 2e-5 everywhere


def test_higher_lambda_more_bits_and_better_metric(tmp_path, one_thread):
    low, high = (_point(lm, tmp_path / f"l{lm:g}")
                 for lm in (DEFAULT_LAMBDAS[0], DEFAULT_LAMBDAS[-1]))
    assert low["bpp"] is not None and high["bpp"] is not None  # real bytes, not the estimate
    assert high["bpp"] > low["bpp"], (low, high)
    assert high["value"] > low["value"], (low, high)


def test_icm_demo_defaults_are_the_demo_modules():
    from icm_core import cli, demo

    assert (cli.DEMO_STEPS, tuple(cli.DEMO_LAMBDAS)) == (demo.DEFAULT_STEPS, tuple(demo.DEFAULT_LAMBDAS))
