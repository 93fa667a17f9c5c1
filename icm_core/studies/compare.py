"""Side by side on the same held-out images: the learned codec, "Codec + Baseline" and
"Pre-processor + Codec + Baseline" (the paper's section 3.2 comparisons), with BD-rates and a
complexity table.

Every method is scored on the same images: ``SyntheticScenes(split="test")``, whose scene seeds
no training uses. The learned codec's points come from real streams (``evaluate``). A classical
pipeline is one codec at one scale of the resolution ladder (downscale, code, upscale back:
``icm_core.baselines.classical.code_at_scale``, timed by ``icm_core.evaluation.score``); each
quality is a point, its rate the real file bits over the original pixels, its accuracy what an
uncompressed baseline model (``model.compression=false``, same backbone and budget) makes of
the decoded images (``score``). A downscaled classical codec is a strong
baseline for machine tasks; leaving it out would flatter the learned codec.

``compare(...)`` (and ``icm compare``) writes, in its output folder:

- ``<method>-<task>.json`` per method (CompressAI layout plus ``task``, ``metric``,
  ``higher_is_better``, ``uncompressed``, ``points``: ``icm_core.evaluation.results.Curve``;
  ``icm_core.evaluation.results.load_results`` reads it back);
- ``bd_rate.csv``: every method against every anchor: each classical pipeline,
  ``best-classical`` (the Pareto envelope of every classical point), and with a
  pre-processor each ``preproc+<codec>`` pipeline and ``best-preproc`` (their envelope);
- ``ra-<task>.html`` (``icm_core.viz.figures.comparison_figure``; ``.png`` too when kaleido
  is installed);
- ``complexity.csv`` / ``.json``: parameters, trainable %, FLOPs at the held-out resolution
  (``icm_core.evaluation.accounting``: ``parameter_counts``, ``side_flops``), measured times.

The held-out scenes are ``icm_core.data.held_out.HeldOut``; the BD-rate table is
``icm_core.evaluation.results.bd_rows`` with every classical, pre-processor and envelope curve
as an anchor (``ANCHOR_KINDS``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from icm_core.baselines import classical
from icm_core.baselines import preprocessor as pre
from icm_core.baselines.classical import (
    CODECS,
    CodecUnavailableError,
    available_codecs,
    get_codec,
    scaled_size,
)
from icm_core.baselines.jpeg_proxy import FALLBACK_PROXY, PROXIES, proxy_for
from icm_core.codec import coder
from icm_core.data.held_out import HeldOut
from icm_core.data.registry import make_dataset
from icm_core.errors import ConfigError
from icm_core.evaluation.accounting import count_flops, parameter_counts, side_flops
from icm_core.evaluation.evaluate import evaluate_rates
from icm_core.evaluation.results import (
    BD_COLUMNS,
    ENVELOPE,
    PREPROC_ENVELOPE,
    Curve,
    bd_rows,
    envelope,
)
from icm_core.evaluation.score import code_images, reference_targets, score
from icm_core.files import atomic_path, write_text
from icm_core.models import rate as vr
from icm_core.tasks.registry import get_task
from icm_core.training.checkpoint import has_checkpoint, load_checkpoint
from icm_core.viz.figures import comparison_figure

SMALL_LADDERS = classical.SMALL_LADDERS
"""Each registered codec's small ladder (``ladder="small"``): ``classical.register_codec``."""
DEFAULT_CODECS = classical.DEFAULT_CODECS
DEFAULT_SCALES = (1.0, 0.5, 0.25)
ANCHOR_KINDS = ("classical", "preproc", "envelope")
"""The curves every method is compared with in ``bd_rate.csv``."""
CODEC_FLOPS_NOTE = "classical codec FLOPs: not applicable (library code, not counted)"


# --------------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------------

def find_runs(paths: Sequence[str | Path], what: str = "RUN") -> list[Path]:
    """Run folders: each path is a run (it has a checkpoint) or a folder of runs (``icm demo``'s
    output: its ``lmbda-*`` children). Missing folders and folders without any checkpoint are
    refused with what to do."""
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
    model, ckpt = load_checkpoint(run)
    if model.compression != compression:
        hint = ("it has no compression stage (model.compression=false): give it as --baseline"
                if compression else "it compresses (model.compression=true): give it as a RUN, "
                "and as --baseline a run trained with model.compression=false")
        raise ConfigError(f"{what} {str(run)!r}: {hint}")
    return model.eval(), ckpt


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

    def curve(self, task: str, name: str, rate: str = "file") -> Curve:
        """Method ``name``'s curve on ``task`` with its rates counted as ``rate``."""
        for c in self.curves[task]:
            if c.name == name and (c.rate == rate or c.kind != "envelope"):
                return c.at_rate(rate)
        raise KeyError(f"no method {name!r} for task {task!r} at the {rate} rate")


def _parse_codecs(codecs) -> list:
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


def _pp_file(folder: Path, task: str, proxy: str) -> Path:
    return folder / f"preproc-{task}-{proxy}.safetensors"


def _folder_preprocessors(folder: Path, baselines: dict, codecs: Sequence[str], log) -> dict:
    """{task: {codec: pre-processor}} from a folder ``train`` wrote: each codec's own
    ``preproc-<task>-<codec>.safetensors`` where it has a proxy and the file is there, else the
    JPEG one (``preproc-<task>-jpeg.safetensors``, or the older ``preproc-<task>.safetensors``)."""
    loaded: dict[Path, pre.PreProcessor] = {}

    def load(f: Path):
        if f not in loaded:
            loaded[f] = pre.load_preprocessor(f)
        return loaded[f]

    result = {}
    for task in baselines:
        fallback = [_pp_file(folder, task, FALLBACK_PROXY), folder / f"preproc-{task}.safetensors"]
        result[task] = {}
        for codec in codecs:
            own = _pp_file(folder, task, codec)
            if codec in PROXIES and own.is_file():
                result[task][codec] = load(own)
                continue
            f = next((f for f in fallback if f.is_file()), None)
            if f is None:
                raise ConfigError(f"--preprocessor {folder}: no {fallback[0].name} (nor "
                                  f"{fallback[1].name}) for the {codec} pipeline of {task}; give "
                                  "a file, or a folder icm compare --preprocessor train wrote")
            if codec in PROXIES and codec != FALLBACK_PROXY:
                log(f"{task}: --preprocessor {folder} has no {own.name}: {codec} gets the "
                    f"{FALLBACK_PROXY.upper()}-trained pre-processor")
            result[task][codec] = load(f)
    return result


def _preprocessors(mode: str, baselines: dict, codecs: Sequence[str], out: Path, cfg,
                   log) -> dict:
    """{task: {codec: pre-processor}}: for each codec with a differentiable proxy
    (``PROXIES``) one trained through that proxy against the task's frozen baseline, for every
    other codec the ``FALLBACK_PROXY`` (JPEG) one (said in ``log``; each pipeline's results
    record the proxy: ``preprocessor_proxy``). Each (task, proxy) is trained once and saved as
    ``out/preproc-<task>-<proxy>.safetensors``. ``mode`` may instead be a folder of such files
    (``_folder_preprocessors``) or one file, used for every task and codec."""
    if mode == "none":
        return {}
    if mode != "train":
        path = Path(mode)
        if path.is_dir():
            return _folder_preprocessors(path, baselines, codecs, log)
        if not path.is_file():
            raise ConfigError(f"--preprocessor {str(path)!r}: no such file; give none, train or "
                              "a file written by save_preprocessor")
        pp = pre.load_preprocessor(path)
        others = [c for c in codecs if c != pp.cfg.codec]
        if others:
            log(f"--preprocessor {path} was trained through the {pp.cfg.codec} proxy; it is used "
                f"for {', '.join(others)} too")
        return {t: {c: pp for c in codecs} for t in baselines}
    base_cfg = cfg or pre.PreprocessorConfig()
    proxies = list(dict.fromkeys(proxy_for(c) for c in codecs))
    borrowed = [c for c in codecs if proxy_for(c) != c]
    result = {}
    for task, (model, _) in baselines.items():
        train_set = make_dataset(model.cfg.data, "train", [task])
        trained = {}
        for proxy in proxies:
            log(f"{task}: training the pre-processor through the {proxy} proxy against the "
                "frozen baseline")
            pcfg = replace(base_cfg, codec=proxy)

            def report(v: dict, task=task, steps=pcfg.steps, proxy=proxy) -> None:
                if v["step"] % 50 == 0 or v["step"] == steps:
                    log(f"  {task} {proxy} pre-processor step {v['step']}/{steps}: loss "
                        f"{v['loss']:.4f}, task loss {v['task_loss']:.4f}, proxy bpp "
                        f"{v['bpp']:.4f} (q{v['quality']})")
            trained[proxy] = pre.train_preprocessor(model, task, train_set, pcfg, log=report)
            pre.save_preprocessor(trained[proxy], _pp_file(out, task, proxy))
        if borrowed:
            log(f"{task}: no differentiable proxy for {', '.join(borrowed)}: "
                f"{'they get' if len(borrowed) > 1 else 'it gets'} the "
                f"{FALLBACK_PROXY.upper()}-trained pre-processor")
        result[task] = {c: trained[proxy_for(c)] for c in codecs}
    return result


def _learned_curves(learned, tasks, ds: HeldOut, refs: dict, where: str, flops: bool, log,
                    options: dict, targets: dict):
    """(task, [Curve], [Complexity]) of the learned codec: one curve per configuration name,
    one point per run (a variable-rate run: one per rate of its default sweep), scored through
    real streams."""
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
                    m, ds.with_targets(task, targets[task]), task, per_image=False,
                    metric_options=options.get(task)))
            spec = get_task(task)
            m0 = rows[0][1]
            desc = (f"{gname}: {m0.cfg.backbone.name}, adapter {m0.cfg.adapter.mode} "
                    f"r{m0.cfg.adapter.rank}, {len(rows)} run(s), real bitstreams, {where}")
            curve = Curve(
                name, task, spec.metric, spec.higher_is_better, [p[0].bpp for p in pts],
                [p[0].value for p in pts], "learned", desc, refs.get(task),
                [{"run": str(r), "lmbda": m.cfg.lmbda} if res.rate is None else
                 {"run": str(r), "rate": res.rate,
                  "lmbda": vr.lambda_at(res.rate, m.rate_lambdas)} for res, r, m in pts],
                bpp_payload=[p[0].bpp_payload for p in pts])
            log(f"{task}: {name} at {len(pts)} point(s) evaluated through real streams")
            mid = rows[len(rows) // 2]
            found.append((task, [curve], [_learned_complexity(task, name, mid[0], mid[1], ds,
                                                               flops)]))
    return found


def _codec_point(codec: str, quality: int, scale: float, coded) -> dict:
    """What one classical point was: codec, quality, scale, and the exact encoder command and
    version when the codec runs an external encoder (VVC)."""
    point = {"codec": codec, "quality": quality, "scale": scale}
    if coded.encoder_command:
        point["encoder_command"] = list(coded.encoder_command)
    if coded.encoder_version:
        point["encoder_version"] = coded.encoder_version
    return point


def _pp_words(codec: str, pp) -> str:
    """How a pipeline's description names its pre-processor (none: "")."""
    if pp is None:
        return ""
    proxy = pp.cfg.codec
    words = f" after the {proxy.upper()}-trained pre-processor"
    if proxy == codec:
        return words
    why = (f"{codec} has no differentiable proxy" if codec not in PROXIES else
           f"no {codec}-trained one was given")
    return f"{words} (trained through the {proxy} proxy: {why})"


def _pp_log(codec: str, pps: dict) -> str:
    proxies = sorted({by_codec[codec].cfg.codec for by_codec in pps.values()})
    if not proxies:
        return ""
    return (f" (and pre-processed by the {'/'.join(p.upper() for p in proxies)}-trained "
            "pre-processor)")


def _pipeline_curves(codec_objs, scales, ladder: str, base: dict, pps: dict, ds: HeldOut,
                     refs: dict, targets: dict, where: str, flops: bool, log, options: dict):
    """(task, [Curve], [Complexity]) of every classical and pre-processor pipeline (codec at
    one scale), each point scored by the task's uncompressed baseline."""
    found = []
    base_flops = {t: side_flops(m, t, ds.size) if flops else None for t, (m, _) in base.items()}
    # each distinct pre-processor of a task runs once over the images (and is counted once)
    distinct = {t: {id(pp): pp for pp in by_codec.values()} for t, by_codec in pps.items()}
    prepped = {t: {k: _apply_all(pp, ds.images) for k, pp in d.items()}
               for t, d in distinct.items()}
    pp_flops = {t: {k: count_flops(lambda pp=pp: _apply_all(pp, ds.images[:1]))[0] if flops
                    else None for k, pp in d.items()} for t, d in distinct.items()}
    for codec in codec_objs:
        qs = _qualities(codec, ladder)
        for s in scales:
            sources = [("", None, None, ds.images, [0.0] * len(ds))]
            sources += [("preproc+", t, pps[t][codec.name], *prepped[t][id(pps[t][codec.name])])
                        for t in pps]
            for prefix, only, pp, imgs, pre_s in sources:
                tasks_here = [t for t in base if only in (None, t)]
                pts: dict[str, list] = {t: [] for t in tasks_here}
                enc_all: list[float] = []
                dec_all: dict[str, list] = {t: [] for t in tasks_here}
                for q in qs:
                    coded = code_images(codec, imgs, q, s)
                    enc_all += [a + b for a, b in zip(pre_s, coded.encode_seconds)]
                    for task in tasks_here:
                        value, net = score(base[task][0], task, coded.decoded,
                                           targets[task], options.get(task))
                        pts[task].append((q, coded, value))
                        dec_all[task] += [a + b for a, b in zip(coded.decode_seconds, net)]
                name = _pipeline(codec.name, s, prefix)
                extra = {} if pp is None else {"preprocessor_proxy": pp.cfg.codec}
                for task in tasks_here:
                    spec = get_task(task)
                    desc = (f"{codec.name} ({codec.chroma}) at scale {s:g}"
                            f"{_pp_words(codec.name, pp)}, decoded images fed "
                            f"to the uncompressed baseline {base[task][1].parent}, {where}")
                    curve = Curve(
                        name, task, spec.metric, spec.higher_is_better,
                        [p[1].bpp for p in pts[task]], [p[2] for p in pts[task]],
                        "preproc" if prefix else "classical", desc, refs[task],
                        [{**_codec_point(codec.name, p[0], s, p[1]), **extra} for p in pts[task]],
                        bpp_payload=[p[1].bpp_payload for p in pts[task]])
                    found.append((task, [curve], [_pipeline_complexity(
                        task, name, base[task][0], pp, enc_all, dec_all[task], base_flops[task],
                        pp_flops[task][id(pp)] if pp is not None else None)]))
            log(f"{codec.name} at scale {s:g}: {len(qs)} qualities x {len(ds)} images coded"
                f"{_pp_log(codec.name, pps)}")
    return found


def compare(runs: Sequence[str | Path], baselines: Sequence[str | Path] = (), *,
            codecs: Sequence[str] | None = None, scales: Sequence[float] = DEFAULT_SCALES,
            ladder: str = "small", preprocessor: str = "none", preprocessor_config=None,
            images: int = 16, size: int = 256, out: str | Path = "compare_out",
            flops: bool = True, log: Callable[[str], None] = print,
            metric_options: dict[str, dict] | None = None, split: str = "test",
            seed: int = 0, data=None) -> Comparison:
    """Score every method on the same held-out scenes and write the files listed above.

    Args:
        runs: learned-codec run folders (one per lambda), or folders of them.
        baselines: uncompressed run folders, one per task; a task without one gets no
            classical or pre-processor pipeline (said in ``log`` and ``Comparison.skipped``).
        codecs: codec names (default: those of ``DEFAULT_CODECS`` available here).
        ladder: ``small`` (4 qualities per codec) or ``full`` (every quality of the codec).
        preprocessor: ``none``, ``train`` (per task, against its frozen baseline, one per codec
            with a differentiable proxy, through that proxy; every other codec gets the
            JPEG-trained one, and its results say so; saved in ``out`` as
            ``preproc-<task>-<proxy>.safetensors``) or the path of a saved pre-processor (used
            for every task and codec), or a folder of the files ``train`` writes.
        preprocessor_config: ``PreprocessorConfig`` for ``train`` (default: its defaults; its
            ``codec`` is set to each proxy trained through).
        images, size: the first ``images`` held-out images of ``split``, ``size`` x ``size``
            pixels (synthetic scenes are rendered at that size; photos are fitted and padded).
        split: ``test`` (report on it: nothing chose anything on it) or ``val`` (make choices
            on it: lambdas, thresholds, the pre-processor's lambda).
        seed: the held-out scenes' seed: another seed, other scenes, the same for every method.
        data: a ``DataConfig`` of real images (``data=nyud``, ``pascal``, ``hf`` or ``folder``);
            default: the synthetic scenes. Without labels (a folder of photos) every method is
            scored by its fidelity to the uncompressed baseline: the baseline's predictions on
            the original images are the reference.
        flops: count FLOPs for the complexity table (a few forward passes).
        log: where progress and skipped pipelines are reported.
        metric_options: per task, options of its metric for every method alike (e.g.
            ``{"boundary": {"n_thresholds": 19}}``; ``make_metric``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    if codecs is None:
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
    ds = HeldOut(images, size, tasks, split=split, seed=seed, data=data)
    where = ds.describe()
    log(f"held-out images: {where}")
    pps = _preprocessors(preprocessor, base, [c.name for c in codec_objs], out,
                         preprocessor_config, log)

    curves: dict[str, list[Curve]] = {t: [] for t in tasks}
    cplx: list[Complexity] = []
    refs: dict[str, float] = {}
    options = {get_task(t).name: dict(o) for t, o in (metric_options or {}).items()}
    targets = {t: reference_targets(ds, t, base[t][0] if t in base else None) for t in tasks}
    if not ds.labelled:
        log("no labels: every method is scored by its fidelity to the uncompressed baseline "
            "(its predictions on the original images are the reference)")
    for task, (model, _) in base.items():
        refs[task], _ = score(model, task, [s["image"] for s in ds.samples], targets[task],
                              options.get(task))
        log(f"{task}: uncompressed baseline {get_task(task).metric} = {refs[task]:.4f}")

    for task, curves_, cplx_ in (*_learned_curves(learned, tasks, ds, refs, where, flops, log,
                                                  options, targets),
                                 *_pipeline_curves(codec_objs, scales, ladder, base, pps, ds,
                                                   refs, targets, where, flops, log, options)):
        curves[task] += curves_
        cplx += cplx_

    rows: list[dict] = []
    for task in tasks:
        methods = list(curves[task])
        for rate in ("payload", "file"):  # payload first: BD-rates between codecs use it
            at = [c.at_rate(rate) for c in methods if rate == "file" or c.bpp_payload is not None]
            counted = "payload (no container bytes)" if rate == "payload" else "file"
            env = envelope(at, f"Pareto envelope of every classical pipeline (any codec, any "
                           f"scale) + baseline, {counted} rate, {where}")
            if env is None:
                continue
            at.append(env)
            pp_env = envelope(at, f"Pareto envelope of every pre-processor + codec pipeline "
                              f"(any codec, any scale) + baseline, {counted} rate, {where}",
                              "preproc", PREPROC_ENVELOPE)
            if pp_env is not None:
                at.append(pp_env)
            curves[task] += [env] + ([pp_env] if pp_env is not None else [])
            rows += bd_rows(at, [c for c in at if c.kind in ANCHOR_KINDS])
    result = Comparison(curves, rows, cplx, skipped, out)
    _write(result, where, log)
    for task in tasks:
        for row in rows:
            if row["task"] == task and row["rate"] == "payload" and (
                    (row["anchor"] == ENVELOPE and row["method"].startswith(
                        ("learned", "preproc+", PREPROC_ENVELOPE)))
                    or (row["anchor"] == PREPROC_ENVELOPE and row["method"].startswith("learned"))):
                v = row["bd_rate_percent"]
                log(f"{task}: BD-rate (payload rate) of {row['method']} vs {row['anchor']}: "
                    f"{'n/a (' + row['reason'] + ')' if v is None else f'{v:+.1f} %'}")
    return result


def _apply_all(pp, images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[float]]:
    """Every image through the pre-processor, with the measured seconds of each."""
    out, secs = [], []
    for im in images:
        start = time.perf_counter()
        out.append(pre.apply_preprocessor(pp, im))
        secs.append(time.perf_counter() - start)
    return out, secs


def _pp_parameters(pp) -> int:
    module = pp if isinstance(pp, torch.nn.Module) else getattr(pp, "net", None)
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _parameters(model, task: str) -> tuple[int, int, float]:
    """(parameters ``task``'s forward uses, those it trains, trainable backbone %), from the
    accounting (``icm info``'s numbers)."""
    c = parameter_counts(model, task)
    return c["total_params"], c["trainable_params"], c["trainable_percent"]


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
    f = side_flops(model, task, ds.size) if flops else {"encoder": None, "decoder": None}
    return Complexity(task, name, *_parameters(model, task), encoder_flops=f["encoder"],
                      decoder_flops=f["decoder"], encode_ms=_median_ms(enc),
                      decode_ms=_median_ms(dec), timed_images=len(enc),
                      note=f"timed and counted on {run} (lambda {model.cfg.lmbda:g}); rANS "
                      "coding is in the times, not in the FLOPs")


def _pipeline_complexity(task: str, name: str, baseline, pp, enc: list[float], dec: list[float],
                         flops: dict | None, pp_flops: int | None) -> Complexity:
    """A classical (or pre-processor) pipeline + the baseline model at the receiver."""
    total, trainable, percent = _parameters(baseline, task)
    extra = _pp_parameters(pp) if pp is not None else 0
    note = (f"{CODEC_FLOPS_NOTE}; decoder FLOPs = the baseline task network on the decoded "
            "image; times: median per image over every quality"
            + ("; encoder = the pre-processor (its FLOPs) and the codec" if pp is not None
               else ""))
    return Complexity(task, name, total + extra, trainable + extra, percent,
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


def _write(result: Comparison, where: str, log) -> None:
    out = result.out
    for task, curves in result.curves.items():
        for c in curves:
            tail = "" if c.rate == "file" else f"-{c.rate}"  # an envelope counted both ways
            write_text(out / f"{c.name}-{task}{tail}.json", json.dumps(c.to_json(), indent=2))
        if not curves:
            continue
        shown = [c if c.rate == "payload" else c.at_rate("payload") for c in curves
                 if c.rate == "payload" or (c.kind != "envelope" and c.bpp_payload is not None)]
        shown = shown or curves
        fig = comparison_figure(shown, f"{task} ({shown[0].rate} rate): {where}")
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


__all__ = ["Comparison", "Complexity", "compare", "find_runs", "bd_table", "SMALL_LADDERS",
           "DEFAULT_CODECS", "DEFAULT_SCALES", "ANCHOR_KINDS", "ENVELOPE", "PREPROC_ENVELOPE"]
