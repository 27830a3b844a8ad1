"""Atomic writes: a result appears whole under its final name, or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from UHarmonyLib.errors import InputError


def umask_mode(mode: int) -> int:
    """`mode` as filtered by the process umask (mkstemp/mkdtemp create owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def check_writable(path: Path) -> None:
    """Fail before any work if `path` cannot be created (missing or read-only folder)."""
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path with the same suffixes; rename it onto `path` on success."""
    path = Path(path)
    check_writable(path)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, umask_mode(0o666))
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `path` (which must not exist) on success."""
    path = Path(path)
    if path.exists():
        raise InputError(f"{path}: already exists; choose a new name (bundles are never overwritten)")
    if not path.parent.is_dir():
        raise InputError(f"{path}: parent folder {path.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o777))
        for f in tmp.iterdir():
            os.chmod(f, umask_mode(0o666))
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
