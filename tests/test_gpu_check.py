"""scripts/gpu_check.sh's dry run (--device cpu --tiny): the Python part of each step that is
not the `icm bench` already covered by tests/test_accounting.py, on the CPU with the tiny preset."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_dry_run_torchrun_and_gpu_encode_cpu_decode(tmp_path):
    report = gpu_check.main(["--device", "cpu", "--tiny", "--only", "torchrun,codec",
                             "--out", str(tmp_path)])
    assert report["ok"], {k: v.get("error") for k, v in report["steps"].items()}
    saved = json.loads((tmp_path / "gpu_check_dryrun.json").read_text())
    assert saved["steps"].keys() == {"torchrun", "codec"}
    ddp = saved["steps"]["torchrun"]["result"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["grads_finite"]
    codec = saved["steps"]["codec"]["result"]
    assert codec["prediction_equal"] and codec["bytes_equal"]  # the same CPU on both sides
