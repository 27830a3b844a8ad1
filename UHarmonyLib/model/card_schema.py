"""The model card's schema: every key the engine reads, its type and its range, checked before any use.

Why by hand and not jsonschema: the Slicer panel reads cards in Slicer's own Python, before
any package is installed. A card that fails here is refused with the key named (exit 3),
instead of surfacing later as a TypeError or a 824 GB allocation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Optional

# None when the value is fine, else what is wrong; Optional, not "str | None": Slicer 5.8 runs Python 3.9
Check = Callable[[Any], Optional[str]]  # noqa: UP045

MAX_PATCH = 512  # voxels per axis; a 512^3 float window already needs gigabytes
MAX_BATCH = 64
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
SHA256 = re.compile(r"[0-9a-f]{64}")
UNSAFE_NAME = re.compile(r"[/\\:\x00]|^\.\.?$")  # a path separator, a drive colon, NUL, '.' or '..'


def number(lo: float | None = None, hi: float | None = None, hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{v!r} is not a finite number"
        if (lo is not None and v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            return f"{v!r} is outside [{lo}, {hi}{')' if hi_open else ']'}"
        return None

    return check


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{v!r} is not an integer"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"{v!r} is outside [{lo}, {hi}]"
        return None

    return check


def text(pattern: re.Pattern[str] | None = None, safe_name: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v.strip():
            return f"{v!r} is not a non-empty string"
        if pattern is not None and not pattern.fullmatch(v):
            return f"{v!r} does not match {pattern.pattern}"
        if safe_name and UNSAFE_NAME.search(v):
            return f"{v!r} is not a plain name (no path separators, '.' or '..')"
        return None

    return check


def any_text(v: Any) -> str | None:
    return None if isinstance(v, str) else f"{v!r} is not a string"


def mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"{v!r} is not an object"


def list_of(item: Check, length: int | None = None, nonempty: bool = True, unique: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or (nonempty and not v):
            return f"{v!r} is not a {'non-empty ' if nonempty else ''}list"
        if length is not None and len(v) != length:
            return f"{v!r} must have {length} entries"
        for i, x in enumerate(v):
            problem = item(x)
            if problem:
                return f"entry {i}: {problem}"
        if unique and len({repr(x) for x in v}) != len(v):
            return f"{v!r} has repeated entries"
        return None

    return check


# dotted key -> (required, check); list-of-object keys are checked per entry by ENTRY_SCHEMAS
TOP_SCHEMA: dict[str, tuple[bool, Check]] = {
    "name": (True, text(safe_name=True)),
    "version": (True, integer(1)),
    "title": (False, any_text),
    "description": (False, any_text),
    "architecture": (True, mapping),
    "preprocessing": (True, mapping),
    "preprocessing.orientation": (False, text()),
    "preprocessing.spacing": (True, list_of(number(1e-3, 100.0), length=3)),
    "preprocessing.intensity": (False, mapping),
    "inference": (True, mapping),
    "inference.patch_size": (True, list_of(integer(1, MAX_PATCH))),
    "inference.overlap": (False, number(0.0, 1.0, hi_open=True)),
    "inference.blend": (False, text()),
    "inference.batch_size": (False, integer(1, MAX_BATCH)),
    "inference.familiar_entropy": (False, number(0.0)),
    "inference.familiar_distance": (False, number(0.0)),
    "inference.mirror_axes": (False, list_of(integer(0, 2), nonempty=False, unique=True)),
    "inference.expected_seconds": (False, mapping),
    "provenance": (False, mapping),
    "metrics": (False, mapping),
    "files": (False, mapping),
}
ENTRY_SCHEMAS: dict[str, dict[str, tuple[bool, Check]]] = {
    "channels": {"name": (True, text()), "modality": (True, text())},
    "labels": {
        "value": (True, integer(1, 255)),
        "name": (True, text()),
        "color": (True, text(HEX_COLOR)),
        "terminology": (False, any_text),
    },
    "sites": {"name": (True, text(safe_name=True))},
}
FILE_ENTRY: dict[str, tuple[bool, Check]] = {"sha256": (True, text(SHA256)), "bytes": (True, integer(0))}

_MISSING = object()


def _lookup(card: dict[str, Any], dotted: str) -> Any:
    value: Any = card
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _check_object(obj: dict[str, Any], schema: dict[str, tuple[bool, Check]], where: str) -> str | None:
    for key, (required, check) in schema.items():
        value = _lookup(obj, key)
        if value is _MISSING:
            if required:
                return f"missing '{where}{key}'"
            continue
        problem = check(value)
        if problem:
            return f"'{where}{key}': {problem}"
    return None


def schema_problem(card: dict[str, Any]) -> str | None:
    """The first key of `card` whose type or range is wrong, in words; None if every key is fine."""
    problem = _check_object(card, TOP_SCHEMA, "")
    if problem:
        return problem
    for key, schema in ENTRY_SCHEMAS.items():
        entries = card.get(key)
        if not isinstance(entries, list) or not entries:
            return f"'{key}' must be a non-empty list"
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                return f"'{key}[{i}]': {entry!r} is not an object"
            problem = _check_object(entry, schema, f"{key}[{i}].")
            if problem:
                return problem
    for name, meta in (card.get("files") or {}).items():
        if UNSAFE_NAME.search(name) or name.startswith("."):
            return f"'files': {name!r} is not a plain file name inside the bundle"
        if not isinstance(meta, dict):
            return f"'files.{name}': {meta!r} is not an object"
        problem = _check_object(meta, FILE_ENTRY, f"files.{name}.")
        if problem:
            return problem
    return None
