"""bench_rate_modes.py results, one lever each -> ``summary/rate_levers.json``, the table
scripts/docs_tables.py puts on the measurements page ("The goal").

A lever is what a run changes against the quick preset, for the learned codec (``--set``) and
for the uncompressed baseline that feeds the classical pipelines (``--set-baseline``). Each
row: the steps, the lever, the variable-rate curve's BD-rate against the best classical pipeline
(payload and file rate), its highest-rate point, the baseline's uncompressed accuracy and the
training's seconds. ``--by-budget`` makes the other table, one row per task with a pair of
columns per training budget (``summary/rate_six.json``).

    python scripts/levers_table.py benchmarks/results/rate_modes_test.json \
        benchmarks/results/rate_lever_256_test.json ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_modes_table import _bd, _source  # noqa: E402  (one formatting of each)

MODE = "vr-time"  # the variable-rate model of the demo's budget


def _setting(overrides: list[str]) -> str:
    return ", ".join(overrides) if overrides else "quick preset"


def lever_rows(doc: dict, path: str) -> list[list]:
    args = doc["args"]
    rows = []
    for task, r in doc["summary"].items():
        if MODE not in r["curves"]:
            continue
        curve, vs = r["curves"][MODE], r["vs_best_classical"][MODE]
        seconds = r["train_seconds"][MODE][0]
        learned = ["anchors " + ", ".join(f"{a:g}" for a in r["anchors"])  # they change
                   + (f" ({Path(args['ladders']).name})" if args.get("ladders") else ""),
                   *(args.get("extra") or [])]
        rows.append([f"{task} {r['metric']}", r["budget_steps"], _setting(learned), _setting(args.get("base_extra") or []),
                     _bd(vs.get("payload", {})), _bd(vs.get("file", {})),
                     f"{curve['values'][-1]:.4g} at {curve['bpp_payload'][-1]:.3f} bpp",
                     f"{r['uncompressed']:.4g}",
                     "cached" if seconds is None else f"{seconds:.0f}",
                     f"{Path(path).name} ({doc['provenance']['commit'][:10]})"])
    return rows


def levers_table(paths: list[Path], title: str = "Levers on the variable-rate model") -> dict:
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    rows = [row for p, d in zip(paths, docs) for row in lever_rows(d, p.as_posix())]
    held = sorted({d["held_out"] for d in docs})
    return {"provenance": docs[0]["provenance"],
            "title": f"{title} ({MODE}), {'; '.join(held)}",
            "source": "; ".join(_source(d) for d in docs),
            "columns": [{"name": "task"}, {"name": "steps"},
                        {"name": "learned codec trained with"}, {"name": "baseline trained with"},
                        {"name": "BD-rate vs best classical (payload)"},
                        {"name": "same, file rate"}, {"name": "highest-rate point"},
                        {"name": "baseline uncompressed"}, {"name": "training s"},
                        {"name": "results"}],
            "rows": rows}


def budgets_table(paths: list[Path], title: str) -> dict:
    """One row per task, two columns per training budget (payload and file BD-rate against
    the best classical pipeline), the anchors each budget's model trained with, the
    uncompressed baseline of the largest budget last. Runs with ``--ladders`` (anchors chosen
    on validation scenes) count: the anchors are the choice, not a lever. Where two files hold
    the same task and budget, the later file's run is the one shown."""
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    cells: dict[str, dict[int, tuple[str, str]]] = {}
    anchors: dict[str, dict[int, str]] = {}
    top: dict[str, tuple[int, str]] = {}
    for d in docs:
        if d["args"].get("extra") or d["args"].get("base_extra"):
            raise ValueError(f"{d['provenance']['command']}: a lever run; --by-budget compares "
                             "budgets of the quick preset")
        for task, r in d["summary"].items():
            if MODE not in r["curves"]:
                continue
            steps, vs = r["budget_steps"], r["vs_best_classical"][MODE]
            name = f"{task} {r['metric']}"
            cells.setdefault(name, {})[steps] = (_bd(vs.get("payload", {})),
                                                 _bd(vs.get("file", {})))
            anchors.setdefault(name, {})[steps] = ", ".join(f"{a:g}" for a in r["anchors"])
            if steps >= top.get(name, (0, ""))[0]:
                top[name] = (steps, f"{r['uncompressed']:.4g}")
    budgets = sorted({s for c in cells.values() for s in c})
    columns = [{"name": "task"}, {"name": "anchors"}]
    for b in budgets:
        columns += [{"name": f"{b} steps, payload"}, {"name": f"{b} steps, file"}]
    columns.append({"name": f"uncompressed ({budgets[-1]} steps)"})

    def anchor_text(task: str) -> str:
        used = anchors[task]
        if len(set(used.values())) == 1:
            return next(iter(used.values()))
        return "; ".join(f"{b}: {a}" for b, a in sorted(used.items()))

    rows = [[task, anchor_text(task),
             *[v for b in budgets for v in c.get(b, ("not run", "not run"))],
             top[task][1] if top[task][0] == budgets[-1] else "not run"]
            for task, c in cells.items()]
    held = sorted({d["held_out"] for d in docs})
    return {"provenance": docs[0]["provenance"], "title": f"{title} ({MODE}), {'; '.join(held)}",
            "source": "; ".join(_source(d) for d in docs),
            "columns": columns, "rows": rows,
            "anchors": {task: {str(b): a for b, a in used.items()}
                        for task, used in anchors.items()}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="+", help="bench_rate_modes.py results")
    p.add_argument("--summary-dir", type=Path, default=SUMMARY)
    p.add_argument("--name", default="rate_levers", help="the summary's name")
    p.add_argument("--title", default="Levers on the variable-rate model")
    p.add_argument("--by-budget", action="store_true",
                   help="one row per task, BD-rates per training budget (quick-preset runs)")
    args = p.parse_args(argv)
    table = (budgets_table(args.results, args.title) if args.by_budget else
             levers_table(args.results, args.title))
    table["generated_by"] = ("python scripts/levers_table.py "
                             + " ".join(r.as_posix() for r in args.results)
                             + ("" if args.name == "rate_levers" else f" --name {args.name}")
                             + ("" if args.title == "Levers on the variable-rate model"
                                else f" --title {shlex.quote(args.title)}")
                             + (" --by-budget" if args.by_budget else ""))
    out = args.summary_dir / f"{args.name}.json"
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
