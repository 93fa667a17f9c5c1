"""``icm train`` as a Hydra application: overrides, ``-m`` sweeps and launcher plugins
(e.g. submitit for SLURM) come from Hydra itself."""

from __future__ import annotations

import json
import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from icm_core.config.compose import _register_schema, to_experiment
from icm_core.errors import ConfigError, ICMError

log = logging.getLogger("icm.train")
_register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    try:
        return _train(cfg)
    except ICMError as e:  # one line, exit 2, as every other icm command
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _train(cfg: DictConfig) -> float | None:
    from dataclasses import replace

    from hydra.core.hydra_config import HydraConfig

    from icm_core.training.trainer import Trainer

    exp = to_experiment(cfg)
    if exp.out_dir == "outputs":  # the default: one folder per job, sweeps included
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun every process must write to one folder: give out_dir=DIR")
        exp = replace(exp, out_dir=HydraConfig.get().runtime.output_dir)
    trainer = Trainer(exp)
    trainer.fit()
    results = [r.summary() for r in trainer.final_results]
    log.info("final evaluation: %s", json.dumps(results))
    log.info("checkpoint: %s", exp.out_dir)
    print(f"checkpoint: {exp.out_dir}")
    # the sweep objective (Hydra's optimizing sweepers minimize it): the first task's final
    # metric, negated where higher is better
    first = trainer.final_results[0] if trainer.final_results else None
    if first is None:
        return None
    return -first.value if first.higher_is_better else first.value
