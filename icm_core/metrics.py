"""Dataset-level metrics of the paper's evaluation (section 3.1).

Every metric accumulates over a whole dataset with ``update(pred, target)`` and reports one
number with ``compute()``. Inputs are batched torch tensors (see ``make_metric``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from skimage.morphology import thin

from icm_core.errors import ConfigError
from icm_core.tasks import IGNORE_INDEX, get_task


def _check_batch(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
        raise ConfigError(
            f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in "
            "batch or spatial size; resize predictions to the label size first"
        )


class MeanIoU:
    """mIoU from a dataset-level confusion matrix; pixels labelled 255 are ignored.

    Classes that never occur in the labels nor the predictions are left out of the mean.
    """

    higher_is_better = True

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

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
        idx = t * self.num_classes + p.clamp(0, self.num_classes - 1)
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes)

    def per_class_iou(self) -> np.ndarray:
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return iou.numpy()

    def compute(self) -> float:
        iou = self.per_class_iou()
        return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan")


class DepthRMSE:
    """Root mean square error in metres over all valid pixels (target > 0) of the dataset."""

    higher_is_better = False

    def __init__(self):
        self.sq, self.n = 0.0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "RMSE")
        valid = target > 0
        self.sq += float(((pred.double() - target.double())[valid] ** 2).sum())
        self.n += int(valid.sum())

    def compute(self) -> float:
        return float(np.sqrt(self.sq / self.n)) if self.n else float("nan")


class NormalsMeanError:
    """Mean angle in degrees between normalized predicted and true normals.

    Target pixels whose vector is all zero are invalid and ignored.
    """

    higher_is_better = False

    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "mErr")
        valid = target.abs().sum(dim=1) > 0
        cos = (F.normalize(pred.float(), dim=1) * F.normalize(target.float(), dim=1)).sum(dim=1)
        ang = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))
        self.total += float(ang[valid].double().sum())
        self.n += int(valid.sum())

    def compute(self) -> float:
        return self.total / self.n if self.n else float("nan")


def _thresholds(n: int) -> np.ndarray:
    return np.linspace(0.01, 0.99, n)


class SaliencyMaxF:
    """Maximal F-measure (beta^2 = 0.3) of saliency maps.

    As in the saliency literature (and InvPT's evaluation), precision and recall are computed
    per image at each threshold, averaged over the dataset, and F is maximised over thresholds.
    An image with no predicted foreground at a threshold has precision 0 there; an image whose
    pixels are all ignored (255) is left out.
    """

    higher_is_better = True

    def __init__(self, n_thresholds: int = 99, beta2: float = 0.3):
        self.th = torch.tensor(_thresholds(n_thresholds), dtype=torch.float32)
        self.beta2 = beta2
        self.prec = torch.zeros(n_thresholds, dtype=torch.float64)
        self.rec = torch.zeros(n_thresholds, dtype=torch.float64)
        self.n = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "maxF")
        for p, t in zip(pred.float().cpu(), target.cpu()):
            valid = t != IGNORE_INDEX
            if not valid.any():  # an image with every pixel ignored does not vote
                continue
            p, t = p[valid], t[valid] > 0.5
            above = p[None, :] >= self.th[:, None]  # (T, N)
            tp = (above & t[None]).sum(1).double()
            self.prec += tp / above.sum(1).clamp(min=1)
            self.rec += tp / max(int(t.sum()), 1)
            self.n += 1

    def compute(self) -> float:
        if not self.n:
            return float("nan")
        p, r = self.prec / self.n, self.rec / self.n
        f = (1 + self.beta2) * p * r / (self.beta2 * p + r).clamp(min=1e-12)
        return float(f.max()) * 100


def match_boundaries(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[int, int]:
    """One-to-one matching of boolean boundary maps within ``max_dist`` pixels.

    Returns (matched predicted pixels, matched true pixels); both equal the matching size.
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


class BoundaryODSF:
    """Optimal-dataset-scale F-measure (odsF) of boundary maps.

    Per threshold, the prediction is binarised and thinned (scikit-image), its pixels are matched
    one-to-one with ground-truth boundary pixels within ``max_dist`` times the image diagonal
    (0.011 NYUD-v2, 0.0075 PASCAL), and counts are summed over the dataset; odsF is the best
    F over thresholds, in percent.

    Differences from the MATLAB SEISM/BSDS tool: matching is a maximum-cardinality bipartite
    matching (Hopcroft-Karp, scipy) of pixels within the Euclidean tolerance rather than SEISM's
    minimum-cost assignment (``correspondPixels``); the ground truth is not thinned; there is
    one ground-truth map per image; no border is cropped. Numbers are close, not identical.
    """

    higher_is_better = True

    def __init__(self, max_dist: float = 0.011, n_thresholds: int = 99):
        if not 0 < max_dist < 1:
            raise ConfigError(f"odsF max_dist={max_dist} must be a fraction of the diagonal in (0, 1)")
        self.max_dist = max_dist
        self.th = _thresholds(n_thresholds)
        self.counts = np.zeros((n_thresholds, 4), np.int64)  # matched_pred, n_pred, matched_gt, n_gt

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_batch(pred, target, "odsF")
        for p, t in zip(pred.float().cpu().numpy(), target.cpu().numpy()):
            p, t = p.reshape(p.shape[-2:]), t.reshape(t.shape[-2:])
            valid = t != IGNORE_INDEX
            gt = (t > 0.5) & valid
            tol = self.max_dist * float(np.hypot(*gt.shape))
            for i, th in enumerate(self.th):
                b = (p >= th) & valid
                if b.any():
                    b = thin(b)
                mp, mg = match_boundaries(b, gt, tol)
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


def make_metric(task: str, *, dataset: str = "synthetic", num_classes: int | None = None,
                **options):
    """The metric object of ``task`` (name or alias), configured for ``dataset``.

    Options: ``num_classes`` (class tasks), ``n_thresholds`` (maxF, odsF), ``max_dist`` (odsF).
    """
    spec = get_task(task)
    if spec.metric == "mIoU":
        return MeanIoU(num_classes or spec.out_channels(dataset))
    if spec.metric == "RMSE":
        return DepthRMSE()
    if spec.metric == "mErr":
        return NormalsMeanError()
    if spec.metric == "maxF":
        return SaliencyMaxF(**options)
    options.setdefault("max_dist", _MAX_DIST.get(dataset, 0.011))
    return BoundaryODSF(**options)
