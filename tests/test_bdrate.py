"""BD-rate on real curves: any lengths, metric direction, Pareto fronts, honest refusals."""

import numpy as np
import pytest

from icm_core.evaluation.bdrate import bd_rate, pareto_front

BPP = [0.1, 0.2, 0.4, 0.8]
ACC = [30.0, 40.0, 48.0, 54.0]


def _reference_bd_rate(anchor, test, lo, hi, n=20001):
    """Independent BD-rate: piecewise-linear log10-rate over the metric, mean difference."""
    xs = np.linspace(lo, hi, n)
    la = np.interp(xs, anchor[1], np.log10(anchor[0]))
    lt = np.interp(xs, test[1], np.log10(test[0]))
    return (10 ** (np.trapz(lt - la, xs) / (hi - lo)) - 1) * 100  # geometric mean ratio


def test_identical_curves_and_half_the_bits():
    assert bd_rate((BPP, ACC), (BPP, ACC)).value == pytest.approx(0.0, abs=1e-6)
    half = bd_rate((BPP, ACC), ([b / 2 for b in BPP], ACC))
    assert half.value == pytest.approx(-50.0, abs=1e-6) and half.comparable
    assert half.metric_range == (30.0, 54.0) and half.method == "pchip"
    double = bd_rate((BPP, ACC), ([2 * b for b in BPP], ACC))
    assert double.value == pytest.approx(100.0, abs=1e-6)  # sign: positive = more bits


def test_lower_is_better_metrics_are_negated():
    rmse = [0.9, 0.7, 0.6, 0.55]
    r = bd_rate((BPP, rmse), ([b / 2 for b in BPP], rmse), higher_is_better=False)
    assert r.value == pytest.approx(-50.0, abs=1e-6)
    assert r.metric_range == (0.55, 0.9)  # reported in the metric's own units
    # the same bits but a lower error is a saving, not a loss
    better = bd_rate((BPP, rmse), (BPP, [v - 0.05 for v in rmse]), higher_is_better=False)
    assert better.value < 0


def test_curves_of_different_lengths():
    ladder = np.geomspace(0.03, 1.0, 16)
    acc = 20 + 30 * (1 - np.exp(-ladder / 0.15))
    test = ([0.05, 0.12, 0.3], list(20 + 30 * (1 - np.exp(-np.array([0.1, 0.24, 0.6]) / 0.15))))
    r = bd_rate((list(ladder), list(acc)), test)
    assert r.comparable and r.value == pytest.approx(-50.0, abs=2.0)


def test_pchip_stays_near_the_linear_reference_where_akima_overshoots():
    # a codec fed to a task network: flat at the ceiling, then a cliff at low rate
    anchor = ([0.02, 0.025, 0.03, 0.2, 0.4, 0.8, 1.6], [5.0, 20.0, 44.0, 45.0, 45.5, 45.8, 46.0])
    test = ([0.01, 0.02, 0.05, 0.1], [10.0, 40.0, 45.0, 46.0])
    lo, hi = 10.0, 46.0
    ref = _reference_bd_rate(anchor, test, lo, hi)
    pchip = bd_rate(anchor, test).value
    assert abs(pchip - ref) < abs(bd_rate(anchor, test, method="akima").value - ref) + 1e-9
    assert abs(pchip - ref) < 10


def test_pareto_front_drops_dominated_points():
    rates, vals = pareto_front([0.4, 0.1, 0.2, 0.3, 0.5], [40, 30, 35, 34, 40])
    assert rates == [0.1, 0.2, 0.4] and vals == [30, 35, 40]
    rates, vals = pareto_front([0.1, 0.2, 0.3], [0.9, 0.95, 0.7], higher_is_better=False)
    assert rates == [0.1, 0.3] and vals == [0.9, 0.7]


def test_not_comparable_says_why():
    far = bd_rate((BPP, ACC), ([1, 2], [60.0, 70.0]))
    assert far.value is None and "share too little" in far.reason and str(far).startswith("n/a")
    one = bd_rate((BPP, ACC), ([0.1, 0.2], [35.0, 35.0]))
    assert one.value is None and "1 useful point" in one.reason
    with pytest.raises(ValueError, match="method"):
        bd_rate((BPP, ACC), (BPP, ACC), method="spline")
