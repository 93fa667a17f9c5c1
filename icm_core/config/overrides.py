"""Overrides as text: parsing ``key=value`` lines, formatting values, a config back to overrides."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

import icm_core.conf
from icm_core.config.compose import load_config
from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError

QUEUE_MANAGED = ("out_dir", "resume")  # the queue sets these; overrides may not


def _config_groups() -> tuple[str, ...]:
    """The Hydra groups of ``icm train``: the root config's defaults list (experiment first)."""


    root = Path(icm_core.conf.__file__).parent / "config.yaml"
    found = [next(iter(d)) for d in yaml.safe_load(root.read_text())["defaults"] if isinstance(d, dict)]
    return tuple(sorted(found, key=lambda g: g != "experiment"))



GROUPS = _config_groups()  # ("experiment", "backbone", "adapter", "model", "data", "train", "task")



# -- overrides <-> values ---------------------------------------------------------------------
def _parser():

    return OverridesParser.create()



def parse_overrides(overrides) -> list[tuple[str, Any]]:
    """``["adapter.rank=4", "adapter.targets=[q,v]"]`` -> ``[("adapter.rank", 4), ...]`` as
    Hydra reads them; sweeps, ``+``/``~`` and syntax errors are refused with ``ConfigError``."""
    out = []
    for text in overrides:
        try:
            o = _parser().parse_override(text)
        except Exception as e:  # Hydra's grammar errors carry the position
            raise ConfigError(f"override {text!r}: {str(e).splitlines()[0]}; write key=value, e.g. "
                              "adapter.rank=4 or adapter.targets=[q,v]") from e
        if o.is_sweep_override() or o.type.name != "CHANGE" or o.package:
            raise ConfigError(f"override {text!r}: only plain key=value is supported here "
                              "(sweeps, +key and ~key belong on the icm train command line)")
        out.append((o.key_or_group, o.value()))
    return out



def format_value(value: Any) -> str:
    """A Python config value -> Hydra override syntax that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):  # e.g. data.columns={image:img,semseg:label}
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if not isinstance(value, str):
        return repr(value) if isinstance(value, float) else str(value)
    if _plain(value) and parse_overrides([f"k={value}"])[0][1] == value:
        return value  # e.g. runs/a, eva02_tiny_patch14_224 (not 'true', '1' or 'null')
    for quote in ("'", '"'):  # Hydra: backslashes before a quote or at the end are doubled
        body = re.sub(rf"(\\+)(?=$|{quote})", lambda m: m.group(1) * 2, value)
        text = quote + body.replace(quote, "\\" + quote) + quote
        try:
            if parse_overrides([f"k={text}"])[0][1] == value:
                return text
        except ConfigError:
            continue
    raise ConfigError(f"value {value!r} cannot be written as a Hydra override; avoid backslashes "
                      "before quotes")



def _plain(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_./:+\-]+", text))



def format_override(key: str, value: Any) -> str:
    return f"{key}={format_value(value)}"



def _leaves(obj, prefix: str = "") -> dict[str, Any]:
    """Dataclass -> {"adapter.rank": 8, ...} (every non-dataclass field, dotted)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_leaves(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out



def config_values(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every field of ``cfg`` by its override key (``adapter.rank``), lists as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _leaves(cfg).items()}



def config_overrides(cfg: ExperimentConfig, skip=QUEUE_MANAGED) -> list[str]:
    """The field overrides that turn the default config into ``cfg`` (e.g. a run folder's
    config.yaml back into a command line): ``load_config(config_overrides(cfg))`` == ``cfg``
    up to the ``skip`` fields."""
    base = config_values(load_config([]))
    return [format_override(k, v) for k, v in config_values(cfg).items()
            if k not in skip and base.get(k) != v]



def split_command_line(text: str) -> list[str]:
    """``icm train a=1 b=[x,y]`` (or just the overrides) -> ``["a=1", "b=[x,y]"]``."""
    try:
        words = shlex.split(text.replace("\\\n", " "))
    except ValueError as e:
        raise ConfigError(f"command line {text[:80]!r}: {e}; quote values with spaces") from e
    if words[:2] == ["icm", "train"]:
        words = words[2:]
    elif words[:1] == ["train"]:
        words = words[1:]
    bad = [w for w in words if w.startswith("-")]
    if bad:
        raise ConfigError(f"command line option {bad[0]!r} is not an override; the panel reads "
                          "key=value overrides only (no -m sweeps)")
    return words

