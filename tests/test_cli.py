import subprocess
import sys

from PIL import Image

from icm_core.cli.main import main


def test_help_runs_as_console_script():
    r = subprocess.run([sys.executable, "-m", "icm_core.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: icm" in r.stdout


def test_data_preview_writes_a_grid(tmp_path):
    out = tmp_path / "sub" / "preview.png"
    assert main(["data", "preview", "synthetic", "--out", str(out), "-n", "2", "--height", "32",
                 "--width", "40"]) == 0
    img = Image.open(out)
    # 7 columns (RGB + six tasks) of 40 px plus 4 px gaps; 2 rows of 32 px plus title
    assert img.size == (7 * 44 + 4, 2 * 36 + 4 + 14)
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))  # no temporary left behind
