"""ONE Hydra loader: the packaged config tree composed with command-line overrides.

Every configuration of the package (``ExperimentConfig`` for ``icm train``, ``PretrainConfig``
for ``icm pretrain``) is composed here: a *store* of schema dataclasses and primary configs is
put in Hydra's ``ConfigStore``, the tree ``icm_core/conf`` is composed under a primary config
name, and the result is validated into the schema (``ConfigError`` on any bad value).
The Hydra applications (``icm_core.cli.hydra_app``) search the same tree (``CONFIG_PATH``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError

T = TypeVar("T")

CONFIG_MODULE = "icm_core.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # ``hydra.main(config_path=...)`` of the icm apps
EXPERIMENT_STORE: dict[str, Any] = {"schema": ExperimentConfig}  # conf/config.yaml lists 'schema'


def register(store: Mapping[str, Any]) -> None:
    """Put each ``name: node`` of ``store`` (a schema dataclass, or a primary config as a dict
    with its own ``defaults``) in Hydra's ConfigStore; storing again replaces, so this is
    idempotent."""
    cs = ConfigStore.instance()
    for name, node in store.items():
        cs.store(name=name, node=node)


def to_structured(cfg, schema: type[T]) -> T:
    """A composed (or loaded) OmegaConf tree -> a validated ``schema`` instance.

    A tree that is not typed as ``schema`` yet (e.g. a checkpoint's config.yaml) is merged
    onto the schema first, so a missing field takes its default and an unknown one is refused.
    """
    if isinstance(cfg, schema):
        return cfg
    try:
        if OmegaConf.get_type(cfg) is not schema:
            cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0] + f" (at {getattr(e, 'full_key', '?')})") from e


def compose_config(config_name: str, schema: type[T], overrides=(),
                   store: Mapping[str, Any] | None = None) -> T:
    """Compose ``icm_core/conf`` under the primary config ``config_name`` with command-line
    style ``overrides`` and validate it into ``schema``; ``store`` is registered first.

    >>> compose_config("config", ExperimentConfig, ["task=depth"], EXPERIMENT_STORE).tasks
    ['depth']
    """
    register(store or {})
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"overrides {list(overrides)}: {str(e).splitlines()[0]}") from e
    return to_structured(cfg, schema)


def to_experiment(cfg) -> ExperimentConfig:
    """A composed OmegaConf tree -> validated ``ExperimentConfig`` (``ConfigError`` on bad values)."""
    return to_structured(cfg, ExperimentConfig)


def load_config(overrides=()) -> ExperimentConfig:
    """Compose the packaged Hydra tree with command-line style ``overrides``.

    >>> load_config(["experiment=paper"]).backbone.name
    'eva02_large_patch14_448.mim_m38m_ft_in22k'
    """
    return compose_config("config", ExperimentConfig, overrides, EXPERIMENT_STORE)


__all__ = ["CONFIG_MODULE", "CONFIG_PATH", "EXPERIMENT_STORE", "compose_config", "load_config",
           "register", "to_experiment", "to_structured"]
