"""The quick preset's codec converges: a higher lambda buys more bits and a better metric.

Issue 10. The preset itself (experiment=quick: its model sizes, learning rates and head
learning rate) is trained at the lowest and highest lambda of the task's demo ladder
(``TASK_LAMBDAS``), shrunk only in image size, steps and validation images so it runs in well
under a minute; the ordering is checked on real bitstream bytes, on a fixed seed, for semseg
(a cross-entropy) and depth (an L1 loss, whose ladder lies lower).
"""

import pytest
import torch

from icm_core.config import load_config
from icm_core.data.synthetic import SyntheticScenes
from icm_core.evaluation.evaluate import evaluate
from icm_core.studies.demo import DEFAULT_LAMBDAS, TASK_LAMBDAS, default_lambdas
from icm_core.tasks.registry import TASKS, get_task
from icm_core.training.trainer import Trainer

# 120 steps at 64 px, then real streams of 8 validation scenes at 128 px (at 64 px the 48 bytes
# of fixed costs swamp depth's payload: 48 vs 50 bytes an image). Measured on one loaded core,
# ~40 s a task: semseg lambda 0.25 vs 4: 9.3 vs 15.7 mIoU at 0.090 vs 0.120 bpp; depth lambda
# 0.03 vs 0.25: RMSE 1.86 vs 1.45 at 0.025 vs 0.033 bpp (16 bytes an image apart)
SHRINK = ["data.size=[64,64]", "data.workers=0", "train.max_steps=120", "data.val_length=1",
          "train.seed=0", "data.seed=0"]
EVAL_SIZE, EVAL_IMAGES = 128, 8


@pytest.fixture
def one_thread():
    """Two intra-op threads on a busy 2-core machine made this test 5x slower (measured:
    over 5 min instead of 47 s); the margins checked are far wider than thread-count noise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _point(task: str, lmbda: float, out) -> dict:
    cfg = load_config(["experiment=quick", f"task={task}", f"lmbda={lmbda}", *SHRINK,
                       f"out_dir={out}"])
    trainer = Trainer(cfg, device="cpu")
    trainer.fit(progress=False)
    val = SyntheticScenes("val", size=(EVAL_SIZE, EVAL_SIZE), tasks=[task], length=EVAL_IMAGES)
    return evaluate(trainer.model, val, task, per_image=False).summary()


def test_quick_preset_keeps_its_tuned_settings():
    cfg = load_config(["experiment=quick"])
    assert cfg.train.head_lr is not None and cfg.train.head_lr > cfg.train.lr  # heads from scratch
    assert cfg.model.hyper_channels < cfg.model.latent_channels  # z is paid at every lambda
    assert set(TASK_LAMBDAS) == set(TASKS) and DEFAULT_LAMBDAS == TASK_LAMBDAS["semseg"]
    for ladder in TASK_LAMBDAS.values():
        assert list(ladder) == sorted(set(ladder)) and len(ladder) == 3 and ladder[0] > 0
    assert default_lambdas("edge") == TASK_LAMBDAS["boundary"]  # aliases resolve
    paper = load_config(["experiment=paper"])
    assert paper.train.lr == 2e-5 and paper.train.head_lr is None  # the paper keeps 2e-5 everywhere


@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_higher_lambda_more_bits_and_better_metric(task, tmp_path, one_thread):
    ladder = default_lambdas(task)
    low, high = (_point(task, lm, tmp_path / f"l{lm:g}") for lm in (ladder[0], ladder[-1]))
    assert low["bpp"] is not None and high["bpp"] is not None  # real bytes, not the estimate
    assert high["bpp"] > low["bpp"], (low, high)
    assert high["bpp_estimated"] > low["bpp_estimated"], (low, high)  # the estimate agrees
    better = (high["value"] > low["value"]) if get_task(task).higher_is_better else (
        high["value"] < low["value"])
    assert better, (low, high)


def test_icm_demo_defaults_are_the_demo_modules():
    from icm_core.cli.main import build_parser
    from icm_core.studies import demo

    args = build_parser().parse_args(["demo", "--task", "depth"])
    assert args.steps is None and not args.per_lambda  # run_demo: DEFAULT_VR_STEPS, one model
    assert demo.DEFAULT_VR_STEPS == 3 * demo.DEFAULT_STEPS  # the per-lambda curve's steps
    assert args.lambdas is None and args.task == "depth"  # run_demo picks the task's ladder
