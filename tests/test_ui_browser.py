"""The workbench in a real JupyterLab, driven in headless Chromium (scripts/ui_check.py).

Runs where Debian's chromium and playwright (``pip install -e ".[ui]"``) are installed, and is
skipped with the reason elsewhere (CI has no browser). The script runs notebook 01, checks the
Train panel updates live while another cell runs, that Stop stops, that the Workbench's
Inspector tab shows the Inspector panel, and screenshots every tab;
then runs notebook 03, screenshots every inspector view and clicks the attention map with the
mouse (the query must move: plotly drops the clicks of a figure changed while it draws).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from ui_check import find_chromium  # noqa: E402

pytestmark = [
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium here (apt install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install -e '.[ui]')"),
]


@pytest.mark.timeout(2500)  # above the subprocess's limit, itself above the script's own limits
def test_workbench_updates_live_and_stops_in_jupyterlab(tmp_path):
    out = tmp_path / "shots"
    # above the script's own limits (its *_S constants, sized for a busy shared CPU)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_check.py"), "--out", str(out),
                           "--wait", "6"], capture_output=True, text=True, timeout=2400)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert "error" not in report, report.get("error")
    assert report["notebook_run"]["live"] and report["notebook_stopped"]
    assert report["start_click"]["live"] and report["start_click"]["kernel_busy"]
    assert report["stopped"]
    assert report["workbench_inspector"]["shown"], report["workbench_inspector"]
    assert report["attention_click"]["moved"], report["attention_click"]
    assert len(report["screenshots"]) >= 13 and all(Path(p).stat().st_size > 10_000
                                                   for p in report["screenshots"])
    assert proc.returncode == 0
