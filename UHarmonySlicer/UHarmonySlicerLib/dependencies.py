"""What the engine needs in Slicer's Python, checked without importing it, installed without replacing Slicer's own.

Slicer ships its own builds of numpy, SimpleITK and vtk, and PyTorch comes from the
PyTorch extension (which picks the CUDA build for the machine's driver). A plain
`pip install monai` could silently replace any of them, so every install runs with a
constraints file pinning the versions already present.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

TORCH_FLOOR = "2.3"
TORCH_REQUIREMENT = f">={TORCH_FLOOR}"  # what the PyTorch extension is asked for
PROTECTED = ("numpy", "SimpleITK", "vtk", "torch")
LINE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[A-Za-z0-9,._-]+\])?\s*>=\s*(?P<floor>[0-9.]+)")


@dataclass(frozen=True)
class Requirement:
    """One `name[extras]>=version` line of requirements.txt."""

    name: str
    floor: str
    text: str


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version ("2.13.0+cpu" -> (2, 13, 0)), enough to compare with a floor."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(parts)


def read_requirements(path: Path) -> list[Requirement]:
    """Parse requirements.txt; only version floors are allowed (a ceiling would fight Slicer's packages)."""
    requirements = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected 'name>=version', got {line!r}")
        requirements.append(Requirement(match["name"], match["floor"], line))
    return requirements


def installed_version(name: str) -> str | None:
    importlib.invalidate_caches()  # a package pip has just installed must be seen
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfied(name: str, floor: str) -> bool:
    version = installed_version(name)
    return version is not None and version_tuple(version) >= version_tuple(floor)


def missing(requirements: list[Requirement]) -> list[Requirement]:
    """The requirements that are absent or older than their floor."""
    return [r for r in requirements if not satisfied(r.name, r.floor)]


def torch_missing() -> bool:
    return not satisfied("torch", TORCH_FLOOR)


def protected_constraints() -> list[str]:
    """`name==version` for each protected package present, so pip keeps them exactly as they are."""
    return [f"{name}=={version}" for name in PROTECTED if (version := installed_version(name)) is not None]


def pip_arguments(lines: list[str], constraints_file: Path) -> list[str]:
    """Arguments for `pip install` of requirement lines (Slicer's `slicer.util.pip_install` takes this list)."""
    return [*lines, "--constraint", str(constraints_file)]
