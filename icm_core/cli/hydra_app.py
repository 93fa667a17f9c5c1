"""``icm train`` and ``icm pretrain`` as Hydra applications: overrides, ``-m`` sweeps and
launcher plugins (e.g. submitit for SLURM) come from Hydra itself. Both search the packaged
tree through the one loader's ``CONFIG_PATH`` and stores (``icm_core.config.compose``)."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from icm_core.config.compose import CONFIG_PATH, EXPERIMENT_STORE, register, to_experiment
from icm_core.errors import ConfigError, ICMError
from icm_core.training.pretrain import PRETRAIN_STORE, Pretrainer, card_path, to_pretrain
from icm_core.training.trainer import Trainer

log = logging.getLogger("icm.train")
register(EXPERIMENT_STORE)
register(PRETRAIN_STORE)


def _one_line_errors(run):
    """Bad input ends the app as every other icm command: ``ErrorName: message``, exit 2."""
    try:
        return run()
    except ICMError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    """``icm train task=depth lmbda=2 out_dir=runs/a``."""
    return _one_line_errors(lambda: _train(cfg))


@hydra.main(config_path=CONFIG_PATH, config_name="pretrain_root", version_base="1.3")
def pretrain_app(cfg: DictConfig) -> float:
    """``icm pretrain pretrain=quick steps=20 out_dir=runs/p``."""
    return _one_line_errors(lambda: _pretrain(cfg))


def _train(cfg: DictConfig) -> float | None:
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


def _pretrain(cfg: DictConfig) -> float:
    pcfg = to_pretrain(cfg)
    logging.getLogger("icm.pretrain").info("pretraining config:\n%s",
                                           OmegaConf.to_yaml(OmegaConf.structured(pcfg)))
    history = Pretrainer(pcfg).fit()
    out = Path(pcfg.out_dir) / "backbone.safetensors"
    print(f"backbone: {out}\ncard: {card_path(out)}")
    return float(history[-1]["loss"]) if history else float("nan")


__all__ = ["pretrain_app", "train_app"]
