"""The checks every spec value goes through, each refusal one line naming the file, the site and the key."""

from __future__ import annotations

import json
import math
from typing import Any

from UHarmonyLib.errors import InputError


class Where:
    """Builds the one-line refusal: `FILE: site 'x' (sites[1]): key: problem`."""

    def __init__(self, source: str, prefix: str = "") -> None:
        self.source, self.prefix = source, prefix

    def at(self, part: str) -> Where:
        return Where(self.source, f"{self.prefix}{part}: ")

    def fail(self, problem: str) -> InputError:
        return InputError(f"{self.source}: {self.prefix}{problem}")


def number(value: Any, where: Where, lo: float | None = None, hi: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.fail(f"must be a number, got {json.dumps(value)}")
    if lo is not None and (value <= lo if strict else value < lo):
        raise where.fail(f"must be {'>' if strict else '>='} {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        raise where.fail(f"must be <= {hi:g}, got {value:g}")
    return float(value)


def number_range(value: Any, where: Where, lo: float, hi: float, integer: bool = False, strict: bool = False) -> tuple:
    """`[lo, hi]` (or one number meaning [n, n]) within bounds and ordered."""
    pair = [value, value] if not isinstance(value, list) else value
    if len(pair) != 2:
        raise where.fail(f"must be [low, high], got {json.dumps(value)}")
    if integer and any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise where.fail(f"must be whole numbers, got {json.dumps(value)}")
    a, b = (number(v, where, lo, hi, strict) for v in pair)
    if a > b:
        raise where.fail(f"low {a:g} is above high {b:g}")
    return (int(a), int(b)) if integer else (a, b)


def object_keys(data: Any, allowed: tuple[str, ...], where: Where, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise where.fail(f"{what} must be a JSON object, got {json.dumps(data)[:60]}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise where.fail(f"unknown key '{unknown[0]}' (allowed: {', '.join(allowed)})")
    return data
