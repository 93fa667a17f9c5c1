"""Two gloo processes (DistributedDataParallel on CPU) train the paths that once failed at step 2.

DDP raises at the start of the second step when a trainable parameter got no gradient in the
first (timm's unused pooling norm in ``full``/``scratch`` mode did). After each step the
gradients are averaged, so both processes must hold bit-identical weights.
"""

import hashlib
import json
import math
import os
import socket

import torch
import torch.multiprocessing as mp

from .helpers import tiny_config

CASES = {
    "full": ["adapter=full"],  # full_ft: full fine-tuning with compression
    "full_uncompressed": ["adapter=full", "model.compression=false"],  # full_baseline
    "dora": ["adapter=dora_r8_qkv"],  # the paper's compressed DoRA path
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from icm_core.training.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    results = {}
    try:
        for name, overrides in CASES.items():
            cfg = tiny_config(*overrides, "train.batch_size=2", "train.max_steps=2",
                              "data.train_length=4", "data.val_length=1",
                              f"out_dir={out_dir}/{name}")
            trainer = Trainer(cfg, device="cpu")
            assert trainer.world == world
            before = {k: v.clone() for k, v in trainer.model.task_state_dict().items()}
            losses = [trainer.train_step(step)["loss"] for step in range(2)]
            state = trainer.model.task_state_dict()
            h = hashlib.sha256()
            for k, v in sorted(state.items()):
                h.update(k.encode() + v.float().numpy().tobytes())
            changed = any(not torch.equal(v, before[k]) for k, v in state.items())
            results[name] = {"losses": losses, "weights": h.hexdigest(), "changed": changed}
        # each process saves its own rate-noise generator state and restores its own on resume
        trainer.global_step = 2
        own = trainer.generator.get_state().tolist()
        trainer.save()
        saved = torch.load(f"{out_dir}/dora/ckpt-000002/trainer.pt", weights_only=True)["rng"]
        trainer.generator.manual_seed(1234)
        trainer.resume()
        results["rng"] = {"own": own, "saved": [s.tolist() for s in saved],
                          "restored": trainer.generator.get_state().tolist()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def test_two_processes_train_two_steps_of_full_and_compressed_dora(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert set(r0) == set(r1) == {*CASES, "rng"}
    rng = (r0.pop("rng"), r1.pop("rng"))
    assert rng[0]["saved"] == rng[1]["saved"] == [rng[0]["own"], rng[1]["own"]]
    assert rng[0]["own"] != rng[1]["own"]  # a noise stream per process
    assert [r["restored"] for r in rng] == [r["own"] for r in rng]  # each process its own
    for name in CASES:
        assert all(math.isfinite(v) for v in r0[name]["losses"]), name
        assert r0[name]["losses"] == r1[name]["losses"], name  # the global mean, on each process
        assert r0[name]["changed"], name
        assert r0[name]["weights"] == r1[name]["weights"], name  # averaged gradients
