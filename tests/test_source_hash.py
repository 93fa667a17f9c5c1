"""icm_core.files.source_hash: the hash of the package sources the benchmark cache keys on."""

import re

from icm_core.files import PACKAGE_ROOT, source_files, source_hash


def _tree(root, files: dict[str, str]):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


SOURCES = {"__init__.py": "", "models/icm.py": "x = 1\n", "conf/config.yaml": "a: 1\n",
           "weights/w.safetensors": "bytes"}


def test_stable_and_independent_of_creation_order_and_location(tmp_path):
    a = _tree(tmp_path / "a", SOURCES)
    b = _tree(tmp_path / "elsewhere" / "b", dict(reversed(list(SOURCES.items()))))
    assert re.fullmatch(r"[0-9a-f]{64}", source_hash(a))
    assert source_hash(a) == source_hash(a) == source_hash(b)
    assert [p.relative_to(a).as_posix() for p in source_files(a)] == [
        "__init__.py", "conf/config.yaml", "models/icm.py", "weights/w.safetensors"]


def test_ignores_caches_hidden_files_and_other_files(tmp_path):
    root = _tree(tmp_path / "pkg", SOURCES)
    before = source_hash(root)
    _tree(root, {"__pycache__/icm.cpython-311.pyc": "compiled", "models/__pycache__/x.py": "y",
                 ".hidden/z.py": "z", "models/.#icm.py": "lock", "notes.txt": "text",
                 "weights/w.card.json": "{}"})
    assert source_hash(root) == before


def test_changes_with_every_source_edit(tmp_path):
    root = _tree(tmp_path / "pkg", SOURCES)
    seen = [source_hash(root)]
    (root / "models/icm.py").write_text("x = 2\n")  # same length, other bytes
    seen.append(source_hash(root))
    (root / "conf/config.yaml").write_text("a: 2\n")
    seen.append(source_hash(root))
    (root / "weights/w.safetensors").write_text("other")
    seen.append(source_hash(root))
    (root / "models/new.py").write_text("")  # an empty new file counts too
    seen.append(source_hash(root))
    (root / "models/new.py").rename(root / "models/renamed.py")
    seen.append(source_hash(root))
    assert len(set(seen)) == len(seen) == 6
    (root / "models/renamed.py").unlink()  # back to the tree before it was added
    assert source_hash(root) == seen[3]


def test_moving_bytes_between_files_changes_it(tmp_path):
    one = _tree(tmp_path / "one", {"a.py": "ab", "b.py": ""})
    two = _tree(tmp_path / "two", {"a.py": "a", "b.py": "b"})
    assert source_hash(one) != source_hash(two)


def test_default_is_the_installed_package():
    assert source_hash() == source_hash(PACKAGE_ROOT)
    names = {p.relative_to(PACKAGE_ROOT).as_posix() for p in source_files()}
    assert {"files.py", "training/trainer.py", "conf/config.yaml"} <= names
    assert not any("__pycache__" in n for n in names)
