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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from UHarmonyLib.data.mr_physics import Physics
from UHarmonyLib.data.names import PLAIN_NAME
from UHarmonyLib.data.physics_spec import parse_physics, physics_to_json
from UHarmonyLib.data.scenarios import SCENARIOS
from UHarmonyLib.data.spec_checks import Where, number, number_range, object_keys
from UHarmonyLib.data.synth import CHANNELS, DEFAULT_CONTRAST, REGIONS, TISSUES, LesionSpec, SiteSpec
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.json_file import read_json

GENERATOR = "uharmony synth"
TOP_KEYS = ("sites", "name", "description", "defaults", "channel_naming")
CHANNEL_NAMINGS = ("msd", "brats")  # how a physics dataset names its channels: FLAIR/T1w/t1gd/T2w or flair/t1/t1ce/t2
ANNOTATIONS = ("full", "whole")
RIM_LABELS = ("core", "edema")
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
    "physics": None,
    "edema_margin_mm": 0.0,
    "rim_label": "core",
}
SITE_KEYS = ("name", *DEFAULT_SITE)


@dataclass(frozen=True)
class SynthSpec:
    """A resolved spec: where it came from (scenario name or file), and its sites."""

    scenario: str
    name: str
    description: str
    sites: list[SiteSpec]
    channel_naming: str = "msd"


def scenario_table() -> list[dict[str, Any]]:
    return [{"name": k, "sites": len(v["sites"]), "description": v["description"]} for k, v in SCENARIOS.items()]


# ---------------------------------------------------------------- validation


def _channels(value: Any, where: Where) -> dict[str, dict[str, float]]:
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
        out[name] = {t: number(table.get(t, DEFAULT_CONTRAST[name][t]), w.at(t), 0.0, 100.0) for t in TISSUES}
    return out


def _fov(value: Any, where: Where) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        raise where.fail(f"must be null or 3 entries (R-L, A-P, S-I), got {json.dumps(value)}")
    out = []
    for axis, entry in zip("xyz", value):
        w = where.at(axis)
        if isinstance(entry, list):
            lo, hi = number_range(entry, w, 0.0, 1.0)
        else:
            f = number(entry, w, 0.0, 1.0, strict=True)
            lo, hi = 0.5 - f / 2, 0.5 + f / 2
        if hi - lo < 0.1:
            raise w.fail(f"keeps {hi - lo:.2f} of the field of view; keep at least 0.1")
        out.append((round(lo, 6), round(hi, 6)))
    return tuple(out)


def _orientation(value: Any, where: Where) -> str:
    code = value.upper() if isinstance(value, str) else ""
    if len(code) != 3 or sorted("RLAPSI".index(c) // 2 for c in code if c in "RLAPSI") != [0, 1, 2]:
        raise where.fail(f"must be a 3-letter code with one of R/L, A/P, S/I each (e.g. RAS, LPS, PIR), got {value!r}")
    return code


def _lesions(value: Any, where: Where) -> LesionSpec:
    data = {**DEFAULT_LESIONS, **object_keys(value, tuple(DEFAULT_LESIONS), where, "lesions")}
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
        count=number_range(data["count"], where.at("count"), 0, 50, integer=True),
        radius_mm=number_range(data["radius_mm"], where.at("radius_mm"), 0.0, 40.0, strict=True),
        edema_ratio=number_range(data["edema_ratio"], where.at("edema_ratio"), 1.0, 4.0),
        irregularity=number(data["irregularity"], where.at("irregularity"), 0.0, 1.0),
        region=tuple(region),
    )


def parse_site(raw: Any, where: Where, defaults: dict[str, Any]) -> SiteSpec:
    """One site dict (merged over `defaults`) to a SiteSpec; refuses anything unknown or out of range."""
    raw = object_keys(raw, SITE_KEYS, where, "a site")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise where.fail('every site needs a non-empty "name"')
    if not PLAIN_NAME.fullmatch(name):
        raise where.fail(f"site name {name!r} must be letters, digits, '.', '_' or '-' (64 at most)")
    where = Where(where.source, f"site '{name}' ({where.prefix.rstrip(': ')}): ")
    d = {**DEFAULT_SITE, **defaults, **raw}
    lesions = {**DEFAULT_LESIONS, **defaults.get("lesions", {})}
    lesions.update(object_keys(raw.get("lesions", {}), tuple(DEFAULT_LESIONS), where.at("lesions"), "lesions"))
    spacing: tuple[float, float, float] | None = None
    if d["spacing"] is not None:
        values = d["spacing"] if isinstance(d["spacing"], list) else [d["spacing"]] * 3
        if len(values) != 3:
            raise where.at("spacing").fail(f"must be null, one number or [x, y, z] mm, got {json.dumps(d['spacing'])}")
        x, y, z = (number(s, where.at("spacing"), 0.0, 20.0, strict=True) for s in values)
        spacing = (x, y, z)
    if d["annotation"] not in ANNOTATIONS:
        raise where.at("annotation").fail(f"must be one of {', '.join(ANNOTATIONS)}, got {json.dumps(d['annotation'])}")
    cases = d["cases"]
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int) or not 1 <= cases <= 10000):
        raise where.at("cases").fail(f"must be null or a whole number from 1 to 10000, got {json.dumps(cases)}")
    thick = d["slice_thickness"]
    physics, channels = _appearance(d, {**defaults, **raw}, where)
    return SiteSpec(
        name=name,
        channels=channels,
        scale=number(d["scale"], where.at("scale"), 0.0, strict=True),
        offset=number(d["offset"], where.at("offset")),
        gamma=number(d["gamma"], where.at("gamma"), 0.0, 5.0, strict=True),
        bias=number(d["bias"], where.at("bias"), 0.0, 2.0),
        noise=number(d["noise"], where.at("noise"), 0.0, 10.0),
        blur=number(d["blur"], where.at("blur"), 0.0, 20.0),
        slice_thickness=None if thick is None else number(thick, where.at("slice_thickness"), 0.0, 20.0, strict=True),
        spacing=spacing,
        fov_crop=_fov(d["fov_crop"], where.at("fov_crop")),
        orientation=_orientation(d["orientation"], where.at("orientation")),
        lesions=_lesions(lesions, where.at("lesions")),
        deformation_mm=number(d["deformation_mm"], where.at("deformation_mm"), 0.0, 20.0),
        annotation=d["annotation"],
        cases=cases,
        physics=physics,
        edema_margin_mm=number(d["edema_margin_mm"], where.at("edema_margin_mm"), -10.0, 10.0),
        rim_label=d["rim_label"],
    )


def _appearance(
    d: dict[str, Any], given: dict[str, Any], where: Where
) -> tuple[Physics | None, dict[str, dict[str, float]]]:
    """(physics, channels): a physics site's channels are names (their sequences live in Physics)."""
    if d["physics"] is None:
        for key, default in (("edema_margin_mm", 0.0), ("rim_label", "core")):
            if d[key] != default:
                raise where.at(key).fail('only an MR-physics site (with a "physics" block) has this annotation setting')
        return None, _channels(d["channels"], where.at("channels"))
    if d["rim_label"] not in RIM_LABELS:
        raise where.at("rim_label").fail(f"must be one of {', '.join(RIM_LABELS)}, got {json.dumps(d['rim_label'])}")
    physics, names = parse_physics(d["physics"], given.get("channels"), where)
    return physics, {n: {} for n in names}


def parse_spec(data: Any, source: str, scenario: str | None = None) -> SynthSpec:
    """A whole spec (dict) to SynthSpec; `source` names the file (or scenario) in error messages."""
    where = Where(source)
    if isinstance(data, dict) and str(data.get("generator", "")).startswith(GENERATOR):
        keep = ("name", "sites", "channel_naming")  # a dataset.json of ours
        data = {k: data[k] for k in keep if k in data}
    data = object_keys(data, TOP_KEYS, where, "the spec")
    sites = data.get("sites")
    if not isinstance(sites, list) or not sites:
        raise where.fail('"sites" must be a non-empty list of sites')
    defaults = data.get("defaults", {})
    object_keys(defaults, tuple(k for k in SITE_KEYS if k != "name"), where.at("defaults"), "defaults")
    if "lesions" in defaults:
        object_keys(defaults["lesions"], tuple(DEFAULT_LESIONS), where.at("defaults").at("lesions"), "lesions")
    parsed: list[SiteSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(sites):
        site = parse_site(raw, where.at(f"sites[{i}]"), defaults)
        key = site.name.lower()
        if key in seen:
            raise where.at(f"sites[{i}]").fail(f"duplicate site name '{site.name}' (also sites[{seen[key]}])")
        seen[key] = i
        parsed.append(site)
    if len({site.physics is None for site in parsed}) > 1:
        raise where.fail("the sites mix contrast-table and MR-physics sites (their channels differ); use one kind")
    name, description = data.get("name", ""), data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise where.fail('"name" and "description" must be strings')
    scenario = scenario or source
    spec = SynthSpec(
        scenario=scenario, name=name or f"uharmony-synth-{scenario}", description=description, sites=parsed
    )
    return with_channel_naming(spec, data.get("channel_naming", "msd"), where.at("channel_naming"))


def with_channel_naming(spec: SynthSpec, naming: Any, where: Where | None = None) -> SynthSpec:
    """The spec with its channels named the MSD (as generated) or the BraTS way; only physics channels have both."""
    where = where or Where("--channel-naming")
    if naming not in CHANNEL_NAMINGS:
        raise where.fail(f"must be one of {', '.join(CHANNEL_NAMINGS)}, got {json.dumps(naming)}")
    if naming != "msd" and spec.sites[0].physics is None:
        raise where.fail(f'"{naming}" names MR-physics channels; these sites use contrast tables')
    return replace(spec, channel_naming=naming)


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
    out: dict[str, Any] = {
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
        "physics": None,
        "edema_margin_mm": site.edema_margin_mm,
        "rim_label": site.rim_label,
    }
    if site.physics is not None:
        out["physics"], out["channels"] = physics_to_json(site.physics)
    return out
