"""``icm demo``: a rate-accuracy curve from scratch on the CPU, in minutes, offline.

Trains the quick preset (the synthetic-pretrained 4-block EVA-02-tiny with DoRA, synthetic
scenes, 128x128) on one task: ONE variable-rate model (``experiment=quick_vr``, anchors
``TASK_RATE_LAMBDAS``) evaluated at 7 rates, or, with ``variable_rate=False`` (``icm demo
--per-lambda``, the paper's protocol), one model per lambda of its ladder (``TASK_LAMBDAS``).
It evaluates on validation scenes at 256x256 (the RA benchmark's size: there the header, z and the rANS
streams' overhead are 15 % of the middle-lambda stream, at 128 px 42 %) through real
bitstreams, and writes ``report.html`` (plotly RA curve, table, a decoded example with its bit
allocation), ``results.json`` (CompressAI layout), ``results.csv`` and the checkpoints.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import torch
from torch.utils.data import Subset

from icm_core.codec import coder
from icm_core.config import load_config
from icm_core.data.synthetic import SyntheticScenes
from icm_core.evaluation.evaluate import DEFAULT_RATE_POINTS, evaluate, sweep_rates
from icm_core.evaluation.results import eval_curve, write_results
from icm_core.files import write_text
from icm_core.models import rate as vr
from icm_core.models.backbone import weights_notice, weights_source
from icm_core.tasks.registry import get_task
from icm_core.training.trainer import Trainer
from icm_core.viz.figures import ra_figure
from icm_core.viz.images import prediction_panel


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


TASK_LAMBDAS = {
    "semseg": (0.25, 1.0, 4.0),
    "human_parts": (0.25, 1.0, 4.0),
    "depth": (0.01, 0.05, 0.25),
    "normals": (0.05, 0.125, 0.5),
    "saliency": (0.025, 0.05, 0.25),
    "boundary": (0.125, 0.5, 2.0),
}
"""The quick preset's lambda ladder per task (``icm demo --per-lambda``, the paper's protocol: one
200-step model per lambda), every task's chosen on validation scenes by
``benchmarks/bench_choose_ladders.py --rule per-lambda`` from three candidates (the earlier
ladder, it halved, and three lambdas over the span of ``TASK_RATE_LAMBDAS``): the lowest
validation BD-rate against the classical envelope, or, where no candidate has one at 200 steps,
the ladder whose best point is nearest the uncompressed metric
(``benchmarks/results/ladders_val_per_lambda_{a,b}.json``; a test checks they agree). A task's
loss sets the scale: depth, normals and saliency (L1 and BCE losses) code their useful range at
lower lambdas than the cross-entropy tasks."""
TASK_RATE_LAMBDAS = {
    "semseg": (0.0312, 0.125, 0.5, 2.0),
    "human_parts": (0.0625, 0.25, 1.0, 4.0),
    "depth": (0.01, 0.03, 0.1, 0.25),
    "normals": (0.015, 0.05, 0.15, 0.5),
    "saliency": (0.015, 0.05, 0.15, 0.5),
    "boundary": (0.0156, 0.0442, 0.125, 0.354),
}
"""The anchors of a variable-rate quick model per task (``experiment=quick_vr``, ``icm demo``):
4 anchors, about geometric, every task's chosen on validation scenes by
``benchmarks/bench_choose_ladders.py --rule candidates`` (the candidate set with the lowest
validation BD-rate against the classical envelope, ``benchmarks/results/
ladders_val_candidates_<task>.json``; a test checks they agree): semseg and normals take the
package's earlier anchors halved, boundary the first rule's (``ladders_val.json``), depth, human
parts and saliency keep their own."""
DEFAULT_LAMBDAS = TASK_LAMBDAS["semseg"]
DEFAULT_STEPS = 200
"""Steps of each per-lambda model (``icm demo --per-lambda``)."""
DEFAULT_VR_STEPS = 600
"""Steps of the one variable-rate model (``icm demo``): the per-lambda curve's 3 x 200 steps in
one model, so both modes take about the same training time."""
DEFAULT_SIZE = 128
DEFAULT_EVAL_SIZE = 256


def default_lambdas(task: str) -> tuple[float, ...]:
    """The quick preset's lambda ladder for ``task`` (a name or alias)."""
    return TASK_LAMBDAS[get_task(task).name]


def default_rate_lambdas(task: str) -> tuple[float, ...]:
    """The variable-rate anchors' lambdas for ``task`` (a name or alias)."""
    return TASK_RATE_LAMBDAS[get_task(task).name]


def _train(overrides, eval_size: int | None, val_images: int, progress: bool) -> Trainer:
    cfg = load_config(list(overrides))
    trainer = Trainer(cfg)
    if cfg.data.name != "synthetic":  # a real dataset: its first val_images val samples
        trainer.val_set = Subset(trainer.val_set, range(min(val_images, len(trainer.val_set))))
    elif eval_size is not None:  # the final evaluation's scenes (the same seeds, larger)
        trainer.val_set = SyntheticScenes("val", size=(eval_size, eval_size), tasks=trainer.tasks,
                                          seed=cfg.data.seed, length=val_images)
    trainer.fit(progress=progress)
    return trainer


def _sweep(trainer: Trainer, task: str, rate_points) -> list:
    """The variable-rate model's curve: its final evaluation at the anchors, plus the rates of
    the sweep between them (evaluated here, on the same scenes)."""
    done = {r.rate: r for r in trainer.final_results if r.task == task}
    out = []
    for rate in sweep_rates(trainer.model, rate_points):
        if rate not in done:
            done[rate] = evaluate(trainer.model, trainer.val_set, task, per_image=False,
                                  rate=rate, device=trainer.device)
        out.append(done[rate])
    return out


def run_demo(out: str | Path = "demo_out", *, steps: int | None = None, lambdas=None,
             task: str = "semseg", val_images: int = 16, size: int = DEFAULT_SIZE, extra_overrides=(),
             progress: bool = True, eval_size: int | None = DEFAULT_EVAL_SIZE,
             variable_rate: bool = True, rate_points: int = DEFAULT_RATE_POINTS) -> Path:
    """Train ONE variable-rate quick model on ``task`` for ``steps`` steps (default
    ``DEFAULT_VR_STEPS``), its anchors at ``lambdas`` (default: the task's
    ``TASK_RATE_LAMBDAS``; written to ``out/vr``), on ``size`` px scenes; evaluate it at
    ``rate_points`` evenly spaced rates on ``val_images`` validation scenes of ``eval_size`` px
    (None: ``size``) and write the report; returns the path of ``report.html``.

    ``variable_rate=False``: the paper's protocol instead, one model per lambda of ``lambdas``
    (default: the task's ladder, ``TASK_LAMBDAS``), ``steps`` each (default ``DEFAULT_STEPS``)."""
    out = Path(out)
    if steps is None:
        steps = DEFAULT_VR_STEPS if variable_rate else DEFAULT_STEPS
    common = [f"task={task}", f"train.max_steps={steps}", f"data.val_length={val_images}",
              f"data.size=[{size},{size}]"]
    if variable_rate:
        lambdas = tuple(default_rate_lambdas(task) if lambdas is None else lambdas)
        ladder = ",".join(f"{lm!r}" for lm in map(float, lambdas))
        trainer = _train(["experiment=quick_vr", *common, f"model.rate_lambdas=[{ladder}]",
                          f"out_dir={out / 'vr'}", *extra_overrides], eval_size, val_images, progress)
        results, trainers = _sweep(trainer, task, rate_points), [trainer]
        points = [{"run": str(out / "vr"), "rate": r.rate,
                   "lmbda": vr.lambda_at(r.rate, lambdas)} for r in results]
        labels = [f"r={r.rate:.3g} (lambda {vr.lambda_at(r.rate, lambdas):.3g})" for r in results]
        shown_rate = 0.5
        how = (f"{steps} steps, one variable-rate model (anchors' lambdas "
               f"{', '.join(f'{lm:g}' for lm in lambdas)}), {len(results)} rates")
    else:
        lambdas = tuple(default_lambdas(task) if lambdas is None else lambdas)
        trainers = [_train(["experiment=quick", *common, f"lmbda={lm}",
                            f"out_dir={out / f'lmbda-{lm:g}'}", *extra_overrides],
                           eval_size, val_images, progress) for lm in lambdas]
        results = [t.final_results[0] for t in trainers]
        points = [{"run": str(out / f"lmbda-{lm:g}"), "lmbda": float(lm)} for lm in lambdas]
        labels = [f"{lm:g}" for lm in lambdas]
        shown_rate, how = None, f"{steps} steps per lambda"
    model = trainers[len(trainers) // 2].model
    shown = trainers[0].val_set[0]["image"].shape[-1]
    data = model.cfg.data
    where = "synthetic scenes" if data.name == "synthetic" else f"{data.name} ({data.root})"
    desc = (f"quick preset ({model.cfg.backbone.name}, {weights_source(model.cfg.backbone)} "
            f"weights, DoRA r{model.cfg.adapter.rank}), {how} on {where} "
            f"at {size} px, {len(trainers[0].val_set)} val images at {shown} px, real bitstreams")
    write_results(out / "results.json", out / "results.csv",
                  eval_curve(f"demo-{task}", desc, results, points=points))
    r0 = results[0]
    fig = ra_figure({"DoRA FT (quick), real bytes": ([r.bpp for r in results], [r.value for r in results]),
                     "same, estimated bits": ([r.bpp_estimated for r in results], [r.value for r in results])},
                    r0.metric, f"{task}: rate-accuracy on {where}")
    sample = trainers[0].val_set[0]
    model.eval()
    with torch.no_grad():
        img = sample["image"].unsqueeze(0)
        data = coder.encode(model, img, task=task, rate=shown_rate)
        decoded = coder.decode(model, data).prediction[0]
        bits = model.predict(img, task=task, rate=shown_rate).bits_map()[0]
    panel = prediction_panel(sample["image"], sample[task], decoded, bits, task)
    rows = "".join(f"<tr><td>{html.escape(lab)}</td><td>{r.bpp:.4f}</td>"
                   f"<td>{r.bpp_estimated:.4f}</td><td>{r.value:.2f}</td></tr>"
                   for lab, r in zip(labels, results))
    first = "rate (lambda)" if variable_rate else "lambda"
    example = (f"rate {shown_rate:g}" if variable_rate
               else f"lambda {lambdas[len(lambdas) // 2]:g}")
    mid = results[len(results) // 2]
    pixels = img.shape[-2] * img.shape[-1]
    overhead = (mid.bpp - mid.bpp_estimated) * pixels / 8  # measured: real bytes - estimate
    notice = weights_notice(model.cfg.backbone)
    colour = "color:#b00;font-weight:bold" if not model.pretrained else "color:#555"
    warning = "" if notice is None else f"<p style='{colour}'>{html.escape(notice)}</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ICM demo</title></head>
<body style="font-family:sans-serif;max-width:900px;margin:auto">
<h1>ICM workbench demo: {html.escape(task)}</h1>{warning}
<p>{html.escape(desc)}.</p>
{fig.to_html(full_html=False, include_plotlyjs=True)}
<table border="1" cellpadding="4" style="border-collapse:collapse">
<tr><th>{first}</th><th>bpp (real bytes)</th><th>bpp (estimated)</th><th>{r0.metric}</th></tr>{rows}</table>
<p>Real bytes include the container header ({data.sections.header} bytes in the stream below)
and the flush of the three rANS streams: at {labels[len(labels) // 2]} the real
streams are {overhead:.1f} bytes per image above the entropy model's estimate, a large part of
a small image's stream.</p>
<h2>One validation image, {example}: {len(data)} bytes</h2>
<img src="data:image/png;base64,{_png_b64(panel)}" style="image-rendering:pixelated;width:100%">
</body></html>"""
    write_text(out / "report.html", page)
    return out / "report.html"
