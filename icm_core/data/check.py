"""``icm data check``: what a dataset folder holds and what is missing or malformed.

``check_dataset(root, dataset)`` scans every split (the loaders' own scan, so the loaders refuse
exactly what this reports) and returns a ``DataReport``: image and label counts per split and
task, and every problem by its path relative to ``root``, its task and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from icm_core.data.base import Problem
from icm_core.data.folder import scan_folder
from icm_core.data.hf import HFDataset, load_any
from icm_core.data.registry import get_dataset
from icm_core.errors import DatasetError

SPLITS = ("train", "val")


@dataclass
class DataReport:
    """The result of a check: ``ok`` when no file is missing or malformed."""

    root: str
    dataset: str
    layout: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> key -> count
    problems: list[tuple[str, Problem]] = field(default_factory=list)  # (split, problem)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def missing(self, task: str | None = None) -> list[str]:
        """Paths (relative to root) of the problems, of one task or all."""
        return [p.path for _s, p in self.problems if task is None or p.task == task]

    def format(self) -> str:
        lines = [f"{self.dataset} at {self.root} ({self.layout} layout)"]
        for split, counts in self.counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += [f"  note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  [{split}] {p}" for split, p in self.problems]
        else:
            lines.append("no missing or malformed files")
        return "\n".join(lines)


def check_dataset(root, dataset: str, *, layout: str = "auto", columns=None,
                  labels: str = "nyud") -> DataReport:
    """Scan ``root`` as ``dataset`` (nyud, pascal / pascal_context, hf or folder)."""
    entry = get_dataset(dataset)
    root_p = Path(root).expanduser()
    if entry.name != "hf" and not root_p.is_dir():
        raise DatasetError(f"{root}: not a folder; give the {entry.name} dataset folder")
    if entry.name == "folder":
        scan = scan_folder(root_p)
        report = DataReport(str(root), "folder", scan.layout, notes=scan.notes)
        report.counts["all"] = {"images": len(scan.ids)}
        report.problems = [("all", p) for p in scan.problems]
        return report
    if entry.name == "hf":
        return _check_hf(str(root), columns, labels)
    if entry.cls is None or not hasattr(entry.cls, "scan"):
        raise DatasetError(f"dataset {dataset!r} has no files to check")
    tasks = entry.cls.all_tasks
    options = {"layout": layout} if entry.name == "nyud" else {}
    report = DataReport(str(root), entry.name, "")
    for split in SPLITS:
        scan = entry.cls.scan(root_p, split, tasks, **options)
        report.layout = scan.layout
        report.counts[split] = {"listed": len(scan.ids), **scan.counts(tasks)}
        report.problems += [(split, p) for p in scan.problems]
        report.notes += scan.notes
    return report


def _check_hf(root: str, columns, labels: str) -> DataReport:
    data = load_any(root)
    report = DataReport(root, "hf", "hf")
    splits = [s for s in SPLITS if not isinstance(data, dict) or
              any(n in data for n in (("train",) if s == "train" else ("validation", "val", "test")))]
    for split in splits:
        try:
            ds = HFDataset(root, split, columns=columns, labels=labels, data=data)
        except DatasetError as e:
            report.problems.append((split, Problem(".", "columns", str(e), "malformed")))
            continue
        report.counts[split] = {"rows": len(ds), **{t: len(ds) for t in ds.tasks}}
        for i in range(len(ds)):  # every row decodes into a sample
            try:
                ds.raw(i)
            except DatasetError as e:
                report.problems.append((split, Problem(f"row {i}", "row", str(e), "malformed")))
    if not splits:
        report.notes.append(f"no train/validation split; it has {list(data)}")
    return report
