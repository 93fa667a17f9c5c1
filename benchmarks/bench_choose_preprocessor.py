"""Choose the pre-processor's rate weight (``PreprocessorConfig.lmbda``) on VALIDATION scenes.

Issue 21 ("every choice is re-made on validation scenes ... the pre-processor's lambda"). The
pre-processor of Lu et al. (``icm_core.baselines.preprocessor``) trains through the JPEG proxy
against a task's frozen uncompressed baseline, minimising task loss + lmbda x proxy bpp. Its
lambda used to be picked on test scenes. Here, per candidate lambda:

1. per task (``--tasks``), the uncompressed quick baseline of ``--steps`` steps (the cache
   ``bench_rate_modes.py`` and ``bench_choose_ladders.py`` use) and a pre-processor trained
   against it with the settings ``bench_compare_tasks.py`` reports with (``--pp-steps``,
   batch 2, ``--pp-size`` crops);
2. ``icm compare --preprocessor <those files>`` on ``--split val`` scenes of ``--seed``: JPEG
   (the codec it is trained through) at scales 1, 1/2, 1/4, plain and pre-processed, payload
   rate; the learned variable-rate model of the same budget rides along (``compare`` scores the
   tasks of a learned run) and is not looked at;
3. the rule: the lambda whose pre-processor envelope has the lowest BD-rate (payload) against
   the plain JPEG envelope, averaged over the tasks (one lambda serves every task, as the package
   has one default); a lambda for which some task has no BD-rate is not eligible.

Writes ``results/preprocessor_val.json`` (``choice``: the lambda and why). The package default
``PreprocessorConfig.lmbda`` and ``bench_compare_tasks.py --pp-lambda`` follow it
(``tests/test_preprocessor.py`` checks they agree with the committed file).

    OMP_NUM_THREADS=1 python benchmarks/bench_choose_preprocessor.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _runs import RATE_SETTINGS, results_doc, start_choice, train_cached, write_results
from bench_rate_modes import _bd_row

from icm_core.baselines.preprocessor import PreprocessorConfig
from icm_core.evaluation.results import ENVELOPE, PREPROC_ENVELOPE
from icm_core.studies.compare import compare
from icm_core.studies.demo import TASK_RATE_LAMBDAS

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="semseg,depth")
    p.add_argument("--lambdas", default="0.03,0.1,0.3,1.0")
    p.add_argument("--steps", type=int, default=600, help="steps of each task's baseline")
    p.add_argument("--pp-steps", type=int, default=200, help="pre-processor training steps")
    p.add_argument("--pp-size", type=int, default=128, help="pre-processor training crop (px)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scales", default="1,0.5,0.25")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "choose_preprocessor")
    p.add_argument("--summary", type=Path, default=None)
    args = p.parse_args(argv)
    t0, log, tasks = start_choice(args.split, args.tasks)
    root = RESULTS / "ra_runs"
    bases, learned = [], []
    for task in tasks:
        bases.append(train_cached(["experiment=quick", f"task={task}", "model.compression=false",
                                   f"train.max_steps={args.steps}"], root, settings=RATE_SETTINGS,
                                  retrain=args.retrain, log=log)[2])
        anchors = [float(a) for a in TASK_RATE_LAMBDAS[task]]
        learned.append(train_cached(["experiment=quick_vr", f"task={task}",
                                     "model.rate_lambdas=[" + ",".join(map(repr, anchors)) + "]",
                                     "name=vr-package", f"train.max_steps={args.steps}"], root,
                                    settings=RATE_SETTINGS, retrain=args.retrain, log=log)[2])
    per_lambda = {}
    for lm in [float(v) for v in args.lambdas.split(",")]:
        pcfg = PreprocessorConfig(lmbda=lm, steps=args.pp_steps, batch_size=2, size=args.pp_size)
        result = compare(learned, bases, codecs=["jpeg"],
                         scales=[float(s) for s in args.scales.split(",")],
                         preprocessor="train", preprocessor_config=pcfg, images=args.images,
                         size=args.size, out=args.out / f"lambda-{lm:g}", split=args.split,
                         seed=args.seed, log=log, flops=False)
        rows = {}
        for task in tasks:
            bd = _bd_row(result.bd_rates, task, PREPROC_ENVELOPE, ENVELOPE, "payload")
            curves = {c.name: {"bpp_payload": c.bpp, "values": c.values}
                      for c in result.curves[task] if c.kind == "envelope" and c.rate == "payload"}
            rows[task] = {"preproc_vs_jpeg_payload": bd["value"], "reason": bd["reason"],
                          "metric_range": bd["range"], "envelopes": curves}
        values = [r["preproc_vs_jpeg_payload"] for r in rows.values()]
        mean = statistics.fmean(values) if all(v is not None for v in values) else None
        per_lambda[f"{lm:g}"] = {"lmbda": lm, "tasks": rows, "mean_bd_rate": mean}
        log(f"lambda {lm:g}: " + ", ".join(
            f"{t} {r['preproc_vs_jpeg_payload']:+.1f} %" if r["preproc_vs_jpeg_payload"]
            is not None else f"{t} n/a ({r['reason']})" for t, r in rows.items()))
    eligible = {k: v for k, v in per_lambda.items() if v["mean_bd_rate"] is not None}
    if not eligible:
        raise SystemExit(f"no lambda has a BD-rate on every task: {per_lambda}")
    best = min(eligible, key=lambda k: eligible[k]["mean_bd_rate"])
    choice = {"lmbda": eligible[best]["lmbda"],
              "why": f"lowest mean validation BD-rate (payload) of the pre-processor envelope vs "
                     f"plain JPEG over {', '.join(tasks)}: {eligible[best]['mean_bd_rate']:+.1f} %"}
    doc = results_doc(args, t0, rule=__doc__.split("3. the rule: ")[1].split("\n\nWrites")[0]
                      .strip(), per_lambda=per_lambda, choice=choice)
    write_results(doc, args.summary or RESULTS / f"preprocessor_{args.split}.json", log,
                  f": lambda {choice['lmbda']:g} ({choice['why']})")
    return doc


if __name__ == "__main__":
    main()
