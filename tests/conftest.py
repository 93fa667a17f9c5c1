import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_ROOT_HANDLERS = list(logging.getLogger().handlers)


@pytest.fixture(autouse=True)
def _restore_logging():
    """In-process Hydra apps (icm train, icm pretrain) install logging handlers bound to the
    stderr of the test that ran them; later tests would log into that closed stream."""
    yield
    root = logging.getLogger()
    for h in list(root.handlers):
        if h not in _ROOT_HANDLERS:
            root.removeHandler(h)
