"""The per-lambda ladders (``TASK_LAMBDAS``, ``icm demo --per-lambda``) are chosen on validation
scenes by ``benchmarks/bench_choose_ladders.py --rule per-lambda``: its candidates, its rule, and
the package holding what the committed run chose."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_choose_ladders import geometric, ladder_candidates, pick_ladder  # noqa: E402

from icm_core.studies.demo import TASK_LAMBDAS, TASK_RATE_LAMBDAS  # noqa: E402
from icm_core.tasks.registry import TASKS  # noqa: E402


def test_candidates_are_the_package_halved_and_the_anchor_span():
    for task in TASKS:
        c = ladder_candidates(task)
        assert len({tuple(v) for v in c.values()}) == len(c)  # no ladder twice
        assert {"package", "lower"} <= set(c)  # halving always gives another ladder
        span = geometric(TASK_RATE_LAMBDAS[task][0], TASK_RATE_LAMBDAS[task][-1], 3)
        assert "anchor-span" in c or span in c.values()  # left out only as a repeat
        for ladder in c.values():
            assert len(ladder) == 3 and ladder == sorted(ladder)
        assert c["package"] == list(TASK_LAMBDAS[task])
        if "lower" in c:
            assert c["lower"] == pytest.approx([x / 2 for x in TASK_LAMBDAS[task]], rel=1e-3)
        if "anchor-span" in c:
            lo, hi = TASK_RATE_LAMBDAS[task][0], TASK_RATE_LAMBDAS[task][-1]
            assert c["anchor-span"][0] == pytest.approx(lo, rel=1e-3)
            assert c["anchor-span"][2] == pytest.approx(hi, rel=1e-3)
            # geometric: the middle lambda is the geometric mean of the ends
            assert c["anchor-span"][1] == pytest.approx((lo * hi) ** 0.5, rel=2e-3)


def _cand(bd, values):
    return {"bd_rate_payload": bd, "values": values}


def test_rule_takes_the_lowest_bd_rate_and_ignores_candidates_without_one():
    scored = {"a": _cand(-10.0, [1, 2, 3]), "b": _cand(-30.0, [1, 2, 2.5]),
              "c": _cand(None, [5, 6, 7])}
    assert pick_ladder(scored, 6.0, True)[0] == "b"  # not c, the best points, without a BD-rate
    assert "-30.0 %" in pick_ladder(scored, 6.0, True)[1]


@pytest.mark.parametrize("higher_is_better,want", [(True, "a"), (False, "b")])
def test_without_any_bd_rate_the_best_point_closest_to_uncompressed_wins(higher_is_better, want):
    # a reaches 9.5 (best when higher is better), b reaches 9.0 (best when lower is better:
    # its lowest value 9.0 is nearer 9.2 than a's lowest 8.0)
    scored = {"a": _cand(None, [8.0, 9.5]), "b": _cand(None, [9.0, 9.1])}
    name, why = pick_ladder(scored, 9.2 if not higher_is_better else 10.0, higher_is_better)
    assert name == want and "no candidate has a BD-rate" in why

def test_package_ladders_are_the_validation_choice():
    chosen = sorted((ROOT / "benchmarks" / "results").glob("ladders_val_per_lambda_*.json"))
    tasks = {}
    for path in chosen:
        doc = json.loads(path.read_text())
        assert "val scenes" in doc["held_out"], path.name
        for task, r in doc["summary"].items():
            tasks[task] = path.name
            assert list(TASK_LAMBDAS[task]) == r["choice"]["ladder"], (task, path.name)
            assert r["choice"]["name"] in r["candidates"]
    assert set(tasks) == set(TASKS)
