"""Datasets: every one returns the same sample dict (see ``synthetic.sample_from_arrays``).

``registry`` holds them by name (``data=synthetic|nyud|pascal|hf|folder``); ``check`` reports
what a dataset folder holds and lacks.
"""

from icm_core.data.registry import DATASETS, get_dataset, make_dataset, register_dataset
from icm_core.data.synthetic import SyntheticScenes

__all__ = ["DATASETS", "SyntheticScenes", "get_dataset", "make_dataset", "register_dataset"]
