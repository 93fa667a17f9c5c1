"""Every notebook runs top to bottom on a fresh kernel (offline, CPU), in its QUICK setting.

A notebook's cell tagged ``parameters`` (papermill's convention) sets ``QUICK = False``; the
test runs a cell ``QUICK = True`` right after it, so CI executes the short version. Every
notebook must have that cell: CI time for all notebooks together is budgeted (5 minutes).
A notebook's other parameters are set in the same cell where ``PARAMETERS`` names them (03 is
run with ``PHOTO``, a small PNG written here: its default path, validation sample 0, runs in its
bits cell either way).
"""

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

NOTEBOOKS = sorted(Path(__file__).parent.parent.joinpath("notebooks").glob("*.ipynb"))


def photo(tmp_path):
    """A 40 x 56 photo (no labels) for notebook 03's ``PHOTO``."""
    path = tmp_path / "my photo.png"
    x = np.linspace(0, 255, 56, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(x, (40, 1))] * 3, axis=-1)).save(path)
    return path


PARAMETERS = {"03_inspect.ipynb": lambda tmp_path: {"PHOTO": str(photo(tmp_path))}}


def quick(nb, **params):
    """Insert ``QUICK = True`` (and ``params``) after the ``parameters`` cell (which must exist)."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged, "the notebook needs a code cell tagged 'parameters' that sets QUICK = False"
    assert "QUICK" in nb.cells[tagged[0]].source
    for name in params:
        assert f"{name} = " in nb.cells[tagged[0]].source, f"{name} is no parameter"
    lines = ["QUICK = True", *(f"{k} = {v!r}" for k, v in params.items())]
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("\n".join(lines)))
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # one intra-op thread for the kernel (it inherits the environment): the QUICK models are
    # tiny, and two threads fighting another process for 2 cores made a notebook 5x slower
    # (05: 23 s alone, 118 s beside a benchmark)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = PARAMETERS[path.name](tmp_path) if path.name in PARAMETERS else {}
    nb = quick(nbformat.read(path, as_version=4), **params)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    if "PHOTO" in params:  # the inspector shows the photo, and says why it has no error map
        shown = [o["data"]["text/plain"] for c in nb.cells if c.source == "panel.message.value"
                 for o in c.outputs if "data" in o]
        assert shown and "my photo.png" in shown[0] and "no labels: error maps skipped" in shown[0]
