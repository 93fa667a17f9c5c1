"""The ``icm`` command (``main``) and its Hydra apps."""

from icm_core.cli.main import main

__all__ = ["main"]
