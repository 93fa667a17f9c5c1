"""Every notebook runs top to bottom on a fresh kernel (offline, CPU), in its QUICK setting.

A notebook's cell tagged ``parameters`` (papermill's convention) sets ``QUICK = False``; the
test runs a cell ``QUICK = True`` right after it, so CI executes the short version. Every
notebook must have that cell: CI time for all notebooks together is budgeted (5 minutes).
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(Path(__file__).parent.parent.joinpath("notebooks").glob("*.ipynb"))


def quick(nb):
    """Insert ``QUICK = True`` after the ``parameters`` cell (which must exist)."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged, "the notebook needs a code cell tagged 'parameters' that sets QUICK = False"
    assert "QUICK" in nb.cells[tagged[0]].source
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("QUICK = True"))
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # one intra-op thread for the kernel (it inherits the environment): the QUICK models are
    # tiny, and two threads fighting another process for 2 cores made a notebook 5x slower
    # (05: 23 s alone, 118 s beside a benchmark)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = quick(nbformat.read(path, as_version=4))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
