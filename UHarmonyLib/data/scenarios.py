"""The built-in scenarios of `uharmony synth`: what each set of sites is for (docs/synthetic-data.md).

Contrast-table scenarios (`none`, `appearance`, `structural`, `mixed`) stay for the tests,
the starter and default models and the earlier benchmarks, which were built on them; the
MR-physics scenarios (`protocols`, `annotation`, `missing-channels`, `unseen-ladder`) are
the honest ones: every site there acquires the same channels, the background is exactly
zero, and sites differ by field strength and sequence parameters, so tissue contrast
itself changes between sites.
"""

from __future__ import annotations

from typing import Any

REALISTIC = {"bias": 0.1}  # the built-in scenarios' common ground: a mild coil bias everywhere

_T1_HI = {"csf": 0.10, "gm": 0.50, "wm": 0.90, "core": 0.25, "edema": 0.65}
_T2_LO = {"csf": 0.90, "gm": 0.60, "wm": 0.45, "core": 0.70, "edema": 0.80}
_FLAIR_DARK = {"csf": 0.05, "gm": 0.50, "wm": 0.40, "core": 0.70, "edema": 1.00}
_FLAIR_FLAT = {"csf": 0.25, "gm": 0.60, "wm": 0.52, "core": 0.72, "edema": 0.90}
_T1_BLACK_HOLES = {"csf": 0.15, "gm": 0.55, "wm": 0.85, "core": 0.12, "edema": 0.40}  # a T1-only site sees lesions dark

TABLE_SCENARIOS: dict[str, dict[str, Any]] = {
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


# Glioma-like lesions for the physics scenarios: larger, with a rim and a necrotic centre.
PHYSICS_DEFAULTS: dict[str, Any] = {
    "bias": 0.1,
    "noise": 0.02,
    "lesions": {"count": [1, 2], "radius_mm": [6, 12], "edema_ratio": [1.5, 2.2], "irregularity": 0.4},
}
_SE_T1 = {"sequence": "se", "TR": 500, "TE": 12}
_SPGR_T1 = {"sequence": "spgr", "TR": 25, "TE": 4, "flip": 30}
# 3 T, 3-D MPRAGE, isotropic voxels: the research protocol (defaults of mr_physics.DEFAULT_SEQUENCES[3.0])
_SITE_3T_3D: dict[str, Any] = {
    "name": "hospital-3t-3d",
    "physics": {"field_strength": 3.0},
    "noise": 0.015,
    "scale": 1000.0,
}
_SITE_15T_2D: dict[str, Any] = {  # 1.5 T spin-echo T1, thick 2-D slices, partial k-space
    "name": "hospital-1.5t-2d",
    "physics": {"field_strength": 1.5, "kspace": [0.8, 0.8, 1.0]},
    "channels": {
        "FLAIR": {"TR": 8000, "TE": 100, "TI": 2300},
        "T1w": _SE_T1,
        "t1gd": _SE_T1,
        "T2w": {"TR": 3500, "TE": 90},
    },
    "spacing": [2.0, 2.0, 5.0],
    "noise": 0.025,
    "bias": 0.25,
    "scale": 400.0,
}
_SITE_3T_2D: dict[str, Any] = {  # 3 T spoiled gradient-echo T1, 3 mm slices, strong k-space truncation (ringing)
    "name": "hospital-3t-2d",
    "physics": {"field_strength": 3.0, "kspace": [0.7, 0.7, 1.0]},
    "channels": {
        "FLAIR": {"TR": 11000, "TE": 140, "TI": 2800},
        "T1w": _SPGR_T1,
        "t1gd": _SPGR_T1,
        "T2w": {"TR": 4000, "TE": 80},
    },
    "spacing": [2.0, 2.0, 3.0],
    "noise": 0.02,
    "scale": 2500.0,
}
_SITE_15T_OLD: dict[str, Any] = {  # an older 1.5 T: short-TI MPRAGE, short-TR FLAIR, 6 mm slices, blur, strong bias
    "name": "hospital-1.5t-old",
    "physics": {"field_strength": 1.5},
    "channels": {
        "FLAIR": {"TR": 6000, "TE": 90, "TI": 2000},
        "T1w": {"TR": 1900, "TE": 4, "TI": 700},
        "t1gd": {"TR": 1900, "TE": 4, "TI": 700},
        "T2w": {"TR": 2500, "TE": 120},
    },
    "spacing": [2.0, 2.0, 6.0],
    "blur": 0.8,
    "noise": 0.03,
    "bias": 0.3,
    "scale": 80.0,
}
PROTOCOL_SITES = (_SITE_3T_3D, _SITE_15T_2D, _SITE_3T_2D, _SITE_15T_OLD)


def _variant(site: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    return {**site, "name": name, **changes}


PHYSICS_SCENARIOS: dict[str, dict[str, Any]] = {
    "protocols": {
        "description": "four hospitals, the same four channels and lesion statistics; field strength and "
        "sequence parameters differ, so tissue contrast differs (the headline scenario)",
        "defaults": PHYSICS_DEFAULTS,
        "sites": list(PROTOCOL_SITES),
    },
    "annotation": {
        "description": "one 3 T protocol everywhere; the sites' annotators differ: generous and tight edema "
        "outlines, whole-lesion labels only, the enhancing rim left out of the core",
        "defaults": PHYSICS_DEFAULTS,
        "sites": [
            _variant(_SITE_3T_3D, "annotators-generous", edema_margin_mm=3.0),
            _variant(_SITE_3T_3D, "annotators-tight", edema_margin_mm=-2.0),
            _variant(_SITE_3T_3D, "annotators-whole", annotation="whole"),
            _variant(_SITE_3T_3D, "annotators-rim-edema", rim_label="edema"),
        ],
    },
    "missing-channels": {
        "description": "the protocols hospitals, each without some channels (no contrast agent, no T2, ...)",
        "defaults": PHYSICS_DEFAULTS,
        "sites": [
            _SITE_3T_3D,
            _variant(
                _SITE_15T_2D,
                _SITE_15T_2D["name"],
                channels={k: _SITE_15T_2D["channels"][k] for k in ("FLAIR", "T1w", "T2w")},
            ),
            _variant(
                _SITE_3T_2D, _SITE_3T_2D["name"], channels={k: _SITE_3T_2D["channels"][k] for k in ("FLAIR", "T1w")}
            ),
            _variant(
                _SITE_15T_OLD,
                _SITE_15T_OLD["name"],
                channels={k: _SITE_15T_OLD["channels"][k] for k in ("T1w", "t1gd", "T2w")},
            ),
        ],
    },
    "clinics": {
        "description": "the bundled default model's sites: the protocols hospitals with BraTS channel names "
        "(flair, t1, t1ce, t2); the older 1.5 T one gives no contrast agent, so it has no t1ce",
        "defaults": PHYSICS_DEFAULTS,
        "channel_naming": "brats",
        "sites": [
            _SITE_3T_3D,
            _SITE_15T_2D,
            _SITE_3T_2D,
            _variant(
                _SITE_15T_OLD,
                _SITE_15T_OLD["name"],
                channels={k: _SITE_15T_OLD["channels"][k] for k in ("FLAIR", "T1w", "T2w")},
            ),
        ],
    },
    "unseen-ladder": {
        "description": "sites ever further from hospital-3t-3d's protocol, for the unfamiliar-case flag: the same "
        "protocol, a longer T2 echo, a shorter FLAIR inversion, 2-D slices with ringing, another field strength",
        "defaults": PHYSICS_DEFAULTS,
        "sites": [
            _variant(_SITE_3T_3D, "rung-0-same"),
            _variant(_SITE_3T_3D, "rung-1-te", channels={"FLAIR": {}, "T1w": {}, "t1gd": {}, "T2w": {"TE": 120}}),
            _variant(
                _SITE_3T_3D,
                "rung-2-ti",
                channels={"FLAIR": {"TI": 2100, "TE": 100}, "T1w": {}, "t1gd": {}, "T2w": {"TE": 120}},
            ),
            _variant(
                _SITE_3T_2D, "rung-3-2d", physics={"field_strength": 3.0, "kspace": [0.7, 0.7, 1.0]}, scale=1000.0
            ),
            _variant(_SITE_15T_2D, "rung-4-1.5t"),
        ],
    },
}
SCENARIOS: dict[str, dict[str, Any]] = {**TABLE_SCENARIOS, **PHYSICS_SCENARIOS}
