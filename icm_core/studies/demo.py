"""``icm demo``: a rate-accuracy curve from scratch on the CPU, in minutes, offline.

Trains the quick preset (the synthetic-pretrained 4-block EVA-02-tiny with DoRA, synthetic
scenes, 128x128) on one task at the lambdas of its ladder (``TASK_LAMBDAS``), evaluates each
on validation scenes at 256x256 (the RA benchmark's size: there the header, z and the rANS
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
from icm_core.evaluation.results import eval_curve, write_results
from icm_core.files import write_text
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
    "depth": (0.03, 0.1, 0.25),
    "normals": (0.1, 0.25, 1.0),
    "saliency": (0.05, 0.1, 0.5),
    "boundary": (0.25, 1.0, 4.0),
}
"""The quick preset's lambda ladder per task (``icm demo --task``, the RA benchmarks), chosen
from lambdas measured on held-out scenes at 256 px so that each curve rises in rate and
accuracy and its lowest point keeps most of the uncompressed metric (README, "Offline
rate-accuracy"). A task's loss sets the scale: on depth and normals (L1 losses) lambda 1 and 4
landed at nearly the same rate, and saliency reaches its uncompressed maxF at lambda 0.5 (above
it the points are flat within noise), so their useful ranges lie lower."""
DEFAULT_LAMBDAS = TASK_LAMBDAS["semseg"]
DEFAULT_STEPS = 200
DEFAULT_SIZE = 128
DEFAULT_EVAL_SIZE = 256


def default_lambdas(task: str) -> tuple[float, ...]:
    """The quick preset's lambda ladder for ``task`` (a name or alias)."""

    return TASK_LAMBDAS[get_task(task).name]


def run_demo(out: str | Path = "demo_out", *, steps: int = DEFAULT_STEPS, lambdas=None,
             task: str = "semseg", val_images: int = 16, size: int = DEFAULT_SIZE, extra_overrides=(),
             progress: bool = True, eval_size: int | None = DEFAULT_EVAL_SIZE) -> Path:
    """Train the quick preset on ``task`` at each of ``lambdas`` (default: the task's ladder,
    ``TASK_LAMBDAS``) on ``size`` px scenes, evaluate on ``val_images`` validation scenes of
    ``eval_size`` px (None: ``size``) and write the report; returns the path of ``report.html``."""
    out = Path(out)
    lambdas = tuple(default_lambdas(task) if lambdas is None else lambdas)
    results, trainers = [], []
    for lm in lambdas:
        cfg = load_config(["experiment=quick", f"task={task}", f"lmbda={lm}", f"train.max_steps={steps}",
                           f"out_dir={out / f'lmbda-{lm:g}'}", f"data.val_length={val_images}",
                           f"data.size=[{size},{size}]",
                           *extra_overrides])
        trainer = Trainer(cfg)
        if cfg.data.name != "synthetic":  # a real dataset: its first val_images val samples
            trainer.val_set = Subset(trainer.val_set, range(min(val_images, len(trainer.val_set))))
        elif eval_size is not None:  # the final evaluation's scenes (the same seeds, larger)
            trainer.val_set = SyntheticScenes("val", size=(eval_size, eval_size),
                                              tasks=trainer.tasks, seed=cfg.data.seed,
                                              length=val_images)
        trainer.fit(progress=progress)
        results.append(trainer.final_results[0])
        trainers.append(trainer)
    model = trainers[len(trainers) // 2].model
    shown = trainers[0].val_set[0]["image"].shape[-1]
    data = model.cfg.data
    where = "synthetic scenes" if data.name == "synthetic" else f"{data.name} ({data.root})"
    desc = (f"quick preset ({model.cfg.backbone.name}, {weights_source(model.cfg.backbone)} "
            f"weights, DoRA r{model.cfg.adapter.rank}), {steps} steps per lambda on {where} "
            f"at {size} px, {len(trainers[0].val_set)} val images at {shown} px, real bitstreams")
    write_results(out / "results.json", out / "results.csv",
                  eval_curve(f"demo-{task}", desc, results,
                             points=[{"run": str(out / f"lmbda-{lm:g}"), "lmbda": float(lm)}
                                     for lm in lambdas]))
    r0 = results[0]
    fig = ra_figure({"DoRA FT (quick), real bytes": ([r.bpp for r in results], [r.value for r in results]),
                     "same, estimated bits": ([r.bpp_estimated for r in results], [r.value for r in results])},
                    r0.metric, f"{task}: rate-accuracy on {where}")
    sample = trainers[0].val_set[0]
    model.eval()
    with torch.no_grad():
        img = sample["image"].unsqueeze(0)
        data = coder.encode(model, img, task=task)
        decoded = coder.decode(model, data).prediction[0]
        bits = model.predict(img, task=task).bits_map()[0]
    panel = prediction_panel(sample["image"], sample[task], decoded, bits, task)
    rows = "".join(f"<tr><td>{lm:g}</td><td>{r.bpp:.4f}</td><td>{r.bpp_estimated:.4f}</td>"
                   f"<td>{r.value:.2f}</td></tr>" for lm, r in zip(lambdas, results))
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
<tr><th>lambda</th><th>bpp (real bytes)</th><th>bpp (estimated)</th><th>{r0.metric}</th></tr>{rows}</table>
<p>Real bytes include the container header ({data.sections.header} bytes in the stream below)
and the flush of the three rANS streams: at lambda {lambdas[len(lambdas) // 2]:g} the real
streams are {overhead:.1f} bytes per image above the entropy model's estimate, a large part of
a small image's stream.</p>
<h2>One validation image, lambda {lambdas[len(lambdas) // 2]:g}: {len(data)} bytes</h2>
<img src="data:image/png;base64,{_png_b64(panel)}" style="image-rendering:pixelated;width:100%">
</body></html>"""
    write_text(out / "report.html", page)
    return out / "report.html"
