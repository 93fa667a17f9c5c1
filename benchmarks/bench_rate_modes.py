"""Variable rate against per-lambda models, and both against the best classical pipeline.

Issue 22 ("compare the two modes" and "the goal"). Per task, with the quick preset:

- ``per-lambda``: one model per lambda of the task's ladder (``TASK_LAMBDAS``), ``--steps`` each:
  today's ``icm demo``, the paper's protocol;
- ``vr-steps``: ONE variable-rate model (``experiment=quick_vr``, anchors ``TASK_RATE_LAMBDAS``)
  trained ``--steps`` steps: equal steps per model;
- ``vr-time``: the same trained ``len(ladder) * --steps`` steps: the per-lambda curve's total
  training steps in one model, i.e. the wall time ``icm demo`` takes today;
- the uncompressed baseline trained ``len(ladder) * --steps`` steps (the budget of ``vr-time``:
  the classical pipelines get a task network as well trained as the learned codec).

All of them go through ``icm_core.studies.compare.compare`` on the same held-out scenes (every
classical codec, VVC included when found, at scales 1, 1/2, 1/4; no pre-processor). Written:
the BD-rates of every learned curve against ``best-classical`` (payload and file rate), of the
variable-rate curves against the per-lambda curve (payload), the task file's parameters of
each mode, the trainings' seconds and, measured side by side in this process on the held-out
images, the encode and decode time of the middle per-lambda model and of ``vr-time`` at the
rate of the same lambda.

    OMP_NUM_THREADS=1 ICM_VVENC=... ICM_VVDEC=... python benchmarks/bench_rate_modes.py \
        --tasks semseg,depth,normals --split test --seed 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _runs import (
    RATE_SETTINGS,
    results_doc,
    timed_log,
    train_cached,
    trained_seconds,
    write_results,
)

from icm_core.baselines.classical import DEFAULT_CODECS, available_codecs
from icm_core.codec import coder
from icm_core.data.held_out import HeldOut
from icm_core.evaluation.accounting import parameter_counts
from icm_core.evaluation.bdrate import bd_rate
from icm_core.files import write_text
from icm_core.models import rate as vr
from icm_core.studies.compare import ENVELOPE, compare
from icm_core.studies.demo import default_lambdas, default_rate_lambdas
from icm_core.tasks.registry import get_task

RESULTS = Path(__file__).parent / "results"
MODES = ("per-lambda", "vr-steps", "vr-time")


def _curve(result, task: str, name: str):
    return next(c for c in result.curves[task] if c.name == name)


def _bd_row(rows, task, method, anchor, rate):
    for r in rows:
        if (r["task"], r["method"], r["anchor"], r["rate"]) == (task, method, anchor, rate):
            return {"value": r["bd_rate_percent"], "range": [r["metric_lo"], r["metric_hi"]],
                    "reason": r["reason"] or None}
    return {"value": None, "range": None, "reason": "no such curve"}


def _bd(anchor, test) -> dict:
    r = bd_rate((anchor.bpp, anchor.values), (test.bpp, test.values), test.higher_is_better)
    return {"value": r.value, "range": list(r.metric_range) if r.metric_range else None,
            "reason": r.reason or None}


def _coding_seconds(model_a, rate_a, model_b, rate_b, task, images, repeats: int) -> dict:
    """Encode and decode seconds per image of two models, interleaved image by image so both
    see the same machine load; the median over images and repeats."""
    enc = {"a": [], "b": []}
    dec = {"a": [], "b": []}
    for _ in range(repeats):
        for i in range(len(images)):
            x = images[i]["image"].unsqueeze(0)
            for key, model, rate in (("a", model_a, rate_a), ("b", model_b, rate_b)):
                t = time.perf_counter()
                data = coder.encode(model, x, task=task, rate=rate)
                enc[key].append(time.perf_counter() - t)
                t = time.perf_counter()
                coder.decode(model, bytes(data))
                dec[key].append(time.perf_counter() - t)
    med = {f"{k}_{s}": statistics.median(v[s]) for k, v in (("encode", enc), ("decode", dec))
           for s in ("a", "b")}
    return {"encode_seconds_per_lambda": med["encode_a"], "encode_seconds_variable": med["encode_b"],
            "decode_seconds_per_lambda": med["decode_a"], "decode_seconds_variable": med["decode_b"],
            "encode_ratio_variable_over_per_lambda": med["encode_b"] / med["encode_a"],
            "decode_ratio_variable_over_per_lambda": med["decode_b"] / med["decode_a"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="semseg,depth,normals")
    p.add_argument("--steps", type=int, default=200, help="steps of each per-lambda model")
    p.add_argument("--budget", type=int, default=None,
                   help="steps of vr-time and of the baseline (default: len(ladder) * --steps, "
                   "the per-lambda curve's total), e.g. 800 for issue 22's 800-step goal")
    p.add_argument("--images", type=int, default=16, help="held-out scenes")
    p.add_argument("--size", type=int, default=256, help="evaluation size (square)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--seed", type=int, default=7, help="seed of the held-out scenes")
    p.add_argument("--codecs", default=",".join(c for c in DEFAULT_CODECS
                                                if c in available_codecs()),
                   help="default: every default codec found here (VVC via PATH or ICM_VVENC)")
    p.add_argument("--scales", default="1,0.5,0.25")
    p.add_argument("--rate-points", type=int, default=7, help="rates of a variable-rate curve")
    p.add_argument("--boundary-thresholds", type=int, default=19,
                   help="odsF thresholds for boundary, the same for every method (19: a subset "
                   "of the metric's 99, about 5x faster, as bench_compare_tasks.py)")
    p.add_argument("--timing-images", type=int, default=4)
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--ladders", type=Path, default=None,
                   help="a bench_choose_ladders.py result (ladders chosen on validation scenes); "
                   "default: the package's TASK_LAMBDAS / TASK_RATE_LAMBDAS")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"which of {', '.join(MODES)} to train and score (per-lambda is the "
                   "reference of the mode comparison and the coding times)")
    p.add_argument("--set", dest="extra", nargs="*", default=[],
                   help="overrides for the learned models only (a lever, e.g. data.size=[256,256] "
                   "to train at the evaluation size); the baseline keeps the quick preset's")
    p.add_argument("--set-baseline", dest="base_extra", nargs="*", default=[],
                   help="overrides for the uncompressed baseline (give it the same lever, so "
                   "the classical pipelines' task network is trained the same way)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "rate_modes")
    p.add_argument("--summary", type=Path, default=None,
                   help="the small JSON to commit (default: results/rate_modes_<split>.json)")
    args = p.parse_args(argv)
    modes = [m for m in MODES if m in args.modes.split(",")]
    torch.set_num_threads(1)
    t0, log = time.perf_counter(), timed_log()
    root = RESULTS / "ra_runs"
    tasks = [get_task(t).name for t in args.tasks.split(",")]

    chosen = json.loads(args.ladders.read_text())["summary"] if args.ladders else {}
    runs, baselines, plan = [], [], {}
    for task in tasks:
        if task in chosen:
            ladder, anchors = chosen[task]["choice"]["ladder"], chosen[task]["choice"]["anchors"]
        else:
            ladder, anchors = list(default_lambdas(task)), list(default_rate_lambdas(task))
        budget = args.budget or len(ladder) * args.steps
        anchor_list = "[" + ",".join(repr(float(a)) for a in anchors) + "]"
        vr_common = ["experiment=quick_vr", f"task={task}", f"model.rate_lambdas={anchor_list}",
                     *args.extra]
        base = train_cached(["experiment=quick", f"task={task}", "model.compression=false",
                             f"train.max_steps={budget}", *args.base_extra], root,
                            settings=RATE_SETTINGS, retrain=args.retrain, log=log)[2]
        trained = {}
        if "per-lambda" in modes:
            trained["per-lambda"] = [train_cached(
                ["experiment=quick", f"task={task}", f"lmbda={lm}", f"train.max_steps={args.steps}",
                 *args.extra],
                root, settings=RATE_SETTINGS, retrain=args.retrain, log=log)[2] for lm in ladder]
        for mode, steps in (("vr-steps", args.steps), ("vr-time", budget)):
            if mode in modes:
                trained[mode] = [train_cached([*vr_common, f"name={mode}",
                                               f"train.max_steps={steps}"], root,
                                              settings=RATE_SETTINGS, retrain=args.retrain,
                                              log=log)[2]]
        plan[task] = {"ladder": ladder, "anchors": anchors, "budget_steps": budget,
                      "runs": trained}
        runs += [r for rs in trained.values() for r in rs]
        baselines.append(base)

    # the per-lambda runs are named "quick" by their preset: compare's curve "learned-quick"
    result = compare(runs, baselines, codecs=args.codecs.split(","),
                     scales=[float(s) for s in args.scales.split(",")], preprocessor="none",
                     images=args.images, size=args.size, out=args.out, split=args.split,
                     seed=args.seed, log=log,
                     metric_options={"boundary": {"n_thresholds": args.boundary_thresholds}})
    names = ({modes[0]: "learned"} if len(modes) == 1 else  # compare's name for a lone curve
             {"per-lambda": "learned-quick", "vr-steps": "learned-vr-steps",
              "vr-time": "learned-vr-time"})

    from icm_core.training.checkpoint import load_checkpoint

    summary = {}
    for task in tasks:
        row = {"metric": get_task(task).metric, **{k: plan[task][k] for k in
                                                   ("ladder", "anchors", "budget_steps")}}
        curves = {m: _curve(result, task, names[m]) for m in modes}
        pay = {m: c.at_rate("payload") for m, c in curves.items()}
        env = _curve(result, task, ENVELOPE)
        row["uncompressed"] = env.uncompressed
        row["vs_best_classical"] = {m: {"payload": _bd_row(result.bd_rates, task, names[m],
                                                           ENVELOPE, "payload"),
                                        "file": _bd_row(result.bd_rates, task, names[m],
                                                        ENVELOPE, "file")} for m in modes}
        row["vs_per_lambda_payload"] = ({m: _bd(pay["per-lambda"], pay[m])
                                         for m in ("vr-steps", "vr-time") if m in modes}
                                        if "per-lambda" in modes else {})
        row["curves"] = {m: {"bpp_payload": pay[m].bpp, "values": pay[m].values,
                             "points": pay[m].points} for m in modes}
        env_pay = next(c for c in result.curves[task]
                       if c.name == ENVELOPE and c.rate == "payload")
        row["curves"]["best-classical"] = {"bpp_payload": env_pay.bpp, "values": env_pay.values}
        row["train_seconds"] = {m: [trained_seconds(r) for r in plan[task]["runs"][m]]
                                for m in modes}
        summary[task] = row
        if not {"per-lambda", "vr-time"} <= set(modes):
            log(f"{task}: vs best-classical (payload) {row['vs_best_classical']}")
            continue
        mid = plan[task]["runs"]["per-lambda"][len(plan[task]["ladder"]) // 2]
        m_per = load_checkpoint(mid)[0]
        m_vr = load_checkpoint(plan[task]["runs"]["vr-time"][0])[0]
        per_p, vr_p = parameter_counts(m_per, task), parameter_counts(m_vr, task)
        row["task_file_params"] = {"per-lambda": per_p["trainable_params"],
                                   "variable": vr_p["trainable_params"],
                                   "ratio": vr_p["trainable_params"] / per_p["trainable_params"]}
        lam = float(m_per.cfg.lmbda)
        rate = vr.snap_rate(vr.rate_at(lam, m_vr.rate_lambdas), m_vr.rate_lambdas)
        images = HeldOut(args.timing_images, args.size, [task], split=args.split, seed=args.seed)
        row["coding_time"] = {"lambda": lam, "rate": rate,
                              **_coding_seconds(m_per, None, m_vr, rate, task, images,
                                                args.timing_repeats)}
        log(f"{task}: vs best-classical (payload) {row['vs_best_classical']}; vs per-lambda: "
            f"{row['vs_per_lambda_payload']}")
    doc = results_doc(args, t0, codecs=args.codecs, summary=summary,
                      ladders_chosen_on=(json.loads(args.ladders.read_text())["held_out"]
                                         if args.ladders else "the package's ladders"))
    write_text(args.out / "summary.json", json.dumps(doc, indent=2))
    write_results(doc, args.summary or RESULTS / f"rate_modes_{args.split}.json", log)
    return doc


if __name__ == "__main__":
    main()
