"""The schedule levers of issue 22: a linear learning-rate warm-up (``train.warmup_steps``) and an
exponential moving average of the trained weights (``train.ema_decay``) that evaluation and
checkpoints use, resumable like every other part of a run."""

import pytest
import torch
from safetensors.torch import load_file

from icm_core.errors import ConfigError
from icm_core.evaluation.evaluate import evaluate
from icm_core.training.checkpoint import load_checkpoint, resolve_checkpoint_dir
from icm_core.training.ema import ema_decay_at
from icm_core.training.trainer import Trainer, lr_factor

from .helpers import TINY, tiny_config

RUN = [*TINY, "data.val_length=1", "train.eval_every=0"]


def _task_files(run_dir) -> dict[str, torch.Tensor]:
    ckpt = resolve_checkpoint_dir(run_dir)
    return {f"{f.name}:{k}": v for f in sorted(ckpt.glob("task-*.safetensors"))
            for k, v in load_file(str(f)).items()}


def test_warmup_rises_linearly_then_the_polynomial_decay_takes_over(tmp_path):
    cfg = tiny_config(*RUN, "train.max_steps=10", "train.warmup_steps=4", "train.lr=1e-3",
                      "train.head_lr=1e-3", "train.poly_power=1", f"out_dir={tmp_path}")
    trainer = Trainer(cfg, device="cpu")
    lrs = []
    for _ in range(6):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.step()
    # step s trains at 1e-3 * min(1, (s+1)/4) * (1 - s/10): written out, not recomputed
    expected = [1e-3 * w * d for w, d in zip((0.25, 0.5, 0.75, 1, 1, 1),
                                              (1.0, 0.9, 0.8, 0.7, 0.6, 0.5))]
    assert lrs == pytest.approx(expected)
    t = cfg.train
    assert lr_factor(0, t) == pytest.approx(0.25) and lr_factor(9, t) == pytest.approx(0.1)
    no_warmup = tiny_config(*RUN, "train.max_steps=10", "train.poly_power=1").train
    assert lr_factor(0, no_warmup) == 1.0  # warmup_steps=0 is the schedule of before


@pytest.mark.parametrize("bad, field", [("train.ema_decay=1", "train.ema_decay"),
                                        ("train.ema_decay=-0.1", "train.ema_decay"),
                                        ("train.warmup_steps=-1", "train.warmup_steps")])
def test_bad_schedule_values_are_refused_by_name(bad, field):
    with pytest.raises(ConfigError, match=field):
        tiny_config(bad)


def test_the_checkpoint_holds_the_moving_average_of_the_raw_weights(tmp_path):
    """An independent reference: the raw trained weights after every step, averaged here with
    the warmed-up decay; the run's task files must hold that average, and evaluation sees it."""
    decay = 0.6
    trainer = Trainer(tiny_config(*RUN, "train.max_steps=3", f"train.ema_decay={decay}",
                                  f"out_dir={tmp_path}"), device="cpu")
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    params = {names[id(p)]: p for p in trainer.params}
    average = {n: p.detach().clone() for n, p in params.items()}
    for t in range(1, 4):
        trainer.step()
        d = min(decay, (1 + t) / (10 + t))
        assert ema_decay_at(decay, t) == d
        for n, p in params.items():
            average[n] = d * average[n] + (1 - d) * p.detach()
    raw = {n: p.detach().clone() for n, p in params.items()}
    moved = [n for n in params if not torch.allclose(average[n], raw[n])]
    assert moved  # the average really differs from the last weights: the test can fail

    with trainer.averaged():  # what evaluation and save see
        for n, p in params.items():
            torch.testing.assert_close(p.detach(), average[n], rtol=1e-5, atol=1e-6)
    for n, p in params.items():  # and the raw weights come back for the next step
        assert torch.equal(p.detach(), raw[n])

    trainer.save()
    model = load_checkpoint(tmp_path)[0]
    loaded = dict(model.named_parameters())
    for n in params:
        torch.testing.assert_close(loaded[n].detach(), average[n], rtol=1e-5, atol=1e-6)
    # the trainer's evaluation scores the average too: the checkpoint's numbers
    ours = trainer.evaluate()[0]
    theirs = evaluate(model, trainer.val_set, trainer.tasks[0], per_image=False)
    assert (ours.value, ours.bpp) == pytest.approx((theirs.value, theirs.bpp))


def test_a_resumed_ema_run_ends_with_the_weights_of_a_straight_one(tmp_path):
    cfg = [*RUN, "train.max_steps=4", "train.checkpoint_every=2", "train.ema_decay=0.5"]
    straight = Trainer(tiny_config(*cfg, f"out_dir={tmp_path / 'whole'}"), device="cpu")
    straight.fit(progress=False)

    cut = Trainer(tiny_config(*cfg, f"out_dir={tmp_path / 'cut'}"), device="cpu")
    cut.step()
    cut.step()  # checkpoint at step 2: the average in the task files, raw weights in trainer.pt
    del cut
    resumed = Trainer(tiny_config(*cfg, f"out_dir={tmp_path / 'cut'}", "resume=true"),
                      device="cpu")
    resumed.fit(progress=False)
    a, b = _task_files(tmp_path / "whole"), _task_files(tmp_path / "cut")
    assert a.keys() == b.keys() and a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # the finished model holds what its checkpoint holds (the average, not the raw weights)
    loaded = dict(load_checkpoint(tmp_path / "whole")[0].named_parameters())
    names = {id(p): n for n, p in straight.model.named_parameters()}
    for p in straight.params:
        assert torch.equal(p.detach(), loaded[names[id(p)]].detach()), names[id(p)]


def test_resuming_with_another_ema_setting_is_refused(tmp_path):
    cfg = [*RUN, "train.max_steps=2", "train.checkpoint_every=1"]
    first = Trainer(tiny_config(*cfg, f"out_dir={tmp_path}"), device="cpu")
    first.step()
    with pytest.raises(ConfigError, match="train.ema_decay"):
        Trainer(tiny_config(*cfg, f"out_dir={tmp_path}", "resume=true",
                            "train.ema_decay=0.9"), device="cpu").resume()
