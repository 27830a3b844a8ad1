"""Atomic writes: a result appears whole under its final name, or not at all.

Missing output folders are created when the result is written (not when the path is
checked, so a refused command leaves nothing behind), and removed again if the write
fails. Every temporary file is flushed to disk and checked before it replaces anything:
a full disk or a file size limit makes some writers (ITK's) produce a short file
without raising, and that must never be renamed over a good result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from UHarmonyLib.errors import InputError


def umask_mode(mode: int) -> int:
    """`mode` as filtered by the process umask (mkstemp/mkdtemp create owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def check_creatable(folder: Path, what: Path) -> None:
    """Fail if `folder` (for output `what`) can neither be written into nor created.

    A missing folder is fine when its nearest existing ancestor is a writable folder;
    a file standing where a folder must be is refused.
    """
    existing = folder if str(folder) else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what}: output folder {existing} is not writable")


def check_writable(path: Path) -> None:
    """Fail before any work if `path` cannot be created (read-only folder, a file in the way)."""
    path = Path(path)
    check_creatable(path.parent, path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name")
    if path.exists() and not path.is_file():  # a FIFO would block the write, a device would swallow it
        raise InputError(f"{path}: is not a regular file (a pipe, socket or device); choose a file name")


@contextlib.contextmanager
def _parents_made(folder: Path, what: Path) -> Iterator[None]:
    """Create `folder` and its missing ancestors for the body; remove them again if it fails."""
    created = [p for p in [folder, *folder.parents] if str(p) and not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{what}: cannot create folder {folder} ({e.strerror or e})") from e
    try:
        yield
    except BaseException:
        for made in created:
            with contextlib.suppress(OSError):  # one that something else has filled meanwhile stays
                made.rmdir()
        raise


def _kept(path: Path) -> str:
    return "The previous file is kept." if path.exists() else "Nothing was written."


def _flush_to_disk(path: Path) -> None:
    """fsync: some file systems (NFS, quotas) report a full disk only here, not on write."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows syncs only a writable handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, verify: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path with the same suffixes; rename it onto `path` on success.

    `verify(tmp)` says what is wrong with the written file (None when it is whole); a
    write error or a failed check raises one InputError and leaves `path` untouched.
    """
    path = Path(path)
    check_writable(path)
    with _parents_made(path.parent, path):
        suffix = "".join(path.suffixes) or ".tmp"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror or e}). {_kept(path)}") from e
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            try:
                yield tmp_path
                _flush_to_disk(tmp_path)
            except OSError as e:
                raise InputError(f"{path}: cannot write ({e.strerror or e}). {_kept(path)}") from e
            problem = verify(tmp_path) if verify is not None else None
            if problem is not None:
                raise InputError(
                    f"{path}: writing failed, the file written is damaged: {problem}; disk full? {_kept(path)}"
                )
            os.chmod(tmp_path, umask_mode(0o666))
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` as UTF-8, read it back before the rename: a short file never replaces a whole one."""
    data = text.encode("utf-8")

    def verify(tmp: Path) -> str | None:
        return None if tmp.read_bytes() == data else f"it holds {tmp.stat().st_size} of {len(data)} bytes"

    with atomic_path(Path(path), verify) as tmp:
        tmp.write_bytes(data)


def _process_gone(pid: int) -> bool:
    """Whether no process has this id (POSIX; elsewhere nothing is called gone, so nothing is removed)."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def remove_stale_folders(folder: Path) -> list[Path]:
    """Remove the temporary folders of atomic_dir writes whose process was killed; returns what was removed.

    A SIGKILL (or a power cut) skips the clean-up, so the next write into the same folder does it: each
    temporary folder carries its writer's process id, and only folders of processes that no longer exist go.
    """
    removed = []
    for tmp in Path(folder).glob(f".*{_TMP_TAG}*-*") if Path(folder).is_dir() else []:
        pid = tmp.name.split(_TMP_TAG, 1)[1].split("-", 1)[0]
        if tmp.is_dir() and pid.isdigit() and _process_gone(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


_TMP_TAG = "-uharmony-pid"  # `.NAME-uharmony-pid<PID>-<random>`: a temporary folder of atomic_dir


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `path` (which must not exist) on success."""
    path = Path(path)
    if path.exists():
        raise InputError(f"{path}: already exists; choose a new name (bundles are never overwritten)")
    check_creatable(path.parent, path)
    remove_stale_folders(path.parent)
    with _parents_made(path.parent, path):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_TAG}{os.getpid()}-", dir=path.parent))
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror or e}). Nothing was written.") from e
        try:
            try:
                yield tmp
                for f in tmp.iterdir():
                    _flush_to_disk(f)
            except OSError as e:
                raise InputError(f"{path}: cannot write ({e.strerror or e}). Nothing was written.") from e
            os.chmod(tmp, umask_mode(0o777))
            for f in tmp.iterdir():
                os.chmod(f, umask_mode(0o666))
            os.rename(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
