"""Datasets: every one returns the same sample dict (see ``synthetic.sample_from_arrays``)."""

from icm_core.data.registry import make_dataset
from icm_core.data.synthetic import SyntheticScenes

__all__ = ["SyntheticScenes", "make_dataset"]
