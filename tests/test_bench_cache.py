"""The benchmarks' training cache (benchmarks/_runs.py): keyed by the overrides, reused only
while today's resolved config is the one the run was trained with and today's code the code
that trained it, so a changed preset or an edited package retrains instead of silently scoring
a stale model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _runs  # noqa: E402
from _runs import SOURCE_FILE, run_dir, train_cached, trained_by  # noqa: E402

from icm_core.files import source_hash  # noqa: E402
from tests.helpers import TINY  # noqa: E402

KEY = ["task=semseg", "train.max_steps=2", "data.val_length=1", "train.batch_size=2"]


def test_cached_run_is_reused_until_its_config_changes(tmp_path):
    _, first, run = train_cached(KEY, tmp_path, settings=TINY)
    assert first is not None and run == run_dir(tmp_path, KEY)
    assert (run / "overrides.json").is_file()
    _, again, _ = train_cached(KEY, tmp_path, settings=TINY)
    assert again is None  # same overrides, same config: loaded
    # a setting that does not act on a DoRA run (the backbone's full fine-tuning rate)
    _, unaffected, _ = train_cached(KEY, tmp_path, settings=[*TINY, "train.backbone_lr=1e-5"])
    assert unaffected is None
    # the same key under a changed preset (another head learning rate): trained again
    _, stale, _ = train_cached(KEY, tmp_path, settings=[*TINY, "train.head_lr=5e-4"])
    assert stale is not None
    _, forced, _ = train_cached(KEY, tmp_path, settings=[*TINY, "train.head_lr=5e-4"],
                                retrain=True)
    assert forced is not None


def test_cached_run_is_retrained_when_the_code_changed(tmp_path, monkeypatch):
    _, first, run = train_cached(KEY, tmp_path, settings=TINY)
    assert first is not None and trained_by(run) == source_hash()
    assert train_cached(KEY, tmp_path, settings=TINY)[1] is None
    monkeypatch.setattr(_runs, "source_hash", lambda: "0" * 64)  # the package edited since
    logged = []
    _, edited, _ = train_cached(KEY, tmp_path, settings=TINY, log=logged.append)
    assert edited is not None and trained_by(run) == "0" * 64
    assert any("other code" in m for m in logged)
    assert train_cached(KEY, tmp_path, settings=TINY)[1] is None  # trained by today's code
    (run / SOURCE_FILE).unlink()  # a run from before the cache recorded its code
    assert train_cached(KEY, tmp_path, settings=TINY)[1] is not None
