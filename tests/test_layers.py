"""The package's imports run one way: each module imports only its own layer or lower ones, the
library never imports the command line or the widgets, and no modules import each other.

The layers, lowest first (icm_core/<package>):
    errors, files -> config, conf -> tasks -> data -> models -> codec
    -> baselines, evaluation, viz -> training -> studies, inspection, workspace -> cli
Every import counts, at the top of a module or inside a function, except those under
``if TYPE_CHECKING:`` (annotations only).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import icm_core

ROOT = Path(icm_core.__file__).parent
LAYERS = [("errors", "files"), ("conf", "config"), ("tasks",), ("data",), ("models",), ("codec",),
          ("baselines", "evaluation", "viz"), ("training",), ("studies", "inspection", "workspace"),
          ("cli",)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str | None:
    """icm_core.<unit>[...] -> unit (a package or a top-level module); None for icm_core itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "icm_core" else None


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """The icm_core modules ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("icm_core", "widgets"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] not in ("icm_core", "widgets"):
                continue
            for a in node.names:  # `from icm_core.x import y` may import the module x.y
                sub = f"{mod}.{a.name}"
                is_module = (root.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (root.parent / Path(*sub.split(".")) / "__init__.py").exists()
                found.add(sub if is_module else mod)
    return found


MODULES = {(_module_name(p)): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES} - {None}
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module):
    mine = _unit(module)
    for target in sorted(imports_of(MODULES[module])):
        assert not target.startswith("widgets"), f"{module} imports the widgets ({target})"
        theirs = _unit(target)
        if mine is None or theirs is None:
            continue
        assert RANK[theirs] <= RANK[mine], (
            f"{module} (layer {mine}) imports {target} (layer {theirs}, higher): move the code "
            "down or the import up")


def test_no_import_cycles():
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the modules
    for m in graph:
        if MODULES[m].name == "__init__.py":
            graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def upward_imports(root: Path) -> list[tuple[str, str]]:
    """(module, target) pairs where a module of the tree at ``root`` imports a higher layer."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = _unit(_module_name(path, root))
        for target in imports_of(path, root):
            theirs = _unit(target)
            if me and theirs and RANK[theirs] > RANK[me]:
                bad.append((_module_name(path, root), target))
    return bad


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk must catch an upward import, also one hidden in a function, but not one under
    TYPE_CHECKING: prove it on a made-up tree."""
    pkg = tmp_path / "icm_core"
    (pkg / "models").mkdir(parents=True)
    (pkg / "training").mkdir()
    for d in (pkg, pkg / "models", pkg / "training"):
        (d / "__init__.py").write_text("")
    (pkg / "training" / "trainer.py").write_text("from icm_core.models import icm\n")
    (pkg / "models" / "icm.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from icm_core.training.trainer import Trainer\n"
        "def f():\n    from icm_core.training import trainer\n")
    assert upward_imports(pkg) == [("icm_core.models.icm", "icm_core.training.trainer")]
    (pkg / "models" / "icm.py").write_text("from icm_core.errors import ICMError\n")
    assert upward_imports(pkg) == []


def test_the_readme_names_modules_that_exist():
    """README's "What is where" names each module of the layout; every one exists, and the
    functions its example imports come from the paths it gives."""
    readme = (ROOT.parent / "README.md").read_text()
    table = readme.split("## What is where", 1)[1].split("```", 1)[0]
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) < 4 or not cells[2].strip().startswith("`icm_core/"):
            continue
        package = ROOT.parent / cells[2].split("`")[1]
        names = re.sub(r"\([^)]*\)", "", cells[3])  # what a module holds, in parentheses
        for name in (n.strip("` ") for n in names.split(",")):
            word = name.split(" ")[0].strip("`")
            if word and word.isidentifier() and (package / "__init__.py").exists():
                found = (package / f"{word}.py").exists() or (package / word / "__init__.py").exists()
                assert found, f"README names {package.name}/{word}, which does not exist"
    example = readme.split("```python", 1)[1].split("```", 1)[0]
    for line in example.splitlines():
        if line.startswith("from icm_core"):
            exec(line, {})  # noqa: S102 (the README's own import lines)
