"""benchmarks/results/rate_modes_<split>.json (bench_rate_modes.py) -> two tables that
scripts/docs_tables.py puts on the README and the measurements page:

- ``summary/rate_goal.json``: BD-rate of each training mode against the best classical
  pipeline (JPEG, WebP, AVIF, HEVC and VVC at 1, 1/2, 1/4 + a baseline of the same budget),
  payload rate (file rate beside the variable-rate model's);
- ``summary/rate_modes.json``: variable rate against per-lambda models (BD-rate, task-file
  parameters, encode and decode time, training seconds).

    python scripts/rate_modes_table.py --goal GOAL.json [...] --modes MODES.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"


def _bd(entry: dict) -> str:
    """A BD-rate cell: the number, or n/a with why (the curves cannot be compared)."""
    if entry.get("value") is not None:
        return f"{entry['value']:+.1f} %"
    why = entry.get("reason") or ""
    for long, short in (("the anchor curve has", "reference has"), ("the test curve has", "curve has"),
                        (" useful point(s); BD-rate needs 2", " useful point"),
                        ("the curves share too little of their accuracy range", "shared accuracy range")):
        why = why.replace(long, short)
    return f"n/a ({why})" if why else "n/a"


def results_main(argv: list[str], doc: str, make, name, script: str) -> int:
    """The ``main`` of a script that turns committed results files (its arguments) into
    ``summary/<name>.json`` with ``make(paths)``, recording the command that remakes it
    (``name``: a string, or a function of the paths)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--summary-dir", type=Path, default=SUMMARY)
    args = p.parse_args(argv)
    table = make(args.results)
    table["generated_by"] = (f"python scripts/{Path(script).name} "
                             + " ".join(r.as_posix() for r in args.results))
    out = args.summary_dir / f"{name if isinstance(name, str) else name(args.results)}.json"
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def _at(vs: dict, mode: str, rate: str) -> dict:
    return vs.get(mode, {}).get(rate, {})


def _source(doc: dict) -> str:
    prov = doc["provenance"]
    commands = doc.get("commands") or [prov["command"]]
    return "; ".join(commands) + f" (commit {prov['commit'][:10]})"


def goal_table(doc: dict) -> dict:
    rows = []
    steps = doc["args"]["steps"]
    for task, r in doc["summary"].items():
        vs = r["vs_best_classical"]
        rows.append([f"{task} {r['metric']}", _bd(_at(vs, "per-lambda", "payload")),
                     _bd(_at(vs, "vr-steps", "payload")), _bd(_at(vs, "vr-time", "payload")),
                     _bd(_at(vs, "vr-time", "file")), f"{r['uncompressed']:.4g}"])
    budget = next(iter(doc["summary"].values()))["budget_steps"]  # --budget, or 3 x steps
    return {"title": f"Learned codec vs the best classical pipeline, {doc['held_out']}",
            "source": _source(doc),
            "columns": [{"name": "task"},
                        {"name": f"per-lambda, 3 x {steps} steps"},
                        {"name": f"variable rate, {steps} steps"},
                        {"name": f"variable rate, {budget} steps"},
                        {"name": "same, file rate"},
                        {"name": f"uncompressed ({budget} steps)"}],
            "rows": rows}


def modes_table(doc: dict) -> dict:
    rows = []
    for task, r in doc["summary"].items():
        if "coding_time" not in r:  # a run without both modes
            continue
        t = r["train_seconds"]
        per = sum(v for v in t["per-lambda"] if v is not None) if all(t["per-lambda"]) else None
        ct = r["coding_time"]
        rows.append([f"{task} {r['metric']}", _bd(r["vs_per_lambda_payload"].get("vr-steps", {})),
                     _bd(r["vs_per_lambda_payload"].get("vr-time", {})),
                     r["task_file_params"]["ratio"],
                     ct["encode_ratio_variable_over_per_lambda"],
                     ct["decode_ratio_variable_over_per_lambda"],
                     "n/a" if per is None or t["vr-time"][0] is None
                     else f"{per:.0f} / {t['vr-time'][0]:.0f}"])
    steps = doc["args"]["steps"]
    return {"title": f"Variable rate against per-lambda models, {doc['held_out']}",
            "source": _source(doc),
            "columns": [{"name": "task"},
                        {"name": f"BD-rate, equal steps per model ({steps})"},
                        {"name": f"BD-rate, equal total steps "
                                 f"({next(iter(doc['summary'].values()))['budget_steps']})"},
                        {"name": "task-file parameters (ratio)", "format": ".4f"},
                        {"name": "encode time (ratio)", "format": ".2f"},
                        {"name": "decode time (ratio)", "format": ".2f"},
                        {"name": "training s, 3 per-lambda / 1 variable"}],
            "rows": rows}


def merged(paths: list[Path]) -> dict:
    """Several results of one protocol run on different tasks (e.g. in two processes) as one:
    their summaries joined, the first one's provenance and arguments (each run's own command
    is kept under ``commands``)."""
    docs = [json.loads((ROOT / p).read_text()) for p in paths]
    out = dict(docs[0])
    out["summary"] = {t: r for d in docs for t, r in d["summary"].items()}
    out["commands"] = [d["provenance"]["command"] for d in docs]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--goal", type=Path, nargs="+",
                   default=[Path("benchmarks/results/rate_modes_test.json")],
                   help="bench_rate_modes results for the goal table (joined by task)")
    p.add_argument("--modes", type=Path, nargs="+", default=None,
                   help="bench_rate_modes results for the mode comparison (default: --goal)")
    p.add_argument("--summary-dir", type=Path, default=SUMMARY)
    p.add_argument("--name", default="rate", help="summaries <name>_goal.json, <name>_modes.json")
    args = p.parse_args(argv)
    command = ("python scripts/rate_modes_table.py --goal "
               + " ".join(g.as_posix() for g in args.goal)
               + (" --modes " + " ".join(m.as_posix() for m in args.modes) if args.modes else "")
               + ("" if args.name == "rate" else f" --name {args.name}"))
    for name, doc, make in ((f"{args.name}_goal", merged(args.goal), goal_table),
                            (f"{args.name}_modes", merged(args.modes or args.goal), modes_table)):
        table = make(doc)
        out = args.summary_dir / f"{name}.json"
        out.write_text(json.dumps({"provenance": doc["provenance"], **table,
                                   "generated_by": command}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
