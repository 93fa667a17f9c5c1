"""benchmarks/results/train_speed.json (bench_train_speed.py) -> the table of where a quick
training step's time goes and the steps/s before and after the scene cache,
benchmarks/results/summary/train_speed.json (README and measurements page).

    python scripts/speed_table.py benchmarks/results/train_speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary"
PARTS = ("render scenes", "forward (model)", "backward", "optimizer", "other")


def table(doc: dict) -> dict:
    rows = []
    for name, prof in doc["profile"].items():
        rows.append([f"profile, {prof['steps']} steps in-process ({name})",
                     *[100 * prof["shares"].get(p, 0.0) for p in PARTS],
                     prof["steps"] / prof["seconds"]])
    fit = doc["fit"]
    for when, key in (("before: data.cache_scenes=false", "steps_per_second_before"),
                      ("after: data.cache_scenes=true", "steps_per_second_after")):
        rows.append([f"whole training, {fit['steps']} steps, one loader worker ({when})",
                     *[None] * len(PARTS), fit[key]])
    prov = doc["provenance"]
    return {"title": "Where a quick training step's time goes, and steps/s before and after",
            "source": f"{prov['command']} (commit {prov['commit'][:10]}, "
                      f"{prov['machine']['cpu_count']}-core CPU, one torch thread)",
            "columns": [{"name": "measurement"},
                        *[{"name": f"{p} %", "format": ".0f"} for p in PARTS],
                        {"name": "steps/s", "format": ".2f"}],
            "rows": rows}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="?",
                   default=Path("benchmarks/results/train_speed.json"))
    p.add_argument("--summary-dir", type=Path, default=SUMMARY)
    args = p.parse_args(argv)
    doc = json.loads((ROOT / args.results).read_text())
    out = args.summary_dir / "train_speed.json"
    out.write_text(json.dumps({**table(doc), "generated_by":
                               f"python scripts/speed_table.py {args.results.as_posix()}"},
                              indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
