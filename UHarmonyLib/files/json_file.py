"""Reading a user's JSON file (dataset, spec, parameters) with one-line errors that name it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import InputError


def read_json(path: Path, kind: str, unreadable: str = "not valid JSON") -> Any:
    """The parsed contents of `path`; `kind` names it when missing ("dataset file"), `unreadable` when broken."""
    if not path.is_file():
        raise InputError(f"{path}: {kind} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: {unreadable} ({e})") from e
