"""Synthetic-dataset specs: the JSON format, its validation, and the built-in scenarios.

A spec is `{"sites": [{"name": ..., <site keys>}, ...], "name"?, "description"?,
"defaults"?}`; every site key but the name has a default (DEFAULT_SITE). Anything
wrong is refused with one line naming the file, the site and the key, before any work.
The resolved form (`site_to_json`) is what dataset.json stores, and it parses back to
the same SiteSpec, so a dataset.json written by `uharmony synth` is itself a spec.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from UHarmonyLib.data.synth import CHANNELS, DEFAULT_CONTRAST, REGIONS, TISSUES, LesionSpec, SiteSpec
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.json_file import read_json

GENERATOR = "uharmony synth"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also a file-name prefix: no spaces or slashes
TOP_KEYS = ("sites", "name", "description", "defaults")
REALISTIC = {"bias": 0.1}  # the built-in scenarios' common ground: a mild coil bias everywhere
ANNOTATIONS = ("full", "whole")
OPPOSITE_REGIONS = (("left", "right"), ("anterior", "posterior"), ("deep", "superficial"))

DEFAULT_LESIONS: dict[str, Any] = {
    "count": [1, 3],
    "radius_mm": [5.0, 10.0],
    "edema_ratio": [1.5, 2.0],
    "irregularity": 0.3,
    "region": ["any"],
}
DEFAULT_SITE: dict[str, Any] = {
    "channels": {c: dict(DEFAULT_CONTRAST[c]) for c in CHANNELS},
    "scale": 1.0,
    "offset": 0.0,
    "gamma": 1.0,
    "bias": 0.0,
    "noise": 0.02,
    "blur": 0.0,
    "slice_thickness": None,
    "spacing": None,
    "fov_crop": None,
    "orientation": "RAS",
    "lesions": DEFAULT_LESIONS,
    "deformation_mm": 3.0,
    "annotation": "full",
    "cases": None,
}
SITE_KEYS = ("name", *DEFAULT_SITE)


@dataclass(frozen=True)
class SynthSpec:
    """A resolved spec: where it came from (scenario name or file), and its sites."""

    scenario: str
    name: str
    description: str
    sites: list[SiteSpec]


# ---------------------------------------------------------------- built-in scenarios

_T1_HI = {"csf": 0.10, "gm": 0.50, "wm": 0.90, "core": 0.25, "edema": 0.65}
_T2_LO = {"csf": 0.90, "gm": 0.60, "wm": 0.45, "core": 0.70, "edema": 0.80}
_FLAIR_DARK = {"csf": 0.05, "gm": 0.50, "wm": 0.40, "core": 0.70, "edema": 1.00}
_FLAIR_FLAT = {"csf": 0.25, "gm": 0.60, "wm": 0.52, "core": 0.72, "edema": 0.90}
_T1_BLACK_HOLES = {"csf": 0.15, "gm": 0.55, "wm": 0.85, "core": 0.12, "edema": 0.40}  # a T1-only site sees lesions dark

SCENARIOS: dict[str, dict[str, Any]] = {
    "none": {
        "description": "four identical sites (the no-shift control)",
        "defaults": REALISTIC,
        "sites": [{"name": f"site-{c}"} for c in "abcd"],
    },
    "appearance": {
        "description": "sites differ only in appearance and acquisition; identical anatomy and lesion statistics",
        "defaults": REALISTIC,
        "sites": [
            {"name": "scanner-a"},
            {
                "name": "scanner-b",
                "channels": {"T1": _T1_HI, "T2": _T2_LO, "FLAIR": _FLAIR_DARK},
                "gamma": 0.7,
                "bias": 0.35,
                "noise": 0.04,
                "scale": 300.0,
                "offset": 20.0,
                "spacing": [2.0, 2.0, 4.0],
            },
            {
                "name": "scanner-c",
                "channels": {"FLAIR": _FLAIR_FLAT, "T1": {}, "T2": {}},
                "gamma": 1.4,
                "blur": 1.2,
                "noise": 0.01,
                "scale": 50.0,
                "slice_thickness": 5.0,
            },
            {
                "name": "scanner-d",
                "bias": 0.2,
                "noise": 0.06,
                "scale": 1200.0,
                "offset": -100.0,
                "spacing": [2.5, 2.5, 2.5],
                "orientation": "LPS",
            },
        ],
    },
    "structural": {
        "description": "sites differ only in lesion and anatomy statistics; identical appearance",
        "defaults": REALISTIC,
        "sites": [
            {"name": "cohort-a", "lesions": {"count": [1, 2], "radius_mm": [6, 10], "irregularity": 0.2}},
            {
                "name": "cohort-b",
                "lesions": {"count": [4, 8], "radius_mm": [2.5, 4], "edema_ratio": [1.2, 1.5], "region": "deep"},
                "deformation_mm": 4.0,
            },
            {
                "name": "cohort-c",
                "lesions": {"count": [2, 4], "radius_mm": [3, 6], "irregularity": 0.5, "region": "left"},
                "deformation_mm": 5.0,
            },
            {
                "name": "cohort-d",
                "lesions": {
                    "radius_mm": [4, 7],
                    "edema_ratio": [1.8, 2.5],
                    "irregularity": 0.7,
                    "region": ["superficial", "anterior"],
                },
                "deformation_mm": 1.0,
            },
        ],
    },
    "mixed": {
        "description": "appearance and lesion statistics differ; one FLAIR-less site, one T1-only site, "
        "one site that annotates the whole lesion only",
        "defaults": REALISTIC,
        "sites": [
            {"name": "hospital-a"},
            {
                "name": "hospital-b",
                "channels": ["T1", "T2"],
                "gamma": 0.8,
                "bias": 0.3,
                "noise": 0.03,
                "scale": 500.0,
                "spacing": [2.0, 2.0, 4.0],
                "lesions": {"count": [2, 5], "radius_mm": [3, 6], "region": "deep"},
            },
            {
                "name": "hospital-c",
                "channels": {"T1": _T1_HI, "FLAIR": _FLAIR_DARK},
                "blur": 1.0,
                "noise": 0.05,
                "scale": 80.0,
                "orientation": "LPS",
                "annotation": "whole",
                "lesions": {"count": [1, 2], "radius_mm": [6, 10]},
                "deformation_mm": 4.0,
            },
            {
                "name": "hospital-d",
                "gamma": 1.3,
                "noise": 0.015,
                "scale": 1500.0,
                "offset": 50.0,
                "channels": {"T1": _T1_BLACK_HOLES},
                "orientation": "PIR",
                "fov_crop": [1.0, 1.0, [0.2, 1.0]],
                "lesions": {"irregularity": 0.6},
            },
        ],
    },
}


def scenario_table() -> list[dict[str, Any]]:
    return [{"name": k, "sites": len(v["sites"]), "description": v["description"]} for k, v in SCENARIOS.items()]


# ---------------------------------------------------------------- validation


class _Where:
    """Builds the one-line refusal: `FILE: site 'x' (sites[1]): key: problem`."""

    def __init__(self, source: str, prefix: str = "") -> None:
        self.source, self.prefix = source, prefix

    def at(self, part: str) -> _Where:
        return _Where(self.source, f"{self.prefix}{part}: ")

    def fail(self, problem: str) -> InputError:
        return InputError(f"{self.source}: {self.prefix}{problem}")


def _number(value: Any, where: _Where, lo: float | None = None, hi: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.fail(f"must be a number, got {json.dumps(value)}")
    if lo is not None and (value <= lo if strict else value < lo):
        raise where.fail(f"must be {'>' if strict else '>='} {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        raise where.fail(f"must be <= {hi:g}, got {value:g}")
    return float(value)


def _range(value: Any, where: _Where, lo: float, hi: float, integer: bool = False, strict: bool = False) -> tuple:
    """`[lo, hi]` (or one number meaning [n, n]) within bounds and ordered."""
    pair = [value, value] if not isinstance(value, list) else value
    if len(pair) != 2:
        raise where.fail(f"must be [low, high], got {json.dumps(value)}")
    if integer and any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise where.fail(f"must be whole numbers, got {json.dumps(value)}")
    a, b = (_number(v, where, lo, hi, strict) for v in pair)
    if a > b:
        raise where.fail(f"low {a:g} is above high {b:g}")
    return (int(a), int(b)) if integer else (a, b)


def _keys(data: Any, allowed: tuple[str, ...], where: _Where, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise where.fail(f"{what} must be a JSON object, got {json.dumps(data)[:60]}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise where.fail(f"unknown key '{unknown[0]}' (allowed: {', '.join(allowed)})")
    return data


def _channels(value: Any, where: _Where) -> dict[str, dict[str, float]]:
    if isinstance(value, list):
        value = {c: {} for c in value} if all(isinstance(c, str) for c in value) else value
    if not isinstance(value, dict):
        raise where.fail(f'must be a list of channel names or {{"T1": {{"csf": ...}}, ...}}, got {json.dumps(value)}')
    if not value:
        raise where.fail("a site needs at least one channel")
    out = {}
    for name in value:
        if name not in CHANNELS:
            raise where.fail(f"unknown channel '{name}' (known: {', '.join(CHANNELS)})")
    for name in sorted(value, key=CHANNELS.index):
        table = value[name]
        w = where.at(name)
        if not isinstance(table, dict):
            raise w.fail(f"must be a contrast table {{tissue: signal}}, got {json.dumps(table)}")
        unknown = [t for t in table if t not in TISSUES]
        if unknown:
            raise w.fail(f"unknown tissue '{unknown[0]}' (known: {', '.join(TISSUES)})")
        out[name] = {t: _number(table.get(t, DEFAULT_CONTRAST[name][t]), w.at(t), 0.0, 100.0) for t in TISSUES}
    return out


def _fov(value: Any, where: _Where) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        raise where.fail(f"must be null or 3 entries (R-L, A-P, S-I), got {json.dumps(value)}")
    out = []
    for axis, entry in zip("xyz", value):
        w = where.at(axis)
        if isinstance(entry, list):
            lo, hi = _range(entry, w, 0.0, 1.0)
        else:
            f = _number(entry, w, 0.0, 1.0, strict=True)
            lo, hi = 0.5 - f / 2, 0.5 + f / 2
        if hi - lo < 0.1:
            raise w.fail(f"keeps {hi - lo:.2f} of the field of view; keep at least 0.1")
        out.append((round(lo, 6), round(hi, 6)))
    return tuple(out)


def _orientation(value: Any, where: _Where) -> str:
    code = value.upper() if isinstance(value, str) else ""
    if len(code) != 3 or sorted("RLAPSI".index(c) // 2 for c in code if c in "RLAPSI") != [0, 1, 2]:
        raise where.fail(f"must be a 3-letter code with one of R/L, A/P, S/I each (e.g. RAS, LPS, PIR), got {value!r}")
    return code


def _lesions(value: Any, where: _Where) -> LesionSpec:
    data = {**DEFAULT_LESIONS, **_keys(value, tuple(DEFAULT_LESIONS), where, "lesions")}
    region = data["region"]
    region = [region] if isinstance(region, str) else region
    if not isinstance(region, list) or not region or not all(isinstance(r, str) for r in region):
        raise where.at("region").fail(f"must be a name or a list of names, got {json.dumps(data['region'])}")
    for r in region:
        if r not in REGIONS:
            raise where.at("region").fail(f"unknown region '{r}' (known: {', '.join(REGIONS)})")
    for a, b in OPPOSITE_REGIONS:
        if a in region and b in region:
            raise where.at("region").fail(f"'{a}' and '{b}' cannot both hold")
    region = [r for r in region if r != "any"] or ["any"]
    return LesionSpec(
        count=_range(data["count"], where.at("count"), 0, 50, integer=True),
        radius_mm=_range(data["radius_mm"], where.at("radius_mm"), 0.0, 40.0, strict=True),
        edema_ratio=_range(data["edema_ratio"], where.at("edema_ratio"), 1.0, 4.0),
        irregularity=_number(data["irregularity"], where.at("irregularity"), 0.0, 1.0),
        region=tuple(region),
    )


def parse_site(raw: Any, where: _Where, defaults: dict[str, Any]) -> SiteSpec:
    """One site dict (merged over `defaults`) to a SiteSpec; refuses anything unknown or out of range."""
    raw = _keys(raw, SITE_KEYS, where, "a site")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise where.fail('every site needs a non-empty "name"')
    if not SITE_NAME.match(name):
        raise where.fail(f"site name {name!r} must be letters, digits, '.', '_' or '-' (64 at most)")
    where = _Where(where.source, f"site '{name}' ({where.prefix.rstrip(': ')}): ")
    d = {**DEFAULT_SITE, **defaults, **raw}
    lesions = {**DEFAULT_LESIONS, **defaults.get("lesions", {})}
    lesions.update(_keys(raw.get("lesions", {}), tuple(DEFAULT_LESIONS), where.at("lesions"), "lesions"))
    spacing: tuple[float, float, float] | None = None
    if d["spacing"] is not None:
        values = d["spacing"] if isinstance(d["spacing"], list) else [d["spacing"]] * 3
        if len(values) != 3:
            raise where.at("spacing").fail(f"must be null, one number or [x, y, z] mm, got {json.dumps(d['spacing'])}")
        x, y, z = (_number(s, where.at("spacing"), 0.0, 20.0, strict=True) for s in values)
        spacing = (x, y, z)
    if d["annotation"] not in ANNOTATIONS:
        raise where.at("annotation").fail(f"must be one of {', '.join(ANNOTATIONS)}, got {json.dumps(d['annotation'])}")
    cases = d["cases"]
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int) or not 1 <= cases <= 10000):
        raise where.at("cases").fail(f"must be null or a whole number from 1 to 10000, got {json.dumps(cases)}")
    thick = d["slice_thickness"]
    return SiteSpec(
        name=name,
        channels=_channels(d["channels"], where.at("channels")),
        scale=_number(d["scale"], where.at("scale"), 0.0, strict=True),
        offset=_number(d["offset"], where.at("offset")),
        gamma=_number(d["gamma"], where.at("gamma"), 0.0, 5.0, strict=True),
        bias=_number(d["bias"], where.at("bias"), 0.0, 2.0),
        noise=_number(d["noise"], where.at("noise"), 0.0, 10.0),
        blur=_number(d["blur"], where.at("blur"), 0.0, 20.0),
        slice_thickness=None if thick is None else _number(thick, where.at("slice_thickness"), 0.0, 20.0, strict=True),
        spacing=spacing,
        fov_crop=_fov(d["fov_crop"], where.at("fov_crop")),
        orientation=_orientation(d["orientation"], where.at("orientation")),
        lesions=_lesions(lesions, where.at("lesions")),
        deformation_mm=_number(d["deformation_mm"], where.at("deformation_mm"), 0.0, 20.0),
        annotation=d["annotation"],
        cases=cases,
    )


def parse_spec(data: Any, source: str, scenario: str | None = None) -> SynthSpec:
    """A whole spec (dict) to SynthSpec; `source` names the file (or scenario) in error messages."""
    where = _Where(source)
    if isinstance(data, dict) and str(data.get("generator", "")).startswith(GENERATOR):
        data = {"name": data.get("name", ""), "sites": data.get("sites")}  # a dataset.json of ours
    data = _keys(data, TOP_KEYS, where, "the spec")
    sites = data.get("sites")
    if not isinstance(sites, list) or not sites:
        raise where.fail('"sites" must be a non-empty list of sites')
    defaults = data.get("defaults", {})
    _keys(defaults, tuple(k for k in SITE_KEYS if k != "name"), where.at("defaults"), "defaults")
    if "lesions" in defaults:
        _keys(defaults["lesions"], tuple(DEFAULT_LESIONS), where.at("defaults").at("lesions"), "lesions")
    parsed: list[SiteSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(sites):
        site = parse_site(raw, where.at(f"sites[{i}]"), defaults)
        key = site.name.lower()
        if key in seen:
            raise where.at(f"sites[{i}]").fail(f"duplicate site name '{site.name}' (also sites[{seen[key]}])")
        seen[key] = i
        parsed.append(site)
    name, description = data.get("name", ""), data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise where.fail('"name" and "description" must be strings')
    scenario = scenario or source
    return SynthSpec(
        scenario=scenario, name=name or f"uharmony-synth-{scenario}", description=description, sites=parsed
    )


def load_spec(path: Path) -> SynthSpec:
    path = Path(path)
    data = read_json(path, "spec file", unreadable="not a readable JSON spec")
    return parse_spec(data, str(path), scenario=path.name)


def resolve_scenario(arg: str) -> SynthSpec:
    """A built-in scenario by name, or a JSON spec file (a path, or anything ending in .json)."""
    if arg in SCENARIOS:
        s = SCENARIOS[arg]
        return parse_spec(copy.deepcopy(s), f"scenario '{arg}'", arg)
    if arg.lower().endswith(".json") or Path(arg).exists():
        return load_spec(Path(arg))
    raise InputError(f"unknown scenario '{arg}' (built-in: {', '.join(SCENARIOS)}; or give a SPEC.json file)")


def site_to_json(site: SiteSpec) -> dict[str, Any]:
    """The resolved site as JSON (every key explicit); parse_site reads it back to the same SiteSpec."""
    les = site.lesions
    return {
        "name": site.name,
        "channels": {c: dict(t) for c, t in site.channels.items()},
        "scale": site.scale,
        "offset": site.offset,
        "gamma": site.gamma,
        "bias": site.bias,
        "noise": site.noise,
        "blur": site.blur,
        "slice_thickness": site.slice_thickness,
        "spacing": None if site.spacing is None else list(site.spacing),
        "fov_crop": None if site.fov_crop is None else [list(p) for p in site.fov_crop],
        "orientation": site.orientation,
        "lesions": {
            "count": list(les.count),
            "radius_mm": list(les.radius_mm),
            "edema_ratio": list(les.edema_ratio),
            "irregularity": les.irregularity,
            "region": list(les.region),
        },
        "deformation_mm": site.deformation_mm,
        "annotation": site.annotation,
        "cases": site.cases,
    }
