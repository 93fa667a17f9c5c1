"""Reproducible runs: a run draws model init, rate noise and data from generators of its own.

Neither a model built in another thread nor a reseeded global RNG changes a run's weights; a
resumed run continues its draws; each process of a torchrun job restores its own state.
"""

import pytest
import torch
from safetensors.torch import load_file

from icm_core.errors import ConfigError
from icm_core.models.icm import build_model
from icm_core.training import distributed
from icm_core.training.checkpoint import rank_rng_state, resolve_checkpoint_dir
from icm_core.training.trainer import Trainer, noise_generator
from icm_core.workspace.queue import RunQueue

from .helpers import TINY, tiny_config

RUN = [*TINY, "train.max_steps=3", "data.val_length=1", "train.eval_every=0"]


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    ckpt = resolve_checkpoint_dir(run_dir)
    return {f"{f.name}:{k}": v for f in sorted(ckpt.glob("task-*.safetensors"))
            for k, v in load_file(str(f)).items()}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_background_run_is_bit_identical_whatever_the_main_thread_does(tmp_path):
    queue = RunQueue(tmp_path)
    torch.manual_seed(123)
    quiet = queue.submit(RUN, name="quiet")
    assert queue.wait(timeout=600) and quiet.status == "done", quiet.error

    torch.manual_seed(456)
    busy = queue.submit(RUN, name="busy")
    other = tiny_config("tasks=[depth]", "train.seed=7")
    built = 0
    while busy.status in ("queued", "running"):  # the notebook thread: builds, draws, reseeds
        build_model(other)
        torch.rand(1000)
        torch.manual_seed(built)
        built += 1
    assert queue.wait(timeout=600) and busy.status == "done", busy.error
    assert built >= 2  # the main thread really built models while the run trained
    _assert_identical(_final_weights(tmp_path / "quiet"), _final_weights(tmp_path / "busy"))


def test_build_model_draws_from_its_generator_only():
    for overrides in ([], ["adapter=lora_r16_qv"], ["adapter.mode=fixed"]):
        cfg = tiny_config("tasks=[semseg,depth]", *overrides)
        torch.manual_seed(1)
        a = build_model(cfg).state_dict()
        torch.manual_seed(2)
        b = build_model(cfg).state_dict()
        _assert_identical(a, b)
        c = build_model(cfg, generator=torch.Generator().manual_seed(cfg.train.seed + 1)).state_dict()
        assert not torch.equal(a["heads.semseg.proj.weight"], c["heads.semseg.proj.weight"])


def test_rate_noise_comes_from_the_given_generator():
    model = build_model(tiny_config()).train()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    bits = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with torch.no_grad():
            out = model(x, generator=torch.Generator().manual_seed(5))
        bits.append((out.likelihoods["y"], out.likelihoods["z"]))
    assert torch.equal(bits[0][0], bits[1][0]) and torch.equal(bits[0][1], bits[1][1])
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out.likelihoods["y"], bits[0][0])  # the noise is really drawn from it
    assert not torch.equal(out.likelihoods["z"], bits[0][1])


def test_resume_from_a_mid_run_checkpoint_ends_with_the_same_weights(tmp_path):
    cfg = [*RUN, "train.max_steps=4", "train.checkpoint_every=2"]
    Trainer(tiny_config(*cfg, f"out_dir={tmp_path / 'whole'}")).fit(progress=False)

    cut = Trainer(tiny_config(*cfg, f"out_dir={tmp_path / 'cut'}"))
    cut.step()
    cut.step()  # checkpoint at step 2
    assert resolve_checkpoint_dir(tmp_path / "cut").name == "ckpt-000002"
    cut.step()  # the killed process got further than its checkpoint
    del cut
    torch.manual_seed(99)  # a new process: another global RNG state
    resumed = Trainer(tiny_config(*cfg, f"out_dir={tmp_path / 'cut'}", "resume=true"))
    resumed.fit(progress=False)
    assert resumed.global_step == 4
    _assert_identical(_final_weights(tmp_path / "whole"), _final_weights(tmp_path / "cut"))


def test_each_process_saves_and_restores_its_own_generator_state(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(*RUN, f"out_dir={tmp_path}"))
    trainer.step()
    own = trainer.generator.get_state()
    others = [noise_generator(0, r, "cpu").get_state() for r in (1, 2)]  # ranks 1 and 2
    states = [own, *others]
    assert len({bytes(s.tolist()) for s in states}) == 3  # each process has a stream of its own
    monkeypatch.setattr(distributed, "gather", lambda s: [s, *others])
    trainer.save()
    saved = torch.load(tmp_path / "ckpt-000001" / "trainer.pt", weights_only=True)
    assert saved["rng_device"] == "cpu"
    assert [s.tolist() for s in saved["rng"]] == [s.tolist() for s in states]
    for rank in (2, 1, 0):
        trainer.rank, trainer.world = rank, 3
        trainer.generator.manual_seed(12345)
        assert trainer.resume() and trainer.global_step == 1
        assert torch.equal(trainer.generator.get_state(), states[rank]), rank
    # another number of processes cannot continue these draws: a fresh stream, not rank 0's
    trainer.rank, trainer.world = 0, 2
    assert trainer.resume()
    fresh = trainer.generator.get_state()
    assert not any(torch.equal(fresh, s) for s in states)
    assert torch.equal(fresh, noise_generator(0, 0, "cpu", step=1).get_state())


def test_rank_rng_state_picks_the_process_own_entry():
    g = torch.Generator()
    states = [torch.Generator().manual_seed(r).get_state() for r in range(4)]
    state = {"rng": states, "rng_device": "cpu"}
    for rank in range(4):
        assert torch.equal(rank_rng_state(state, rank, 4, g), states[rank])
    assert rank_rng_state(state, 0, 2, g) is None  # written by 4 processes
    assert rank_rng_state({"rng": states, "rng_device": "cuda"}, 0, 4, g) is None
    with pytest.raises(ConfigError, match="RNG state of process 1 has 16 bytes"):
        rank_rng_state({"rng": [states[0], states[1][:16]], "rng_device": "cpu"}, 1, 2, g)
    legacy = {"rng_cpu": states[3]}  # older trainers drew the noise from the global CPU RNG
    assert torch.equal(rank_rng_state(legacy, 0, 1, g), states[3])
