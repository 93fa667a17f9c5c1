"""ONE Hydra loader: the packaged config tree composed with command-line overrides."""

from __future__ import annotations

from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=ExperimentConfig)



def to_experiment(cfg) -> ExperimentConfig:
    """A composed OmegaConf tree -> validated ``ExperimentConfig`` (``ConfigError`` on bad values)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg) if not isinstance(cfg, ExperimentConfig) else cfg
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0] + f" (at {getattr(e, 'full_key', '?')})") from e



def load_config(overrides=()) -> ExperimentConfig:
    """Compose the packaged Hydra tree with command-line style ``overrides``.

    >>> load_config(["experiment=paper"]).backbone.name
    'eva02_large_patch14_448.mim_m38m_ft_in22k'
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schema()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module("icm_core.conf", version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"overrides {list(overrides)}: {str(e).splitlines()[0]}") from e
    return to_experiment(cfg)
