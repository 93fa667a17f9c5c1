"""Files in and out: written to a temporary name beside the target and renamed (no half files);
the hash of the package's own sources (what code made a result)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
SOURCE_SUFFIXES = (".py", ".yaml", ".safetensors")
"""What ``source_hash`` reads: the code, the Hydra configs and the shipped weights, the three
things that decide what a training run produces."""


def _umask() -> int:
    """The process umask: Python reads it only by setting it, so set it and put it back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` atomically.

    The file gets the mode an ordinary ``open`` would give (0666 less the umask), not the
    0600 of ``mkstemp`` (or of writers such as safetensors that replace the temporary file):
    a checkpoint in a shared folder stays readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))




def source_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The files ``source_hash`` reads under ``root`` (default: the ``icm_core`` package), by
    their path relative to it: every ``SOURCE_SUFFIXES`` file, none under ``__pycache__`` or a
    hidden folder, no hidden file (an editor's swap or lock file)."""
    root = Path(root) if root is not None else PACKAGE_ROOT
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if (p.suffix in SOURCE_SUFFIXES and p.is_file()
                and not any(part == "__pycache__" or part.startswith(".") for part in rel.parts)):
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def source_hash(root: str | os.PathLike | None = None) -> str:
    """sha256 (hex) of the sources under ``root`` (default: the ``icm_core`` package).

    Each file of ``source_files`` adds its relative path, its length and its bytes, in path
    order: the hash changes when a file is edited, added, removed or renamed, and is the same
    on every machine and checkout for the same tree (it reads no time stamp, no absolute
    path, no compiled file). The benchmarks' training cache stores it with every run, so a
    result is never scored on a model trained by older code.
    """
    root = Path(root) if root is not None else PACKAGE_ROOT
    h = hashlib.sha256()
    for p in source_files(root):
        data = p.read_bytes()
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
