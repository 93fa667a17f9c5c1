"""Dataset-level metrics of the paper's evaluation (section 3.1).

Every metric accumulates over a whole dataset with ``update(pred, target)`` and reports one
number with ``compute()``. Inputs are batched torch tensors (see ``make_metric``).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from skimage.morphology import thin

from icm_core.errors import ConfigError
from icm_core.tasks.registry import IGNORE_INDEX, get_task

try:  # optional: the BSDS/SEISM matcher, a C++ extension built from pyedgeeval's sdist
    from pyEdgeEval import correspond_pixels as _correspond_pixels
except ImportError:
    _correspond_pixels = None

# boundary matchings of ``BoundaryODSF``: the literature's (BSDS/SEISM correspondPixels) and ours
MATCHINGS = ("seism", "fast")
SEISM_AVAILABLE = _correspond_pixels is not None
SEISM_INSTALL = ("pip install 'icm-workbench[seism]' (pyedgeeval>=0.2.8; it compiles C++, so a "
                 "compiler is needed) or use matching='fast'")
# correspondPixels draws its sparse outlier graph from a generator seeded by the clock when the
# extension loads; it is reseeded with this value before every call so odsF is reproducible
SEISM_SEED = 1


def _check_batch(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
        raise ConfigError(
            f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in "
            "batch or spatial size; resize predictions to the label size first"
        )


class MeanIoU:
    """mIoU over all ``num_classes`` classes, from a dataset-level confusion matrix.

    As InvPT's ``SemsegMeter`` (evaluation/eval_semseg.py): per class, IoU = tp / max(tp + fp +
    fn, eps) with counts summed over the dataset, and the mean runs over every class of the
    dataset, so a class absent from both labels and predictions scores 0. Pixels labelled 255
    are ignored; a predicted id outside [0, num_classes) is a miss of the true class. nan before
    any valid pixel.
    """

    higher_is_better = True

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        # the extra column collects predictions outside [0, num_classes): misses of no class
        self.confusion = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() == 4:  # logits (B, C, H, W)
            pred = pred.argmax(dim=1)
        target = target[:, 0] if target.dim() == 4 else target
        _check_batch(pred, target, "mIoU")
        valid = target != IGNORE_INDEX
        t, p = target[valid].long().cpu(), pred[valid].long().cpu()
        if t.numel() and (t.max() >= self.num_classes or t.min() < 0):
            raise ConfigError(f"mIoU: label {int(t.max())} outside [0, {self.num_classes}); "
                              "check num_classes or the dataset's label mapping")
        C = self.num_classes
        p = torch.where((p >= 0) & (p < C), p, torch.full_like(p, C))
        self.confusion += torch.bincount(t * (C + 1) + p, minlength=C * (C + 1)).view(C, C + 1)

    def per_class_iou(self) -> np.ndarray:
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm[:, : self.num_classes].sum(0) + cm.sum(1) - tp  # tp + fp + fn
        return (tp / union.clamp(min=1e-8)).numpy()

    def compute(self) -> float:
        if int(self.confusion.sum()) == 0:
            return float("nan")
        return float(self.per_class_iou().mean() * 100)


class DepthRMSE:
    """Root mean square error in metres, pooled over all valid pixels (target > 0) of the dataset.

    As InvPT's ``DepthMeter`` (evaluation/eval_depth.py): predictions <= 0 count as 1e-9 (depth
    is positive) and RMSE = sqrt(sum of squared errors / number of valid pixels) over the whole
    dataset, not a mean of per-image RMSEs. (InvPT marks missing depth 0 as ignore 255 first.)
    """

    higher_is_better = False

    def __init__(self):
        self.sq, self.n = 0.0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "RMSE")
        valid = target > 0
        pred = pred.double()
        pred = torch.where(pred > 0, pred, torch.full_like(pred, 1e-9))
        self.sq += float(((pred - target.double())[valid] ** 2).sum())
        self.n += int(valid.sum())

    def compute(self) -> float:
        return float(np.sqrt(self.sq / self.n)) if self.n else float("nan")


class NormalsMeanError:
    """Mean angle in degrees between normalized predicted and true normals, over valid pixels.

    Target pixels whose vector is all zero are invalid and ignored. The angle is
    2 atan2(|p - t|, |p + t|) of the unit vectors, as InvPT's ``NormalsMeter``
    (evaluation/eval_normals.py): exact near 0 degrees, where acos of a float32 cosine is not.
    A zero prediction is 90 degrees from everything.
    """

    higher_is_better = False

    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "mErr")
        valid = target.abs().sum(dim=1) > 0
        p, t = F.normalize(pred.double(), dim=1), F.normalize(target.double(), dim=1)
        ang = torch.rad2deg(2 * torch.atan2((p - t).norm(dim=1), (p + t).norm(dim=1)))
        self.total += float(ang[valid].sum())
        self.n += int(valid.sum())

    def compute(self) -> float:
        return self.total / self.n if self.n else float("nan")


def _thresholds(n: int) -> np.ndarray:
    """``n`` evenly spaced thresholds k / (n + 1), k = 1..n: 19 give InvPT's 0.05, ..., 0.95,
    99 give the BSDS benchmark's 0.01, ..., 0.99."""
    if int(n) != n or n < 1:
        raise ConfigError(f"n_thresholds={n}: give a whole number of thresholds >= 1 (19 for "
                          "0.05 steps, 99 for 0.01)")
    return np.arange(1, int(n) + 1) / (int(n) + 1)


class SaliencyMaxF:
    """Maximal F-measure (beta^2 = 0.3) of saliency probabilities, in percent.

    As InvPT's ``SaliencyMeter`` (evaluation/eval_sal.py, ``threshold_step=0.05``,
    ``beta_squared=0.3``): at each threshold 0.05, 0.10, ..., 0.95 a pixel is salient when its
    probability is >= the threshold; true, predicted and actual positives (target > 0.5; InvPT's
    loader binarises at 0.5) are summed over every valid pixel (label != 255) of the dataset;
    F of those totals (0 where undefined), maximised over thresholds. Pooling weighs every
    pixel alike: not a per-image average of precision and recall.

    InvPT's meter passes the probability through a second sigmoid (``sigmoid(softmax * 255 /
    255)``), so its thresholds act at probability logit(t) for t in 0.55..0.70 and at 0 or 1
    otherwise; ``invpt_sigmoid=True`` reproduces that, the default thresholds the probability.
    """

    higher_is_better = True

    def __init__(self, n_thresholds: int = 19, beta2: float = 0.3, invpt_sigmoid: bool = False):
        self.th = torch.tensor(_thresholds(n_thresholds), dtype=torch.float32)
        self.beta2 = beta2
        self.invpt_sigmoid = invpt_sigmoid
        self.counts = torch.zeros(3, n_thresholds, dtype=torch.float64)  # tp, predicted, actual
        self.n = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "maxF")
        p, t = pred.float().cpu().flatten(), target.cpu().flatten()
        valid = t != IGNORE_INDEX
        p, t = p[valid], t[valid] > 0.5
        if self.invpt_sigmoid:
            p = torch.sigmoid(p)
        above = p[None, :] >= self.th[:, None]  # (T, N)
        self.counts[0] += (above & t[None]).sum(1).double()
        self.counts[1] += above.sum(1).double()
        self.counts[2] += float(t.sum())
        self.n += int(valid.sum())

    def compute(self) -> float:
        if not self.n:
            return float("nan")
        tp, npred, nact = self.counts
        p, r = tp / npred, tp / nact  # nan where undefined, scored 0 below as InvPT does
        f = ((1 + self.beta2) * p * r / (self.beta2 * p + r)).nan_to_num(nan=0.0)
        return float(f.max()) * 100


def match_boundaries(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[int, int]:
    """The fast matching: one-to-one matching of boolean boundary maps within ``max_dist`` pixels.

    A maximum-cardinality bipartite matching (Hopcroft-Karp, scipy) of the pixels within the
    Euclidean distance ``max_dist`` (inclusive). Returns (matched predicted pixels, matched true
    pixels); both equal the matching size, the most pixels any one-to-one matching can pair.
    """
    pp, gp = np.argwhere(pred), np.argwhere(gt)
    if len(pp) == 0 or len(gp) == 0:
        return 0, 0
    pairs = cKDTree(pp).sparse_distance_matrix(cKDTree(gp), max_dist, output_type="coo_matrix")
    if pairs.nnz == 0:
        return 0, 0
    graph = coo_matrix((np.ones(pairs.nnz), (pairs.row, pairs.col)), shape=pairs.shape).tocsr()
    match = maximum_bipartite_matching(graph, perm_type="column")
    m = int((match >= 0).sum())
    return m, m


@functools.cache
def _seism_reseed():
    """``Random::reseed`` of pyedgeeval's correspondPixels extension, or None where not exported.

    The extension's generator is a C++ static (``Random::rand``) seeded from the time of day;
    its symbols are looked up in the loaded shared object (Itanium C++ ABI, Linux and macOS).
    """
    module = sys.modules.get("pyEdgeEval._lib.correspond_pixels")
    try:
        lib = ctypes.CDLL(module.__file__)
        this = ctypes.addressof(ctypes.c_char.in_dll(lib, "_ZN6Random4randE"))
        reseed = lib._ZN6Random6reseedEm
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    reseed.argtypes, reseed.restype = [ctypes.c_void_p, ctypes.c_uint64], None
    return functools.partial(reseed, this)


def match_boundaries_seism(pred: np.ndarray, gt: np.ndarray, max_dist: float,
                           outlier_cost: float = 100.0) -> tuple[int, int]:
    """The BSDS/SEISM matching: ``correspondPixels`` through pyedgeeval; ``max_dist`` is a
    fraction of the image diagonal, as in the benchmark (0.011 NYUD-v2, 0.0075 PASCAL).

    A minimum-cost perfect assignment (CSA) between the predicted and true pixels plus outlier
    nodes: a pair within the tolerance costs its distance, leaving a pixel unmatched costs
    ``outlier_cost`` times the tolerance. Since an outlier costs 100 times any match, the
    assignment pairs as many pixels as it can and, among those pairings, the closest; but each
    pixel reaches only 6 randomly drawn outlier nodes (the benchmark's sparse outlier graph), and
    where that graph cannot absorb a maximum matching's leftovers (an outlier node nothing links
    to) the assignment gives up a match instead. So it pairs at most as many pixels as
    ``match_boundaries``, and now and then one or a few fewer, even on two identical lines of
    100 pixels. The draw is reseeded with ``SEISM_SEED`` before every call, so the counts are
    reproducible (MATLAB's mex and pyedgeeval seed it from the clock when loaded, so theirs
    jitter by those few pixels from run to run). Returns (matched predicted, matched true)
    pixels, which are equal.
    """
    if _correspond_pixels is None:
        raise ConfigError(f"odsF matching='seism' needs pyedgeeval, which is not installed: "
                          f"{SEISM_INSTALL}")
    if not pred.any() or not gt.any():
        return 0, 0
    reseed = _seism_reseed()
    if reseed is not None:
        reseed(SEISM_SEED)
    m1, m2, _, _ = _correspond_pixels(pred, gt, max_dist=max_dist, outlier_cost=outlier_cost)
    return int((m1 > 0).sum()), int((m2 > 0).sum())


def _resolve_matching(matching: str | None) -> str:
    if matching is None:
        return "seism" if SEISM_AVAILABLE else "fast"
    if matching not in MATCHINGS:
        raise ConfigError(f"odsF matching={matching!r} is not one of {', '.join(MATCHINGS)}: "
                          "'seism' is the BSDS/SEISM correspondPixels of the literature, 'fast' "
                          "a maximum bipartite matching")
    if matching == "seism" and not SEISM_AVAILABLE:
        raise ConfigError(f"odsF matching='seism' needs pyedgeeval, which is not installed: "
                          f"{SEISM_INSTALL}")
    return matching


class BoundaryODSF:
    """Optimal-dataset-scale F-measure (odsF) of boundary maps.

    Per threshold, the prediction is binarised and thinned (scikit-image), its pixels are matched
    one-to-one with ground-truth boundary pixels within ``max_dist`` times the image diagonal
    (0.011 NYUD-v2, 0.0075 PASCAL), and counts are summed over the dataset; odsF is the best
    F over thresholds of those totals, in percent: one threshold for the whole dataset (ODS),
    not each image's best (OIS, which is higher). Thresholds k / 100 (k = 1..99) with
    prediction >= threshold, as the BSDS benchmark.

    ``matching`` pairs the pixels: ``"seism"`` is the BSDS/SEISM ``correspondPixels`` that the
    literature's numbers come from (``match_boundaries_seism``, through pyedgeeval, an optional
    dependency), ``"fast"`` a maximum bipartite matching (``match_boundaries``, scipy). The
    default (None) is ``"seism"`` where pyedgeeval is installed and ``"fast"`` otherwise;
    ``self.matching`` says which one counts. Both pair within the same Euclidean tolerance;
    SEISM's sparse outlier graph now and then leaves a pair unmatched, so ``"fast"`` scores at
    least as high: 0 to 0.05 points of odsF higher (mean 0.03) on synthetic 240x320 scenes, where
    SEISM took 4-12 times as long (median 6; benchmarks/bench_boundary_matching.py).

    Other differences from the MATLAB SEISM tool: the ground truth is not thinned; there is one
    ground-truth map per image; no border is cropped.
    """

    higher_is_better = True

    def __init__(self, max_dist: float = 0.011, n_thresholds: int = 99,
                 matching: str | None = None):
        if not 0 < max_dist < 1:
            raise ConfigError(
                f"odsF max_dist={max_dist} must be a fraction of the diagonal in (0, 1)")
        self.max_dist = max_dist
        self.matching = _resolve_matching(matching)
        self.th = _thresholds(n_thresholds)
        # per threshold: matched predicted, predicted, matched true, true boundary pixels
        self.counts = np.zeros((n_thresholds, 4), np.int64)

    def _match(self, b: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
        if self.matching == "seism":
            return match_boundaries_seism(b, gt, self.max_dist)
        return match_boundaries(b, gt, self.max_dist * float(np.hypot(*gt.shape)))

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "odsF")
        for p, t in zip(pred.float().cpu().numpy(), target.cpu().numpy()):
            p, t = p.reshape(p.shape[-2:]), t.reshape(t.shape[-2:])
            valid = t != IGNORE_INDEX
            gt = (t > 0.5) & valid
            for i, th in enumerate(self.th):
                b = (p >= th) & valid
                if b.any():
                    b = thin(b)
                mp, mg = self._match(b, gt)
                self.counts[i] += (mp, int(b.sum()), mg, int(gt.sum()))

    def compute(self) -> float:
        mp, npred, mg, ngt = self.counts.T.astype(np.float64)
        if ngt.max() == 0 and npred.max() == 0:
            return float("nan")
        prec = np.divide(mp, npred, out=np.zeros_like(mp), where=npred > 0)
        rec = np.divide(mg, ngt, out=np.zeros_like(mg), where=ngt > 0)
        f = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(prec), where=prec + rec > 0)
        return float(f.max()) * 100


_MAX_DIST = {"nyud": 0.011, "pascal": 0.0075, "synthetic": 0.011}


METRICS: dict[str, Callable[..., object]] = {
    "mIoU": lambda spec, dataset, num_classes=None, **o: MeanIoU(num_classes
                                                                or spec.out_channels(dataset)),
    "RMSE": lambda spec, dataset, **o: DepthRMSE(),
    "mErr": lambda spec, dataset, **o: NormalsMeanError(),
    "maxF": lambda spec, dataset, **o: SaliencyMaxF(**o),
    "odsF": lambda spec, dataset, **o: BoundaryODSF(**{"max_dist": _MAX_DIST.get(dataset, 0.011),
                                                      **o}),
}
"""The metric of each ``TaskSpec.metric`` name: ``builder(spec, dataset, **options)``. A task
with a new metric registers its builder here (one entry), never an if-chain on task names."""


def make_metric(task: str, *, dataset: str = "synthetic", num_classes: int | None = None,
                **options):
    """The metric object of ``task`` (name or alias), configured for ``dataset``.

    Options: ``num_classes`` (class tasks), ``n_thresholds`` (maxF, odsF), ``max_dist`` and
    ``matching`` (odsF: ``"seism"`` or ``"fast"``, see ``BoundaryODSF``), ``invpt_sigmoid`` (maxF).
    """
    spec = get_task(task)
    if spec.metric not in METRICS:
        raise ConfigError(f"task {spec.name!r} reports {spec.metric!r}, which has no metric "
                          f"builder; register one in METRICS (known: {sorted(METRICS)})")
    if num_classes is not None:
        options["num_classes"] = num_classes
    return METRICS[spec.metric](spec, dataset, **options)
