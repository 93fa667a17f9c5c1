"""The two boundary matchings of odsF: SEISM's correspondPixels (pyedgeeval) and the fast one.

Each is checked against a reference written here: a maximum matching by augmenting paths (Kuhn)
and, for tiny maps, the minimum-cost assignment by enumeration.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from icm_core import ConfigError
from icm_core.tasks import metrics
from icm_core.tasks.metrics import (
    SEISM_AVAILABLE,
    BoundaryODSF,
    make_metric,
    match_boundaries,
    match_boundaries_seism,
)

needs_seism = pytest.mark.skipif(not SEISM_AVAILABLE, reason="pyedgeeval is not installed")


def _pairs(a: np.ndarray, b: np.ndarray, tol: float) -> tuple[list, list, dict]:
    pa, pb = [tuple(p) for p in np.argwhere(a)], [tuple(p) for p in np.argwhere(b)]
    near = {i: [j for j, q in enumerate(pb) if math.dist(p, q) <= tol] for i, p in enumerate(pa)}
    return pa, pb, near


def _kuhn(a: np.ndarray, b: np.ndarray, tol: float) -> int:
    """Maximum one-to-one matching within ``tol`` pixels, by augmenting paths."""
    pa, pb, near = _pairs(a, b, tol)
    owner: dict[int, int] = {}

    def augment(i, seen):
        for j in near[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(pa)))


def _min_cost_assignment(a: np.ndarray, b: np.ndarray, tol: float) -> dict:
    """correspondPixels' objective on a complete outlier graph, by enumeration (tiny maps only):
    every unpaired pixel costs 100 tolerances, a pair its distance."""
    pa, pb, near = _pairs(a, b, tol)
    best, best_cost = {}, math.inf
    for assign in itertools.product(*[[None, *near[i]] for i in range(len(pa))]):
        used = [j for j in assign if j is not None]
        if len(used) != len(set(used)):
            continue
        cost = sum(math.dist(pa[i], pb[j]) for i, j in enumerate(assign) if j is not None)
        cost += 100 * tol * (len(pa) + len(pb) - 2 * len(used))
        if cost < best_cost - 1e-9:
            best, best_cost = {pa[i]: pb[j] for i, j in enumerate(assign) if j is not None}, cost
    return best


def _frac(tol_px: float, shape) -> float:
    # the diagonal fraction giving ``tol_px`` pixels (up to rounding: keep off 1, sqrt 2, 2, ...)
    return tol_px / math.hypot(*shape)


def _maps(shape, a_pts, b_pts):
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    for p in a_pts:
        a[p] = True
    for p in b_pts:
        b[p] = True
    return a, b


def test_fast_matching_is_maximum_against_augmenting_paths():
    rng = np.random.default_rng(0)
    for _ in range(60):
        a, b = rng.random((2, 12, 14)) < rng.uniform(0.05, 0.4)
        tol = float(rng.choice([1.0, 1.5, 2.0, 2.9]))
        m = _kuhn(a, b, tol)
        assert match_boundaries(a, b, tol) == (m, m)


def test_competing_and_diagonal_cases_fast():
    # one predicted pixel, two true pixels in reach (distance 1 and sqrt 2): one pair
    a, b = _maps((9, 9), [(4, 4)], [(4, 5), (5, 5)])
    assert match_boundaries(a, b, 1.5) == (1, 1)
    # a chain a b a b: greedy nearest-first could pair 1, a maximum matching pairs 2
    a, b = _maps((9, 9), [(4, 2), (4, 4)], [(4, 3), (4, 5)])
    assert match_boundaries(a, b, 1.0) == (2, 2)
    # a diagonal offset (sqrt 2 px) is inside a 1.5 px tolerance and outside 1.2 px
    a, b = _maps((9, 9), [(4, 4)], [(5, 5)])
    assert match_boundaries(a, b, 1.5) == (1, 1)
    assert match_boundaries(a, b, 1.2) == (0, 0)


@needs_seism
def test_competing_and_diagonal_cases_seism_pairs_the_nearest():
    shape = (9, 9)
    a, b = _maps(shape, [(4, 4)], [(4, 5), (5, 5)])
    assert match_boundaries_seism(a, b, _frac(1.5, shape)) == (1, 1)
    m1, m2, _, _ = metrics._correspond_pixels(a, b, max_dist=_frac(1.5, shape))
    ref = _min_cost_assignment(a, b, 1.5)
    assert ref == {(4, 4): (4, 5)}  # the assignment takes the nearer true pixel
    assert m2[4, 5] > 0 and m2[5, 5] == 0
    a, b = _maps(shape, [(4, 2), (4, 4)], [(4, 3), (4, 5)])
    assert match_boundaries_seism(a, b, _frac(1.05, shape)) == (2, 2)
    a, b = _maps(shape, [(4, 4)], [(5, 5)])
    assert match_boundaries_seism(a, b, _frac(1.5, shape)) == (1, 1)
    assert match_boundaries_seism(a, b, _frac(1.2, shape)) == (0, 0)


@needs_seism
def test_seism_equals_the_min_cost_assignment_when_its_outlier_graph_is_complete():
    # with at most 7 pixels a side, correspondPixels links each pixel to every outlier node, so
    # it solves the min-cost assignment exactly: a maximum matching, the nearest among those
    rng = np.random.default_rng(1)
    shape = (7, 8)
    for _ in range(40):
        pa = [tuple(p) for p in rng.integers(0, (7, 8), (rng.integers(1, 6), 2))]
        pb = [tuple(p) for p in rng.integers(0, (7, 8), (rng.integers(1, 6), 2))]
        a, b = _maps(shape, pa, pb)
        tol = float(rng.choice([1.05, 1.5, 2.3]))  # off the lattice distances: no rounding edge
        ref = _min_cost_assignment(a, b, tol)
        assert len(ref) == _kuhn(a, b, tol)
        m1, m2, _, _ = metrics._correspond_pixels(a, b, max_dist=_frac(tol, shape))
        assert int((m1 > 0).sum()) == int((m2 > 0).sum()) == len(ref)
        got_cost = sum(math.dist(p, ref[p]) for p in ref)
        # match1 holds the partner's 1-based column-major index
        partner = {tuple(p): divmod(int(m1[tuple(p)]) - 1, shape[0])[::-1]
                   for p in np.argwhere(m1 > 0)}
        assert sum(math.dist(p, q) for p, q in partner.items()) == pytest.approx(got_cost)


@needs_seism
def test_seism_gives_up_matches_its_sparse_outlier_graph_cannot_absorb():
    # identical 108-pixel lines: the fast matching pairs all; correspondPixels links each pixel to
    # 6 random outlier nodes, and with SEISM_SEED one outlier node is left without a partner, so
    # the assignment leaves one pair unmatched (pyedgeeval 0.2.8)
    a = np.zeros((128, 128), bool)
    a[60, 10:-10] = True
    assert match_boundaries(a, a, 0.011 * math.hypot(128, 128)) == (108, 108)
    assert metrics.SEISM_SEED == 1
    assert metrics._seism_reseed() is not None
    assert [match_boundaries_seism(a, a, 0.011) for _ in range(3)] == [(107, 107)] * 3
    # on dense random maps it never pairs more than the maximum matching, and is reproducible
    rng = np.random.default_rng(2)
    short = 0
    for _ in range(20):
        x, y = rng.random((2, 40, 50)) < 0.3
        fast = match_boundaries(x, y, 0.03 * math.hypot(40, 50))
        seism = match_boundaries_seism(x, y, 0.03)
        assert seism[0] == seism[1] <= fast[0]
        assert match_boundaries_seism(x, y, 0.03) == seism
        short += seism[0] < fast[0]
    assert short > 0


def test_matching_option_and_default(monkeypatch):
    assert make_metric("boundary", matching="fast").matching == "fast"
    expected = "seism" if SEISM_AVAILABLE else "fast"
    assert make_metric("boundary", dataset="pascal").matching == expected
    with pytest.raises(ConfigError, match="matching='hungarian' is not one of seism, fast"):
        BoundaryODSF(matching="hungarian")
    monkeypatch.setattr(metrics, "SEISM_AVAILABLE", False)
    monkeypatch.setattr(metrics, "_correspond_pixels", None)
    assert make_metric("boundary").matching == "fast"
    with pytest.raises(ConfigError, match="needs pyedgeeval.*icm-workbench\\[seism\\]"):
        make_metric("boundary", matching="seism")
    a = np.ones((4, 4), bool)
    with pytest.raises(ConfigError, match="needs pyedgeeval"):
        match_boundaries_seism(a, a, 0.1)


@needs_seism
def test_odsf_thins_and_thresholds_alike_under_both_matchings():
    gt = torch.zeros(1, 1, 64, 64)
    gt[0, 0, 30, 8:-8] = 1.0  # a 48-pixel line
    pred = torch.zeros_like(gt)
    pred[0, 0, 29:32, 8:-8] = 0.8  # a 3-pixel band thins to one line
    pred[0, 0, 50, 8:20] = 0.3  # a false line present only below threshold 0.3
    ms = {k: make_metric("boundary", n_thresholds=9, matching=k) for k in ("seism", "fast")}
    for m in ms.values():
        m.update(pred, gt)
    seism, fast = ms["seism"].counts, ms["fast"].counts
    np.testing.assert_array_equal(seism[:, [1, 3]], fast[:, [1, 3]])  # same thinned pixels
    assert (seism[:, 0] <= fast[:, 0]).all()
    # the band thins to 46 pixels, all within reach of the 48-pixel line; the false line counts
    # below threshold 0.4 only
    np.testing.assert_array_equal(fast[:, 1], [58, 58, 58, 46, 46, 46, 46, 46, 0])
    np.testing.assert_array_equal(fast[:, 0], [46] * 8 + [0])
    assert ms["fast"].compute() == pytest.approx(200 * (46 / 48) / (1 + 46 / 48))
    assert 95 < ms["seism"].compute() <= ms["fast"].compute()
