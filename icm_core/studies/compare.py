"""Side by side on the same held-out images: the learned codec, "Codec + Baseline" and
"Pre-processor + Codec + Baseline" (the paper's section 3.2 comparisons), with BD-rates and a
complexity table.

Every method is scored on the same images: ``SyntheticScenes(split="test")``, whose scene seeds
no training uses. The learned codec's points come from real streams (``evaluate``). A classical
pipeline is one codec at one scale of the resolution ladder (downscale, code, upscale back:
``codecs.code_at_scale``); each quality is a point, its rate the real file bits over the
original pixels, its accuracy what an uncompressed baseline model (``model.compression=false``,
same backbone and budget) makes of the decoded images. A downscaled classical codec is a strong
baseline for machine tasks; leaving it out would flatter the learned codec.

``compare(...)`` (and ``icm compare``) writes, in its output folder:

- ``<method>-<task>.json`` per method (CompressAI layout plus ``task``, ``metric``,
  ``higher_is_better``, ``uncompressed``, ``points``; :func:`load_results` reads it back);
- ``bd_rate.csv``: every method against every anchor: each classical pipeline,
  ``best-classical`` (the Pareto envelope of every classical point), and with a
  pre-processor each ``preproc+<codec>`` pipeline and ``best-preproc`` (their envelope);
- ``ra-<task>.html`` (plotly; ``.png`` too when kaleido is installed);
- ``complexity.csv`` / ``.json``: parameters, trainable %, FLOPs, measured times.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icm_core.baselines import classical
from icm_core.codec import coder
from icm_core.errors import ConfigError, DatasetError
from icm_core.files import atomic_path, write_text
from icm_core.models import rate as vr

SMALL_LADDERS = classical.SMALL_LADDERS
"""Each registered codec's small ladder (``ladder="small"``): ``classical.register_codec``."""
DEFAULT_CODECS = classical.DEFAULT_CODECS
DEFAULT_SCALES = (1.0, 0.5, 0.25)
ENVELOPE = "best-classical"
PREPROC_ENVELOPE = "best-preproc"
CODEC_FLOPS_NOTE = "classical codec FLOPs: not applicable (library code, not counted)"


# --------------------------------------------------------------------------------------------
# results of one method on one task
# --------------------------------------------------------------------------------------------

@dataclass
class Curve:
    """One method's rate-accuracy points on one task (rate = real bits / original pixels)."""

    name: str
    task: str
    metric: str
    higher_is_better: bool
    bpp: list[float]
    values: list[float]
    kind: str = ""  # learned, classical, preproc, envelope
    description: str = ""
    uncompressed: float | None = None  # the baseline model on the uncompressed images
    points: list[dict] = field(default_factory=list)  # per point: quality, scale, lmbda, run

    def to_json(self) -> dict:
        """CompressAI's layout (``results: {bpp, <metric>}``) plus what a reader needs."""
        order = sorted(range(len(self.bpp)), key=lambda i: self.bpp[i])
        return {"name": self.name, "description": self.description, "task": self.task,
                "metric": self.metric, "higher_is_better": self.higher_is_better,
                "kind": self.kind, "uncompressed": self.uncompressed,
                "results": {"bpp": [self.bpp[i] for i in order],
                            self.metric: [self.values[i] for i in order]},
                "points": [self.points[i] for i in order] if self.points else []}


def load_results(path: str | Path, metric: str | None = None) -> Curve:
    """A results JSON (``compare``'s, ``icm eval``'s, or CompressAI's) -> ``Curve``.

    ``metric`` picks the metric when the file holds several (CompressAI's psnr, ms-ssim...);
    the task defaults to the file's ``task`` key, the direction to the task's.
    """
    from icm_core.tasks.registry import get_task

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{str(path)!r}: cannot read results ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not JSON ({e}); give a results file written by "
                          "icm compare or icm eval") from e
    res = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(res, dict) or not isinstance(res.get("bpp"), list):
        raise ConfigError(f"{str(path)!r} has no 'results': {{'bpp': [...], <metric>: [...]}} "
                          "(CompressAI's layout)")
    metrics = [k for k in res if k not in ("bpp", "bpp_estimated")]
    metric = metric or doc.get("metric") or (metrics[0] if len(metrics) == 1 else None)
    if metric not in res:
        raise ConfigError(f"{str(path)!r}: metric {metric!r} is not in its results; choose one "
                          f"of {metrics}")
    bpp, values = res["bpp"], res[metric]
    if len(bpp) != len(values):
        raise ConfigError(f"{str(path)!r}: {len(bpp)} rates but {len(values)} {metric} values")
    task = doc.get("task")
    hib = doc.get("higher_is_better")
    if hib is None:
        hib = get_task(task).higher_is_better if task else True
    return Curve(str(doc.get("name", path.stem)), task, metric, bool(hib),
                 [None if b is None else float(b) for b in bpp], [float(v) for v in values],
                 doc.get("kind", ""), doc.get("description", ""), doc.get("uncompressed"),
                 doc.get("points") or [])


# --------------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------------

def find_runs(paths: Sequence[str | Path], what: str = "RUN") -> list[Path]:
    """Run folders: each path is a run (it has a checkpoint) or a folder of runs (``icm demo``'s
    output: its ``lmbda-*`` children). Missing folders and folders without any checkpoint are
    refused with what to do."""
    from icm_core.training.checkpoint import has_checkpoint

    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ConfigError(f"{what} {str(p)!r} does not exist or is not a folder; give a run "
                              "folder written by 'icm train' (or a folder of them)")
        if has_checkpoint(p):
            runs.append(p)
            continue
        children = sorted(c for c in p.iterdir() if c.is_dir() and has_checkpoint(c))
        if not children:
            raise ConfigError(f"{what} {str(p)!r} has no checkpoint (no LATEST or ckpt-* folder) "
                              "and holds no run folder that has one; train it first "
                              f"(icm train ... out_dir={p}) or give another folder")
        runs.extend(children)
    return runs


def _load_run(run: Path, compression: bool, what: str):
    from icm_core.training.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(run)
    if model.compression != compression:
        hint = ("it has no compression stage (model.compression=false): give it as --baseline"
                if compression else "it compresses (model.compression=true): give it as a RUN, "
                "and as --baseline a run trained with model.compression=false")
        raise ConfigError(f"{what} {str(run)!r}: {hint}")
    if model.dataset != "synthetic":
        raise DatasetError(f"{what} {str(run)!r} was trained on {model.dataset!r}; the held-out "
                           "comparison runs on synthetic scenes only in this version")
    return model.eval(), ckpt


class HeldOut(torch.utils.data.Dataset):
    """The first ``n`` scenes of the ``test`` split at ``size``, rendered once and kept."""

    def __init__(self, n: int, size: int | tuple[int, int], tasks):
        from icm_core.data.synthetic import SyntheticScenes
        from icm_core.viz.images import image_to_uint8

        if int(n) < 1:
            raise ConfigError(f"images={n!r}: compare on at least 1 image")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        ds = SyntheticScenes("test", size=hw, tasks=list(tasks), length=int(n))
        self.size, self.samples = hw, [ds[i] for i in range(int(n))]
        self.images = [Image.fromarray(image_to_uint8(s["image"])) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]

    @property
    def pixels(self) -> int:
        return sum(im.size[0] * im.size[1] for im in self.images)


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------

def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


@torch.no_grad()
def score(model, task: str, images: Sequence, targets: Sequence[torch.Tensor],
          metric_options: dict | None = None) -> tuple[float, list[float]]:
    """Dataset-level metric of an uncompressed model on ``images`` (PIL or (3, H, W) tensors),
    as ``evaluate`` computes it, and the measured seconds of each forward."""
    from icm_core.tasks.metrics import make_metric
    from icm_core.tasks.registry import get_task

    metric = make_metric(task, dataset=model.dataset, **(metric_options or {}))
    spec, times = get_task(task), []
    for x, t in zip(images, targets, strict=True):
        x = _to_tensor(x) if isinstance(x, Image.Image) else x
        start = time.perf_counter()
        pred = model.predict(x.unsqueeze(0), task=task).prediction
        times.append(time.perf_counter() - start)
        metric.update(spec.activate(pred.float()).cpu(), t.unsqueeze(0))
    return float(metric.compute()), times


class _Timed:
    """A codec that notes when its encode call ends and its decode call starts, so that the
    time of ``code_at_scale`` splits exactly into the sender's part (downscale, encode) and
    the receiver's (decode, upscale)."""

    def __init__(self, codec):
        self.codec, self.name, self.qualities = codec, codec.name, codec.qualities
        self.encoded_at = self.decoding_at = 0.0

    def encode(self, image, quality):
        data = self.codec.encode(image, quality)
        self.encoded_at = time.perf_counter()
        return data

    def decode(self, data):
        self.decoding_at = time.perf_counter()
        return self.codec.decode(data)


def code_images(codec, images: Sequence[Image.Image], quality: int, scale: float
                ) -> tuple[float, list[Image.Image], list[float], list[float]]:
    """Code every image at (quality, scale): (bpp = all file bits / all original pixels,
    decoded images at the original size, measured seconds per image of the sender (downscale +
    encode) and of the receiver (decode + upscale))."""
    from icm_core.baselines.classical import code_at_scale

    bits = pixels = 0
    decoded, enc, dec = [], [], []
    for im in images:
        timed = _Timed(codec)
        start = time.perf_counter()
        point = code_at_scale(timed, im, quality, scale)
        end = time.perf_counter()
        enc.append(timed.encoded_at - start)
        dec.append(end - timed.decoding_at)
        decoded.append(point.decoded)
        bits += 8 * len(point.data)
        pixels += im.size[0] * im.size[1]
    return bits / pixels, decoded, enc, dec


def _count(fn) -> tuple[int, object]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return int(counter.get_total_flops()), out


@torch.no_grad()
def model_flops(model, task: str, size: int | tuple[int, int]) -> dict[str, int]:
    """FLOPs of one image of ``size`` through ``model`` for ``task``, sender and receiver side.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions,
    2 FLOPs per multiply-add; normalizations, activations and the rANS coder are not counted).
    With compression: encoder = backbone, adapter, preliminary decoder, analysis and the
    entropy model's networks that coding needs; decoder = the entropy model's networks that
    decoding needs and the transformer decoder. Without: encoder = everything up to the
    latent, decoder = the transformer decoder (a "Codec + Baseline" receiver runs both).
    """
    from icm_core.codec.coder import cpu_coder

    H, W = (size, size) if isinstance(size, int) else size
    task = model.task_arg(task)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)).to(model.device)
    with model.reading(task):
        enc, (_, y, padded) = _count(lambda: model.analysis(image, task))
        if not model.compression:
            dec, _ = _count(lambda: model.heads[task].synthesis(y, padded))
            return {"encoder": enc, "decoder": dec}
        coder = cpu_coder(model, task)
        y = y.float().cpu()
        ent, coded = _count(lambda: coder.compress(y))
        s, p = model.stride, model.backbone.stride
        Hp, Wp = padded

        def receive():
            y_hat = coder.decompress(list(coded["strings"]), (Hp // s, Wp // s), (Hp // p, Wp // p))
            return model.heads[task].synthesis(y_hat.to(model.device), padded)
        dec, _ = _count(receive)
    return {"encoder": enc + ent, "decoder": dec}


def _median_ms(seconds: Sequence[float]) -> float | None:
    return 1000.0 * statistics.median(seconds) if seconds else None


@dataclass
class Complexity:
    """What one method costs per image (times measured: medians over the held-out images)."""

    task: str
    method: str
    parameters: int | None  # what runs for the task (backbone, its adapter, its head, pre-proc.)
    trainable_parameters: int | None
    trainable_backbone_percent: float | None  # as the paper counts it (icm info)
    encoder_flops: int | None  # None: not applicable (see note)
    decoder_flops: int | None
    encode_ms: float | None
    decode_ms: float | None
    timed_images: int
    note: str = ""


def model_parameters(model, task: str) -> dict:
    """Parameters ``task``'s forward uses, those it trains, and the trainable backbone share."""
    report = model.trainable_parameters(task)
    others = {id(p) for t in model.tasks if t != task for p in model.task_parameters(t)}
    own = {id(p) for p in model.task_parameters(task)}
    used = [p for n, p in model.backbone.named_parameters()
            if id(p) not in others and ("lora_" not in n or id(p) in own)]
    used += list(model.heads[task].parameters())
    return {"parameters": sum(p.numel() for p in used),
            "trainable_parameters": sum(p.numel() for p in model.task_parameters(task)),
            "trainable_backbone_percent": round(report.trainable_percent, 4)}


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """Everything ``compare`` measured; the same as what it wrote to ``out``."""

    curves: dict[str, list[Curve]]  # task -> methods
    bd_rates: list[dict]
    complexity: list[Complexity]
    skipped: list[str]
    out: Path

    def curve(self, task: str, name: str) -> Curve:
        for c in self.curves[task]:
            if c.name == name:
                return c
        raise KeyError(f"no method {name!r} for task {task!r}")


def _parse_codecs(codecs) -> list:
    from icm_core.baselines.classical import (
        CODECS,
        CodecUnavailableError,
        available_codecs,
        get_codec,
    )

    names = [c.strip().lower() for c in codecs if c.strip()]
    unknown = [c for c in names if c not in CODECS]
    if unknown:
        raise ConfigError(f"codec {unknown[0]!r} is unknown; available here: {available_codecs()} "
                          f"(known: {sorted(CODECS)})")
    out = []
    for n in names:
        try:
            out.append(get_codec(n))
        except CodecUnavailableError as e:
            raise ConfigError(f"--codecs {n}: {e}; or leave {n} out (available here: "
                              f"{available_codecs()})") from e
    return out


def _qualities(codec, ladder: str) -> tuple[int, ...]:
    if ladder not in ("small", "full"):
        raise ConfigError(f"ladder={ladder!r}; choose small or full")
    return tuple(codec.qualities) if ladder == "full" else SMALL_LADDERS.get(codec.name,
                                                                             tuple(codec.qualities))


def _pipeline(codec: str, scale: float, prefix: str = "") -> str:
    return f"{prefix}{codec}" if scale == 1.0 else f"{prefix}{codec}@{scale:g}"


def _preprocessors(mode: str, baselines: dict, out: Path, cfg, log) -> dict:
    """{task: pre-processor} trained against each frozen baseline, or loaded from a path."""
    if mode == "none":
        return {}
    from icm_core.baselines import preprocessor as pre

    if mode != "train":
        path = Path(mode)
        if path.is_dir():
            found = {t: path / f"preproc-{t}.safetensors" for t in baselines}
            missing = [t for t, f in found.items() if not f.is_file()]
            if missing:
                raise ConfigError(f"--preprocessor {path}: no preproc-<task>.safetensors for "
                                  f"{missing}; give a file, or a folder icm compare wrote")
            return {t: pre.load_preprocessor(f) for t, f in found.items()}
        if not path.is_file():
            raise ConfigError(f"--preprocessor {str(path)!r}: no such file; give none, train or "
                              "a file written by save_preprocessor")
        pp = pre.load_preprocessor(path)
        return {t: pp for t in baselines}
    from icm_core.data.registry import make_dataset

    result = {}
    for task, (model, _) in baselines.items():
        log(f"{task}: training the pre-processor against the frozen baseline")
        train_set = make_dataset(model.cfg.data, "train", [task])
        pcfg = cfg or pre.PreprocessorConfig()

        def report(v: dict, task=task, steps=pcfg.steps) -> None:
            if v["step"] % 50 == 0 or v["step"] == steps:
                log(f"  {task} pre-processor step {v['step']}/{steps}: loss {v['loss']:.4f}, "
                    f"task loss {v['task_loss']:.4f}, proxy bpp {v['bpp']:.4f} (q{v['quality']})")
        pp = pre.train_preprocessor(model, task, train_set, pcfg, log=report)
        pre.save_preprocessor(pp, out / f"preproc-{task}.safetensors")
        result[task] = pp
    return result


def envelope(curves: Sequence[Curve], description: str = "", kind: str = "classical",
             name: str = ENVELOPE) -> Curve | None:
    """``best-classical``: the Pareto front of every classical point of one task (any codec,
    any scale), i.e. the best classical pipeline at each rate; None without classical curves.
    ``kind="preproc", name=PREPROC_ENVELOPE``: the same over the pre-processor pipelines."""
    from icm_core.evaluation.bdrate import pareto_front

    members = [c for c in curves if c.kind == kind]
    if not members:
        return None
    c0 = members[0]
    rates, values = pareto_front([b for c in members for b in c.bpp],
                                 [v for c in members for v in c.values], c0.higher_is_better)
    return Curve(name, c0.task, c0.metric, c0.higher_is_better, rates, values, "envelope",
                 description, c0.uncompressed)


def bd_rows_of(curves: Sequence[Curve]) -> list[dict]:
    """BD-rate of every method of one task against every anchor (each classical and
    pre-processor pipeline and the envelopes): rows of ``bd_rate.csv``; a method is not
    compared with itself."""
    from icm_core.evaluation.bdrate import bd_rate

    anchors = [c for c in curves if c.kind in ("classical", "preproc", "envelope")]
    rows = []
    for m in curves:
        for a in anchors:
            if a is m:
                continue
            r = bd_rate((a.bpp, a.values), (m.bpp, m.values), m.higher_is_better)
            lo, hi = r.metric_range or (None, None)
            rows.append({"task": m.task, "method": m.name, "anchor": a.name,
                         "bd_rate_percent": r.value, "metric_lo": lo, "metric_hi": hi,
                         "reason": r.reason or ""})
    return rows


def _learned_curves(learned, tasks, ds: HeldOut, refs: dict, where: str, flops: bool, log,
                    options: dict):
    """(task, [Curve], [Complexity]) of the learned codec: one curve per configuration name,
    one point per run (a variable-rate run: one per rate of its default sweep), scored through
    real streams."""
    from icm_core.evaluation.evaluate import evaluate_rates
    from icm_core.tasks.registry import get_task

    found = []
    groups: dict[str, list] = {}
    for r, m, _ in learned:
        groups.setdefault(m.cfg.name, []).append((r, m))
    for gname, members in groups.items():
        name = "learned" if len(groups) == 1 else f"learned-{gname}"
        for task in tasks:
            rows = [(r, m) for r, m in members if task in m.tasks]
            if not rows:
                continue
            pts = []
            for r, m in rows:
                pts.extend((res, r, m) for res in evaluate_rates(
                    m, ds, task, per_image=False, metric_options=options.get(task)))
            spec = get_task(task)
            m0 = rows[0][1]
            desc = (f"{gname}: {m0.cfg.backbone.name}, adapter {m0.cfg.adapter.mode} "
                    f"r{m0.cfg.adapter.rank}, {len(rows)} run(s), real bitstreams, {where}")
            curve = Curve(
                name, task, spec.metric, spec.higher_is_better, [p[0].bpp for p in pts],
                [p[0].value for p in pts], "learned", desc, refs.get(task),
                [{"run": str(r), "lmbda": m.cfg.lmbda} if res.rate is None else
                 {"run": str(r), "rate": res.rate,
                  "lmbda": vr.lambda_at(res.rate, m.rate_lambdas)} for res, r, m in pts])
            log(f"{task}: {name} at {len(pts)} lambda(s) evaluated through real streams")
            mid = rows[len(rows) // 2]
            found.append((task, [curve], [_learned_complexity(task, name, mid[0], mid[1], ds,
                                                               flops)]))
    return found


def _pipeline_curves(codec_objs, scales, ladder: str, base: dict, pps: dict, ds: HeldOut,
                     refs: dict, where: str, flops: bool, log, options: dict):
    """(task, [Curve], [Complexity]) of every classical and pre-processor pipeline (codec at
    one scale), each point scored by the task's uncompressed baseline."""
    from icm_core.tasks.registry import get_task

    found = []
    base_flops = {t: model_flops(m, t, ds.size) if flops else None for t, (m, _) in base.items()}
    prepped = {t: _apply_all(pp, ds.images) for t, pp in pps.items()}
    pp_flops = {t: _count(lambda pp=pp: _apply_all(pp, ds.images[:1]))[0] if flops else None
                for t, pp in pps.items()}
    for codec in codec_objs:
        qs = _qualities(codec, ladder)
        for s in scales:
            sources = [("", None, ds.images, [0.0] * len(ds))]
            sources += [("preproc+", t, *prepped[t]) for t in pps]
            for prefix, only, imgs, pre_s in sources:
                tasks_here = [t for t in base if only in (None, t)]
                pts: dict[str, list] = {t: [] for t in tasks_here}
                enc_all: list[float] = []
                dec_all: dict[str, list] = {t: [] for t in tasks_here}
                for q in qs:
                    rate, decoded, enc, dec = code_images(codec, imgs, q, s)
                    enc_all += [a + b for a, b in zip(pre_s, enc)]
                    for task in tasks_here:
                        value, net = score(base[task][0], task, decoded,
                                           [x[task] for x in ds.samples], options.get(task))
                        pts[task].append((q, rate, value))
                        dec_all[task] += [a + b for a, b in zip(dec, net)]
                name = _pipeline(codec.name, s, prefix)
                for task in tasks_here:
                    spec = get_task(task)
                    desc = (f"{codec.name} ({codec.chroma}) at scale {s:g}"
                            f"{' after the pre-processor' if prefix else ''}, decoded images fed "
                            f"to the uncompressed baseline {base[task][1].parent}, {where}")
                    curve = Curve(
                        name, task, spec.metric, spec.higher_is_better,
                        [p[1] for p in pts[task]], [p[2] for p in pts[task]],
                        "preproc" if prefix else "classical", desc, refs[task],
                        [{"codec": codec.name, "quality": p[0], "scale": s} for p in pts[task]])
                    found.append((task, [curve], [_pipeline_complexity(
                        task, name, base[task][0], pps.get(task) if prefix else None, enc_all,
                        dec_all[task], base_flops[task], pp_flops.get(task))]))
            log(f"{codec.name} at scale {s:g}: {len(qs)} qualities x {len(ds)} images coded"
                f"{' (and pre-processed)' if pps else ''}")
    return found


def compare(runs: Sequence[str | Path], baselines: Sequence[str | Path] = (), *,
            codecs: Sequence[str] | None = None, scales: Sequence[float] = DEFAULT_SCALES,
            ladder: str = "small", preprocessor: str = "none", preprocessor_config=None,
            images: int = 16, size: int = 256, out: str | Path = "compare_out",
            flops: bool = True, log: Callable[[str], None] = print,
            metric_options: dict[str, dict] | None = None) -> Comparison:
    """Score every method on the same held-out scenes and write the files listed above.

    Args:
        runs: learned-codec run folders (one per lambda), or folders of them.
        baselines: uncompressed run folders, one per task; a task without one gets no
            classical or pre-processor pipeline (said in ``log`` and ``Comparison.skipped``).
        codecs: codec names (default: those of ``DEFAULT_CODECS`` available here).
        ladder: ``small`` (4 qualities per codec) or ``full`` (every quality of the codec).
        preprocessor: ``none``, ``train`` (one per task against its frozen baseline, saved in
            ``out``) or the path of a saved pre-processor (used for every task), or a folder
            of ``preproc-<task>.safetensors`` files (what ``train`` writes).
        preprocessor_config: ``PreprocessorConfig`` for ``train`` (default: its defaults).
        images, size: the first ``images`` test scenes, ``size`` x ``size`` pixels.
        flops: count FLOPs for the complexity table (a few forward passes).
        log: where progress and skipped pipelines are reported.
        metric_options: per task, options of its metric for every method alike (e.g.
            ``{"boundary": {"n_thresholds": 19}}``; ``make_metric``).
    """
    from icm_core.baselines.classical import scaled_size
    from icm_core.tasks.registry import get_task

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    if codecs is None:
        from icm_core.baselines.classical import available_codecs

        have = available_codecs()
        for c in DEFAULT_CODECS:
            if c not in have:
                log(f"codec {c} is not available here: skipped")
        codecs = [c for c in DEFAULT_CODECS if c in have]
    codec_objs = _parse_codecs(codecs)
    scales = [float(s) for s in scales]
    for s in scales:
        scaled_size((1, 1), s)  # ConfigError for a bad scale, before any work
    for c in codec_objs:
        _qualities(c, ladder)

    learned = [(r, *_load_run(r, True, "RUN")) for r in find_runs(runs, "RUN")]
    base: dict[str, tuple] = {}
    for r in find_runs(baselines, "--baseline") if baselines else []:
        model, ckpt = _load_run(r, False, "--baseline")
        for t in model.tasks:
            if t in base:
                raise ConfigError(f"--baseline {str(base[t][1].parent)!r} and {str(r)!r} are "
                                  f"both for task {t!r}; give one baseline per task")
            base[t] = (model, ckpt)
    tasks = list(dict.fromkeys(t for _, m, _ in learned for t in m.tasks))
    skipped = [f"{t}: no --baseline run has this task, so its classical and pre-processor "
               "pipelines are skipped (train one with model.compression=false)"
               for t in tasks if t not in base]
    for s in skipped:
        log(s)
    if not any(t in base for t in tasks):
        raise ConfigError(f"nothing to compare the learned codec with: no --baseline run for its "
                          f"tasks {tasks}; train one per task with model.compression=false "
                          "(e.g. icm train experiment=quick task=... model.compression=false)")
    base = {t: v for t, v in base.items() if t in tasks}
    ds = HeldOut(images, size, tasks)
    where = f"{len(ds)} held-out synthetic test scenes at {ds.size[1]}x{ds.size[0]}"
    pps = _preprocessors(preprocessor, base, out, preprocessor_config, log)

    curves: dict[str, list[Curve]] = {t: [] for t in tasks}
    cplx: list[Complexity] = []
    refs: dict[str, float] = {}
    options = {get_task(t).name: dict(o) for t, o in (metric_options or {}).items()}
    for task, (model, _) in base.items():
        refs[task], _ = score(model, task, [s["image"] for s in ds.samples],
                              [s[task] for s in ds.samples], options.get(task))
        log(f"{task}: uncompressed baseline {get_task(task).metric} = {refs[task]:.4f}")

    for task, curves_, cplx_ in (*_learned_curves(learned, tasks, ds, refs, where, flops, log,
                                                  options),
                                 *_pipeline_curves(codec_objs, scales, ladder, base, pps, ds,
                                                   refs, where, flops, log, options)):
        curves[task] += curves_
        cplx += cplx_

    bd_rows: list[dict] = []
    for task in tasks:
        env = envelope(curves[task], f"Pareto envelope of every classical pipeline (any codec, "
                       f"any scale) + baseline, {where}")
        if env is not None:
            curves[task].append(env)
            pp_env = envelope(curves[task], f"Pareto envelope of every pre-processor + codec "
                              f"pipeline (any codec, any scale) + baseline, {where}", "preproc",
                              PREPROC_ENVELOPE)
            if pp_env is not None:
                curves[task].append(pp_env)
            bd_rows += bd_rows_of(curves[task])
    result = Comparison(curves, bd_rows, cplx, skipped, out)
    _write(result, where, log)
    for task in tasks:
        for row in bd_rows:
            if row["task"] == task and (
                    (row["anchor"] == ENVELOPE and row["method"].startswith(
                        ("learned", "preproc+", PREPROC_ENVELOPE)))
                    or (row["anchor"] == PREPROC_ENVELOPE and row["method"].startswith("learned"))):
                v = row["bd_rate_percent"]
                log(f"{task}: BD-rate of {row['method']} vs {row['anchor']}: "
                    f"{'n/a (' + row['reason'] + ')' if v is None else f'{v:+.1f} %'}")
    return result




def _apply_all(pp, images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[float]]:
    """Every image through the pre-processor, with the measured seconds of each."""
    from icm_core.baselines.preprocessor import apply_preprocessor

    out, secs = [], []
    for im in images:
        start = time.perf_counter()
        out.append(apply_preprocessor(pp, im))
        secs.append(time.perf_counter() - start)
    return out, secs


def _pp_parameters(pp) -> int:
    module = pp if isinstance(pp, torch.nn.Module) else getattr(pp, "net", None)
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


@torch.no_grad()
def _learned_complexity(task: str, name: str, run: Path, model, ds: HeldOut,
                        flops: bool) -> Complexity:
    """Parameters, FLOPs and the measured encode / decode time per held-out image."""
    enc, dec = [], []
    for s in ds.samples:
        x = s["image"].unsqueeze(0)
        start = time.perf_counter()
        data = coder.encode(model, x, task)
        mid = time.perf_counter()
        coder.decode(model, data)
        dec.append(time.perf_counter() - mid)
        enc.append(mid - start)
    f = model_flops(model, task, ds.size) if flops else {"encoder": None, "decoder": None}
    return Complexity(task, name, **model_parameters(model, task), encoder_flops=f["encoder"],
                      decoder_flops=f["decoder"], encode_ms=_median_ms(enc),
                      decode_ms=_median_ms(dec), timed_images=len(enc),
                      note=f"timed and counted on {run} (lambda {model.cfg.lmbda:g}); rANS "
                      "coding is in the times, not in the FLOPs")


def _pipeline_complexity(task: str, name: str, baseline, pp, enc: list[float], dec: list[float],
                         flops: dict | None, pp_flops: int | None) -> Complexity:
    """A classical (or pre-processor) pipeline + the baseline model at the receiver."""
    p = model_parameters(baseline, task)
    extra = _pp_parameters(pp) if pp is not None else 0
    note = (f"{CODEC_FLOPS_NOTE}; decoder FLOPs = the baseline task network on the decoded "
            "image; times: median per image over every quality"
            + ("; encoder = the pre-processor (its FLOPs) and the codec" if pp is not None
               else ""))
    return Complexity(task, name, p["parameters"] + extra,
                      p["trainable_parameters"] + extra, p["trainable_backbone_percent"],
                      encoder_flops=pp_flops if pp is not None else None,
                      decoder_flops=None if flops is None else flops["encoder"] + flops["decoder"],
                      encode_ms=_median_ms(enc), decode_ms=_median_ms(dec), timed_images=len(enc),
                      note=note)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


BD_COLUMNS = ("task", "method", "anchor", "bd_rate_percent", "metric_lo", "metric_hi", "reason")


ENVELOPE_COLOURS = {ENVELOPE: "#555555", PREPROC_ENVELOPE: "#d62728"}
MAX_SHOWN = 8  # more curves than this: single pipelines start hidden (click the legend)


def figure(curves: list[Curve], title: str = ""):
    """The plotly RA figure of one task: every method, the uncompressed baseline dotted.

    With more than ``MAX_SHOWN`` curves (every codec at every scale, with and without the
    pre-processor: 26) the single pipelines start hidden, listed in the legend, and the
    learned codec and the envelopes are what one sees."""
    from icm_core.viz.images import ra_figure

    c0 = curves[0]
    fig = ra_figure({c.name: (c.bpp, c.values) for c in curves}, c0.metric, title)
    crowded = len(curves) > MAX_SHOWN
    for trace in fig.data:
        if trace.name.startswith("learned"):
            trace.update(line={"width": 4})
        elif trace.name in ENVELOPE_COLOURS:
            trace.update(line={"width": 6, "color": ENVELOPE_COLOURS[trace.name]}, opacity=0.45,
                         marker={"color": ENVELOPE_COLOURS[trace.name]})
        else:  # one classical or pre-processor pipeline
            if "@" in trace.name or trace.name.startswith("preproc+"):
                trace.update(line={"dash": "dash" if "@" in trace.name else "dashdot"})
            if crowded:
                trace.update(visible="legendonly")
    if c0.uncompressed is not None:
        fig.add_hline(y=c0.uncompressed, line_dash="dot",
                      annotation_text=f"uncompressed baseline ({c0.uncompressed:.3g})")
    fig.update_xaxes(type="log")
    return fig


def _write(result: Comparison, where: str, log) -> None:
    import importlib.util

    out = result.out
    for task, curves in result.curves.items():
        for c in curves:
            write_text(out / f"{c.name}-{task}.json", json.dumps(c.to_json(), indent=2))
        if not curves:
            continue
        fig = figure(curves, f"{task}: {where}")
        write_text(out / f"ra-{task}.html", fig.to_html(include_plotlyjs=True))
        if importlib.util.find_spec("kaleido") is not None:
            with atomic_path(out / f"ra-{task}.png") as tmp:
                fig.write_image(str(tmp), format="png")
        else:
            log(f"ra-{task}.png not written: kaleido is not installed (pip install kaleido)")
    write_text(out / "bd_rate.csv", _csv([{k: r[k] for k in BD_COLUMNS} for r in result.bd_rates])
               if result.bd_rates else ",".join(BD_COLUMNS) + "\n")
    rows = [asdict(c) for c in result.complexity]
    write_text(out / "complexity.csv", _csv(rows))
    write_text(out / "complexity.json", json.dumps(rows, indent=2))


def bd_table(result: Comparison, anchor: str = ENVELOPE) -> list[dict]:
    """The BD-rate rows against one anchor (default: the best classical pipeline)."""
    return [r for r in result.bd_rates if r["anchor"] == anchor]


__all__ = ["Curve", "Comparison", "Complexity", "compare", "load_results", "find_runs",
           "model_flops", "model_parameters", "code_images", "score", "figure", "bd_table",
           "envelope", "bd_rows_of",
           "HeldOut", "SMALL_LADDERS", "ENVELOPE", "PREPROC_ENVELOPE"]
