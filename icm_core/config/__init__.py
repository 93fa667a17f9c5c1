"""The run configuration: ``schema`` (the dataclasses), ``compose`` (the one Hydra loader) and
``overrides`` (``key=value`` text in and out)."""

from icm_core.config.compose import load_config, to_experiment
from icm_core.config.schema import (
    AdapterConfig,
    BackboneConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
)

__all__ = ["load_config", "to_experiment", "ExperimentConfig", "BackboneConfig", "AdapterConfig",
           "ModelConfig", "DataConfig", "TrainConfig"]
