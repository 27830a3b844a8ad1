"""A synthetic case acquired by MR physics: the site's protocol decides tissue contrast, case by case.

The anatomy (template tissues, warped and resized per case) and heterogeneous lesions
(edema, an enhancing rim, a necrotic centre) become per-tissue fractions; each channel's
signal comes from the site's sequence through the signal equations (mr_physics.py) with
per-case protocol and tissue variation and smooth texture; then k-space truncation
(resolution loss, ringing), point spread and slice profile, the site's grid, bias field,
Rician noise and gain, and skull stripping (an exactly zero background).

Randomness: one child stream per stage (anatomy size, anatomy warp, lesions, texture, one
per channel in PHYSICS_CHANNELS order), so a site's lesions stay put when its protocol
or channel list changes.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.data.mr_physics import PHYSICS_CHANNELS, PHYSICS_TISSUES, Physics, channel_signal, truncate_kspace
from UHarmonyLib.data.synth import (
    CORE,
    EDEMA,
    Case,
    Grid,
    SiteSpec,
    acquire,
    acquisition_grid,
    deform,
    knots_for,
    place_lesions,
    ras_axes,
    smooth_field,
    stored_image,
    to_grid,
)
from UHarmonyLib.data.template import Template

TEXTURE_CONTROL_MM = 12.0  # B-spline control spacing of the within-tissue texture
TISSUE_VALUES = {name: i for i, name in enumerate(PHYSICS_TISSUES, start=1)}  # Case.tissue_label's values
STREAMS = 4 + len(PHYSICS_CHANNELS)
PURE = 0.75  # a tissue-map voxel is that tissue when at least this fraction of it is


def tissue_fractions(
    tissue: dict[str, np.ndarray], core: np.ndarray, whole: np.ndarray, necrosis: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-voxel fractions of every physics tissue (they sum to the brain's partial volume)."""
    keep = 1.0 - whole
    return {
        "csf": tissue["csf"] * keep,
        "gm": tissue["gm"] * keep,
        "wm": tissue["wm"] * keep,
        "edema": np.clip(whole - core, 0.0, 1.0),
        "necrosis": necrosis,
        "enhancing": np.clip(core - necrosis, 0.0, 1.0),
    }


def _kspace_axes(template: Template, physics: Physics) -> tuple[float, float, float]:
    """The kept k-space fractions per numpy axis (z, y, x) from R-L, A-P, S-I."""
    keep = [1.0, 1.0, 1.0]
    for r, (np_axis, _sign) in enumerate(ras_axes(template.geometry)):
        keep[np_axis] = physics.kspace[r]
    return (keep[0], keep[1], keep[2])


def annotate(
    core_g: np.ndarray, necrosis_g: np.ndarray, whole_g: np.ndarray, brain_g: np.ndarray, grid: Grid, site: SiteSpec
) -> np.ndarray:
    """The site's annotators' label map: which part counts as core, how generous the edema outline is."""
    lesion = whole_g > 0.5
    if site.edema_margin_mm != 0.0:
        image = sitk.GetImageFromArray(lesion.astype(np.uint8))
        image.SetSpacing(grid.spacing)
        inside_negative = sitk.SignedMaurerDistanceMap(
            image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        # voxel centres of the outline lie half a voxel inside the lesion's surface
        lesion = sitk.GetArrayFromImage(inside_negative) - min(grid.spacing) / 2 < site.edema_margin_mm
    lesion &= brain_g > 0.5
    if site.annotation == "whole":
        return lesion.astype(np.uint8)
    core = (core_g if site.rim_label == "core" else necrosis_g) > 0.5
    return np.where(core & lesion, CORE, np.where(lesion, EDEMA, 0)).astype(np.uint8)


def make_physics_case(template: Template, site: SiteSpec, rng: np.random.Generator, tissue_map: bool = False) -> Case:
    """One case of a physics site; `tissue_map` also returns each voxel's main tissue on the stored grid."""
    physics = site.physics
    if physics is None:
        raise ValueError(f"site '{site.name}' has no physics settings")
    streams = [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=STREAMS)]
    size = 1.0 + physics.anatomy_scale * np.clip(streams[0].standard_normal(3), -3, 3)
    tissue = deform(template, site.deformation_mm, streams[1], (float(size[0]), float(size[1]), float(size[2])))
    necrosis = np.zeros(template.mask.shape, np.float32)
    core, whole, info = place_lesions(template, tissue, site.lesions, streams[2], necrosis)
    fractions = tissue_fractions(tissue, core, whole, necrosis)
    knots = knots_for(template.mask.shape, float(template.spacing[0]), TEXTURE_CONTROL_MM)
    textures = (
        smooth_field(template.mask.shape, knots, streams[3]),
        smooth_field(template.mask.shape, knots, streams[3]),
        smooth_field(template.mask.shape, knots, streams[3]),
    )
    grid = acquisition_grid(template, site)
    brain_g = to_grid(np.clip(tissue["csf"] + tissue["gm"] + tissue["wm"], 0, 1), template, grid)
    brain = (brain_g > 0.5).astype(np.float32) if physics.skull_strip else None
    keep = _kspace_axes(template, physics)
    images = {}
    for channel in sorted(site.channels, key=PHYSICS_CHANNELS.index):
        stream = streams[4 + PHYSICS_CHANNELS.index(channel)]
        clean = truncate_kspace(channel_signal(physics, channel, fractions, textures, stream), keep)
        images[channel] = stored_image(acquire(clean, template, site, grid, stream, brain), grid, site.orientation)
    core_g, necrosis_g, whole_g = (to_grid(a, template, grid) for a in (core, necrosis, whole))
    labels = annotate(core_g, necrosis_g, whole_g, brain_g, grid, site)
    tissue_label = None
    if tissue_map:
        stack = np.stack([to_grid(fractions[t], template, grid) for t in PHYSICS_TISSUES])
        main = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
        main[stack.max(axis=0) < PURE] = 0
        tissue_label = stored_image(main, grid, site.orientation)
    return Case(
        images=images,
        label=stored_image(labels, grid, site.orientation),
        site=site.name,
        lesions=info,
        tissue_label=tissue_label,
    )
