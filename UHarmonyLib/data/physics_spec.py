"""The JSON form of an MR-physics site: its `physics` block and its channels' sequences, checked in one line each.

A physics site's `channels` is a list of channel names (the field strength's default
sequences) or `{"T1w": {"sequence": "spgr", "TR": 20, "TE": 4, "flip": 25}, ...}`; a
channel's keys merge over its default sequence unless `sequence` names another kind.
"""

from __future__ import annotations

import json
from typing import Any

from UHarmonyLib.data.mr_physics import DEFAULT_SEQUENCES, FIELD_STRENGTHS, PHYSICS_CHANNELS, Physics, Sequence
from UHarmonyLib.data.spec_checks import Where, number, object_keys

PHYSICS_KEYS = (
    "field_strength",
    "jitter",
    "tissue_jitter",
    "texture",
    "kspace",
    "dose_mM",
    "anatomy_scale",
    "skull_strip",
)
SEQUENCE_KEYS = ("sequence", "TR", "TE", "TI", "flip")
NEEDS = {"se": (), "ir": ("TI",), "mprage": ("TI",), "spgr": ("flip",)}  # besides TR and TE


def sequence_to_json(seq: Sequence) -> dict[str, Any]:
    out: dict[str, Any] = {"sequence": seq.kind, "TR": seq.tr_ms, "TE": seq.te_ms}
    if seq.ti_ms is not None:
        out["TI"] = seq.ti_ms
    if seq.flip_deg is not None:
        out["flip"] = seq.flip_deg
    return out


def _sequence(raw: Any, default: Sequence, where: Where) -> Sequence:
    data = object_keys(raw, SEQUENCE_KEYS, where, "a sequence")
    kind = data.get("sequence", default.kind)
    if kind not in NEEDS:
        raise where.at("sequence").fail(f"unknown sequence {json.dumps(kind)} (known: {', '.join(NEEDS)})")
    base = sequence_to_json(default) if kind == default.kind else {"sequence": kind}
    merged = {**base, **data}
    missing = [k for k in ("TR", "TE", *NEEDS[kind]) if k not in merged]
    if missing:
        raise where.fail(f"a {kind} sequence needs {', '.join(missing)}")
    extra = [k for k in ("TI", "flip") if k in merged and k not in NEEDS[kind]]
    if extra:
        raise where.at(extra[0]).fail(f"a {kind} sequence has no {extra[0]}")
    tr = number(merged["TR"], where.at("TR"), 0.0, 60000.0, strict=True)
    te = number(merged["TE"], where.at("TE"), 0.0, 1000.0, strict=True)
    ti = number(merged["TI"], where.at("TI"), 0.0, 10000.0, strict=True) if "TI" in merged else None
    flip = number(merged["flip"], where.at("flip"), 0.0, 90.0, strict=True) if "flip" in merged else None
    if te >= tr:
        raise where.at("TE").fail(f"TE {te:g} ms must be shorter than TR {tr:g} ms")
    return Sequence(kind, tr, te, ti, flip)


def _kspace(value: Any, where: Where) -> tuple[float, float, float]:
    values = value if isinstance(value, list) else [value] * 3
    if len(values) != 3:
        raise where.fail(f"must be one fraction or 3 (R-L, A-P, S-I), got {json.dumps(value)}")
    x, y, z = (number(v, where, 0.2, 1.0) for v in values)
    return (x, y, z)


def parse_physics(raw: Any, channels: Any, where: Where) -> tuple[Physics, list[str]]:
    """(Physics, channel names) of a physics site; `channels` as the site gives it (None: all four)."""
    data = object_keys(raw, PHYSICS_KEYS, where.at("physics"), "physics")
    w = where.at("physics")
    strength = number(data.get("field_strength", 3.0), w.at("field_strength"))
    if strength not in FIELD_STRENGTHS:
        raise w.at("field_strength").fail(f"must be one of {', '.join(map(str, FIELD_STRENGTHS))}, got {strength:g}")
    skull = data.get("skull_strip", True)
    if not isinstance(skull, bool):
        raise w.at("skull_strip").fail(f"must be true or false, got {json.dumps(skull)}")
    raw_channels = list(PHYSICS_CHANNELS) if channels is None else channels
    if isinstance(raw_channels, list) and all(isinstance(c, str) for c in raw_channels):
        raw_channels = {c: {} for c in raw_channels}
    cw = where.at("channels")
    if not isinstance(raw_channels, dict) or not raw_channels:
        raise cw.fail(f'must be a non-empty list of channel names or {{"T1w": {{...}}}}, got {json.dumps(channels)}')
    unknown = [c for c in raw_channels if c not in PHYSICS_CHANNELS]
    if unknown:
        raise cw.fail(f"unknown channel '{unknown[0]}' for a physics site (known: {', '.join(PHYSICS_CHANNELS)})")
    names = sorted(raw_channels, key=PHYSICS_CHANNELS.index)
    defaults = DEFAULT_SEQUENCES[strength]
    sequences = {c: _sequence(raw_channels[c], defaults[c], cw.at(c)) for c in names}
    physics = Physics(
        field_t=strength,
        sequences=sequences,
        jitter=number(data.get("jitter", 0.03), w.at("jitter"), 0.0, 0.3),
        tissue_jitter=number(data.get("tissue_jitter", 0.03), w.at("tissue_jitter"), 0.0, 0.3),
        texture=number(data.get("texture", 0.03), w.at("texture"), 0.0, 0.3),
        kspace=_kspace(data.get("kspace", 1.0), w.at("kspace")),
        dose_mm=number(data.get("dose_mM", 0.3), w.at("dose_mM"), 0.0, 5.0),
        anatomy_scale=number(data.get("anatomy_scale", 0.04), w.at("anatomy_scale"), 0.0, 0.2),
        skull_strip=skull,
    )
    return physics, names


def physics_to_json(physics: Physics) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `physics` block, the `channels` block) that parse_physics reads back to the same settings."""
    block = {
        "field_strength": physics.field_t,
        "jitter": physics.jitter,
        "tissue_jitter": physics.tissue_jitter,
        "texture": physics.texture,
        "kspace": list(physics.kspace),
        "dose_mM": physics.dose_mm,
        "anatomy_scale": physics.anatomy_scale,
        "skull_strip": physics.skull_strip,
    }
    return block, {c: sequence_to_json(s) for c, s in physics.sequences.items()}
