"""Choose each task's lambda ladder and variable-rate anchors on VALIDATION scenes.

Issue 21 ("every choice is re-made on validation scenes"). Per task, with the quick preset:

1. one variable-rate model over a wide geometric grid of 7 lambdas (from a quarter
   of the lowest to twice the highest of the task's current anchors), ``--steps`` steps, and the
   uncompressed baseline of the same budget (the cache ``bench_rate_modes.py`` uses);
2. ``icm compare`` on ``--split val`` scenes of ``--seed`` (never the test scenes a report
   uses): the model at each grid lambda (rate k / (anchors - 1) is anchor k, exactly), and
   every classical codec (VVC included when found) at every scale, payload rate;
3. the rule, on those validation numbers only:

   - lowest lambda: the largest grid lambda whose payload rate is at most the classical
     envelope's lowest rate (so the curve starts where the envelope starts); the smallest
     grid lambda if none is that low;
   - highest lambda: the smallest grid lambda whose metric is within ``--flat`` (relative) of
     the best metric on the grid (above it, rate buys no accuracy), at least ``--min-span``
     times the lowest;
   - the per-lambda ladder: 3 lambdas geometric from lowest to highest; the variable-rate
     anchors: 4, geometric, the same span. Rounded to 3 significant digits.

``--rule candidates`` (the second rule): per task, one variable-rate model per candidate set of
anchors, ``--steps`` each, all scored in ONE ``icm compare`` on the validation scenes; the set
whose curve has the lowest BD-rate (payload) against the validation envelope is chosen. The
candidates: ``package`` (``TASK_RATE_LAMBDAS``), ``lower`` (each anchor halved: a curve that
starts lower, where the envelope starts) and ``wide-rule`` (the first rule's anchors, from
``--first-rule`` results, when given). Written to ``results/ladders_<split>_candidates.json``;
its ``choice`` has the chosen ``anchors`` and the package's per-lambda ``ladder`` (chosen by
``--rule per-lambda``), so ``bench_rate_modes.py --ladders`` can report the choice on test scenes.

``--rule per-lambda`` (the per-lambda ladders, ``TASK_LAMBDAS``: ``icm demo --per-lambda``, the
paper's protocol): per task, one model per lambda of every candidate ladder, ``--ladder-steps``
each (a lambda two candidates share is trained once), and the uncompressed baseline of the
curve's total steps, all tasks scored in ONE ``icm compare`` on the validation scenes; each
candidate's curve is its lambdas' points, and the ladder with the lowest BD-rate (payload)
against the validation envelope is chosen (if no candidate has one, the ladder whose best point
comes closest to the uncompressed metric). The candidates: ``package`` (``TASK_LAMBDAS``),
``lower`` (each lambda halved) and ``anchor-span`` (3 lambdas geometric over the span of the
task's validation-chosen anchors, ``TASK_RATE_LAMBDAS``). Written to
``results/ladders_<split>_per_lambda.json``; its ``choice`` has the chosen ``ladder`` and the
package's ``anchors``, for ``bench_rate_modes.py --ladders``.

The first rule writes ``results/ladders_<split>.json``; its choices did worse and were not
adopted. ``TASK_RATE_LAMBDAS`` holds the second rule's choices for the tasks it was run on
(``tests/test_variable_rate.py`` checks they agree with the committed files).

    OMP_NUM_THREADS=1 ICM_VVENC=... ICM_VVDEC=... python benchmarks/bench_choose_ladders.py
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from _runs import RATE_SETTINGS, results_doc, start_choice, train_cached, write_results
from bench_rate_modes import _bd, _bd_row

from icm_core.baselines.classical import DEFAULT_CODECS, available_codecs
from icm_core.evaluation.evaluate import DEFAULT_RATE_POINTS
from icm_core.studies.compare import ENVELOPE, compare
from icm_core.studies.demo import DEFAULT_STEPS, TASK_LAMBDAS, TASK_RATE_LAMBDAS
from icm_core.tasks.registry import get_task

RESULTS = Path(__file__).parent / "results"
ORDER = "human_parts,saliency,boundary,semseg,depth,normals"
ANCHORS = DEFAULT_RATE_POINTS  # compare's sweep of a variable-rate run hits each anchor exactly


def geometric(lo: float, hi: float, n: int) -> list[float]:
    """``n`` lambdas from ``lo`` to ``hi``, evenly spaced in log, 3 significant digits."""
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]


def choose(grid, bpp, values, higher_is_better: bool, envelope_lo: float, flat: float,
           min_span: float) -> dict:
    """The rule of the module docstring on one task's validation numbers."""
    low = [lm for lm, b in zip(grid, bpp) if b <= envelope_lo]
    lo = max(low) if low else grid[0]
    best = max(values) if higher_is_better else min(values)
    tol = flat * abs(best)
    near = [lm for lm, v in zip(grid, values)
            if (v >= best - tol if higher_is_better else v <= best + tol)]
    hi = min(max(min(near), lo * min_span), grid[-1])  # never above what was trained
    return {"lowest": lo, "highest": hi, "best_metric": best,
            "ladder": geometric(lo, hi, 3), "anchors": geometric(lo, hi, 4),
            "why_lowest": (f"largest grid lambda at <= the envelope's lowest payload rate "
                           f"{envelope_lo:.4f} bpp" if low else
                           f"no grid lambda reaches the envelope's lowest rate {envelope_lo:.4f}"
                           " bpp: the smallest grid lambda"),
            "why_highest": f"smallest grid lambda within {flat:.0%} of the best metric "
                           f"{best:.4g} (at least {min_span:g}x the lowest)"}


def candidate_anchors(task: str, first_rule: dict | None) -> dict[str, list[float]]:
    """The candidate anchor sets of ``--rule candidates`` for ``task``."""
    package = [float(a) for a in TASK_RATE_LAMBDAS[task]]
    out = {"package": package, "lower": [float(f"{a / 2:.3g}") for a in package]}
    if first_rule and task in first_rule:
        out["wide-rule"] = [float(a) for a in first_rule[task]["choice"]["anchors"]]
    return out


def choose_candidates(args, task: str, root: Path, log, first_rule: dict | None) -> dict:
    """``--rule candidates`` for one task on the validation scenes."""
    base = train_cached(["experiment=quick", f"task={task}", "model.compression=false",
                         f"train.max_steps={args.steps}"], root, settings=RATE_SETTINGS,
                        retrain=args.retrain, log=log)[2]
    cands = candidate_anchors(task, first_rule)
    runs = [train_cached(["experiment=quick_vr", f"task={task}",
                          "model.rate_lambdas=[" + ",".join(map(repr, anchors)) + "]",
                          f"name=vr-{name}", f"train.max_steps={args.steps}"], root,
                         settings=RATE_SETTINGS, retrain=args.retrain, log=log)[2]
            for name, anchors in cands.items()]
    result = compare(runs, [base], codecs=args.codecs.split(","),
                     scales=[float(s) for s in args.scales.split(",")], preprocessor="none",
                     images=args.images, size=args.size, out=args.out / f"{task}-candidates",
                     split=args.split, seed=args.seed, log=log,
                     metric_options={"boundary": {"n_thresholds": 19}})
    scored = {}
    for name, anchors in cands.items():
        bd = _bd_row(result.bd_rates, task, f"learned-vr-{name}", ENVELOPE, "payload")
        pay = next(c for c in result.curves[task]
                   if c.name == f"learned-vr-{name}").at_rate("payload")
        scored[name] = {"anchors": anchors, "bd_rate_payload": bd["value"],
                        "reason": bd["reason"], "bpp_payload": pay.bpp, "values": pay.values}
    valid = {n: c for n, c in scored.items() if c["bd_rate_payload"] is not None}
    if not valid:
        raise SystemExit(f"{task}: no candidate has a BD-rate on these scenes: {scored}")
    best = min(valid, key=lambda n: valid[n]["bd_rate_payload"])
    return {"metric": get_task(task).metric, "candidates": scored,
            "uncompressed": next(c for c in result.curves[task] if c.name == ENVELOPE).uncompressed,
            "choice": {"name": best, "anchors": scored[best]["anchors"],
                       "ladder": [float(x) for x in TASK_LAMBDAS[task]],
                       "why": f"lowest validation BD-rate (payload) vs {ENVELOPE}: "
                              f"{valid[best]['bd_rate_payload']:+.1f} %"}}


def ladder_candidates(task: str) -> dict[str, list[float]]:
    """The candidate per-lambda ladders of ``--rule per-lambda`` for ``task`` (a ladder equal to
    an earlier one is left out)."""
    package = [float(x) for x in TASK_LAMBDAS[task]]
    anchors = TASK_RATE_LAMBDAS[task]
    out: dict[str, list[float]] = {}
    for name, ladder in (("package", package),
                         ("lower", [float(f"{x / 2:.3g}") for x in package]),
                         ("anchor-span", geometric(anchors[0], anchors[-1], 3))):
        if ladder not in out.values():
            out[name] = ladder
    return out


def pick_ladder(scored: dict, uncompressed: float, higher_is_better: bool) -> tuple[str, str]:
    """(name, why) of the chosen candidate: lowest BD-rate; without any, closest best point."""
    valid = {n: c for n, c in scored.items() if c["bd_rate_payload"] is not None}
    if valid:
        best = min(valid, key=lambda n: valid[n]["bd_rate_payload"])
        return best, (f"lowest validation BD-rate (payload) vs {ENVELOPE}: "
                      f"{valid[best]['bd_rate_payload']:+.1f} %")
    top = {n: (max if higher_is_better else min)(c["values"]) for n, c in scored.items()}
    best = min(top, key=lambda n: abs(top[n] - uncompressed))
    return best, (f"no candidate has a BD-rate vs {ENVELOPE} on these scenes: the best point "
                  f"closest to the uncompressed {uncompressed:.4g} ({top[best]:.4g})")


def choose_per_lambda(args, tasks: list[str], root: Path, log) -> dict:
    """``--rule per-lambda`` for ``tasks``, scored in one comparison on the validation scenes."""
    runs, bases, cands = [], [], {}
    for task in tasks:
        cands[task] = ladder_candidates(task)
        total = len(next(iter(cands[task].values()))) * args.ladder_steps
        bases.append(train_cached(["experiment=quick", f"task={task}", "model.compression=false",
                                   f"train.max_steps={total}"], root, settings=RATE_SETTINGS,
                                  retrain=args.retrain, log=log)[2])
        for lm in sorted({x for ladder in cands[task].values() for x in ladder}):
            # the overrides of bench_rate_modes' per-lambda runs: one cache for both
            runs.append(train_cached(["experiment=quick", f"task={task}", f"lmbda={lm}",
                                      f"train.max_steps={args.ladder_steps}"], root,
                                     settings=RATE_SETTINGS, retrain=args.retrain, log=log)[2])
    result = compare(runs, bases, codecs=args.codecs.split(","),
                     scales=[float(s) for s in args.scales.split(",")], preprocessor="none",
                     images=args.images, size=args.size, out=args.out / "per-lambda",
                     split=args.split, seed=args.seed, log=log,
                     metric_options={"boundary": {"n_thresholds": 19}})
    summary = {}
    for task in tasks:
        learned = next(c for c in result.curves[task] if c.kind == "learned").at_rate("payload")
        env = next(c for c in result.curves[task] if c.name == ENVELOPE and c.rate == "payload")
        points = list(zip(learned.points, learned.bpp, learned.values))
        scored = {}
        for name, ladder in cands[task].items():
            pts = [next(p for p in points if math.isclose(p[0]["lmbda"], lm, rel_tol=1e-9))
                   for lm in ladder]
            curve = replace(learned, name=f"per-lambda-{name}", points=[p[0] for p in pts],
                            bpp=[p[1] for p in pts], values=[p[2] for p in pts])
            bd = _bd(env, curve)
            scored[name] = {"ladder": ladder, "bd_rate_payload": bd["value"],
                            "reason": bd["reason"], "bpp_payload": curve.bpp,
                            "values": curve.values}
        spec = get_task(task)
        best, why = pick_ladder(scored, env.uncompressed, spec.higher_is_better)
        summary[task] = {"metric": spec.metric, "candidates": scored,
                         "uncompressed": env.uncompressed,
                         "envelope": {"bpp_payload": env.bpp, "values": env.values},
                         "choice": {"name": best, "ladder": scored[best]["ladder"],
                                    "anchors": [float(a) for a in TASK_RATE_LAMBDAS[task]],
                                    "why": why}}
        log(f"{task}: {summary[task]['choice']}")
    return summary


def choose_wide(args, task: str, root: Path, log) -> dict:
    """The first rule (one wide-grid variable-rate model) for one task on the validation scenes."""
    now = TASK_RATE_LAMBDAS[task]
    grid = geometric(now[0] / 4, now[-1] * 2, ANCHORS)
    base = train_cached(["experiment=quick", f"task={task}", "model.compression=false",
                         f"train.max_steps={args.steps}"], root, settings=RATE_SETTINGS,
                        retrain=args.retrain, log=log)[2]
    wide = train_cached(["experiment=quick_vr", f"task={task}",
                         "model.rate_lambdas=[" + ",".join(map(repr, grid)) + "]",
                         "name=vr-wide", f"train.max_steps={args.steps}"], root,
                        settings=RATE_SETTINGS, retrain=args.retrain, log=log)[2]
    result = compare([wide], [base], codecs=args.codecs.split(","),
                     scales=[float(s) for s in args.scales.split(",")],
                     preprocessor="none", images=args.images, size=args.size,
                     out=args.out / task, split=args.split, seed=args.seed, log=log,
                     metric_options={"boundary": {"n_thresholds": 19}})
    learned = next(c for c in result.curves[task] if c.kind == "learned").at_rate("payload")
    env = next(c for c in result.curves[task] if c.name == ENVELOPE and c.rate == "payload")
    # the sweep's rates are the anchors: each point is the model at one grid lambda
    by_lambda = sorted(zip([pt["lmbda"] for pt in learned.points], learned.bpp,
                           learned.values))
    assert all(math.isclose(a, g, rel_tol=1e-6) for (a, _, _), g in zip(by_lambda, grid))
    spec = get_task(task)
    c = choose(grid, [b for _, b, _ in by_lambda], [v for _, _, v in by_lambda],
               spec.higher_is_better, min(env.bpp), args.flat, args.min_span)
    row = {"metric": spec.metric, "grid": grid, "bpp_payload": [b for _, b, _ in by_lambda],
           "values": [v for _, _, v in by_lambda], "uncompressed": env.uncompressed,
           "envelope": {"bpp_payload": env.bpp, "values": env.values}, "choice": c}
    log(f"{task}: ladder {c['ladder']}, anchors {c['anchors']} ({c['why_lowest']}; "
        f"{c['why_highest']})")
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=ORDER)
    p.add_argument("--steps", type=int, default=600, help="steps of the wide model and baseline")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--codecs", default=",".join(c for c in DEFAULT_CODECS
                                                if c in available_codecs()))
    p.add_argument("--scales", default="1,0.5,0.25")
    p.add_argument("--flat", type=float, default=0.01)
    p.add_argument("--min-span", type=float, default=8.0)
    p.add_argument("--rule", choices=("wide", "candidates", "per-lambda"), default="wide",
                   help="wide: the first rule (one wide-grid model); candidates: the second; "
                   "per-lambda: the per-lambda ladders")
    p.add_argument("--ladder-steps", type=int, default=DEFAULT_STEPS,
                   help="--rule per-lambda: steps of each per-lambda model (icm demo's)")
    p.add_argument("--first-rule", type=Path, default=None,
                   help="--rule candidates: a first-rule result whose anchors are a candidate")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "choose_ladders")
    p.add_argument("--summary", type=Path, default=None)
    args = p.parse_args(argv)
    t0, log, tasks = start_choice(args.split, args.tasks)
    root = RESULTS / "ra_runs"
    if args.rule == "per-lambda":
        summary = choose_per_lambda(args, tasks, root, log)
        rule = __doc__.split("``--rule per-lambda`` ")[1].split("\n\nThe first rule")[0]
        name = f"ladders_{args.split}_per_lambda.json"
    elif args.rule == "candidates":
        first = json.loads(args.first_rule.read_text())["summary"] if args.first_rule else None
        summary = {}
        for task in tasks:
            summary[task] = choose_candidates(args, task, root, log, first)
            log(f"{task}: {summary[task]['choice']}")
        rule = (__doc__.split("``--rule candidates`` (the second rule): ")[1]
                .split("\n\n``--rule per-lambda``")[0])
        name = f"ladders_{args.split}_candidates.json"
    else:
        summary = {task: choose_wide(args, task, root, log) for task in tasks}
        rule = __doc__.split("3. the rule")[1].split("``--rule candidates``")[0]
        name = f"ladders_{args.split}.json"
    doc = results_doc(args, t0, rule=rule.strip(), summary=summary)
    write_results(doc, args.summary or RESULTS / name, log)
    return doc

if __name__ == "__main__":
    main()
