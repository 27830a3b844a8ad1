"""The server's work folder: what the browser edition keeps between sessions, one subfolder per kind."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, fallback: str = "case") -> str:
    """A file-name-safe form of a case, model or site name (names come from uploads and users)."""
    return UNSAFE.sub("_", text).strip("._-") or fallback


@dataclass(frozen=True)
class Workspace:
    """`uploads/` (files sent from browsers), `runs/` (each segmentation's engine result), `sets/` (the local
    add-site sets), `exports/` (segmentations saved for download)."""

    root: Path

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def sets(self) -> Path:
        return self.root / "sets"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def new_folder(self, parent: Path, name: str) -> Path:
        """A new, empty folder `name`, `name-2`, ... under `parent`: nothing earlier is ever overwritten."""
        parent.mkdir(parents=True, exist_ok=True)
        stem, n = slug(name), 1
        while True:
            folder = parent / (stem if n == 1 else f"{stem}-{n}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                n += 1
