"""Synthetic multi-site lesion cases on the real MNI template, with known ground truth.

Anatomy comes from the template's tissue maps, varied per case by a smooth random
deformation; lesions are irregular white-matter-centred blobs with a core and a
surrounding edema and soft (partial-volume) borders; each site then applies its own
contrast table and scanner effects (gamma, bias field, blur, Rician noise, scale and
offset). Everything is drawn from one numpy Generator, so a seed fixes every byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from UHarmonyLib.data.template import Template

CORE, EDEMA = 1, 2
TISSUES = ("csf", "gm", "wm", "core", "edema")
FLAIR_LIKE = {"csf": 0.15, "gm": 0.55, "wm": 0.45, "core": 0.75, "edema": 0.95}


@dataclass(frozen=True)
class SiteSpec:
    """One site's appearance (per channel contrast tables and scanner effects) and lesion statistics."""

    name: str
    contrast: dict[str, dict[str, float]] = field(default_factory=lambda: {"FLAIR": dict(FLAIR_LIKE)})
    scale: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    bias: float = 0.0
    noise: float = 0.02
    blur: float = 0.0
    lesions: tuple[int, int] = (1, 3)
    lesion_radius: tuple[float, float] = (5.0, 10.0)
    deformation: float = 3.0

    @property
    def channels(self) -> list[str]:
        return list(self.contrast)


@dataclass
class Case:
    """One generated case: images per channel and the label map, on one grid."""

    images: dict[str, sitk.Image]
    label: sitk.Image
    site: str


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, coarse: int = 5) -> np.ndarray:
    """A smooth random field in [-1, 1]-ish: coarse Gaussian noise, cubic-upsampled."""
    grid = rng.standard_normal((coarse,) * len(shape))
    zoom = [s / coarse for s in shape]
    return ndimage.zoom(grid, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]


def _deform(maps: list[np.ndarray], spacing: float, amount_mm: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Warp tissue maps with one smooth random displacement field (amount in mm)."""
    if amount_mm <= 0:
        return maps
    shape = maps[0].shape
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    for axis in range(3):
        coords[axis] += _smooth_field(shape, rng).astype(np.float32) * (amount_mm / spacing)
    return [ndimage.map_coordinates(m, coords, order=1, mode="constant") for m in maps]


def _lesions(
    tissue: dict[str, np.ndarray], spacing: float, site: SiteSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Soft core and whole-lesion (core + edema) memberships in [0, 1]."""
    shape = tissue["wm"].shape
    core = np.zeros(shape, np.float32)
    whole = np.zeros(shape, np.float32)
    centres = np.argwhere(tissue["wm"] > 0.9)
    count = int(rng.integers(site.lesions[0], site.lesions[1] + 1))
    for _ in range(count):
        c = centres[rng.integers(len(centres))]
        radius = rng.uniform(*site.lesion_radius) / spacing
        axes = radius * rng.uniform(0.7, 1.3, size=3)
        reach = int(np.ceil(axes.max() * 2.2)) + 2
        box = tuple(slice(max(int(ci) - reach, 0), min(int(ci) + reach, s)) for ci, s in zip(c, shape))
        grids = np.meshgrid(*[np.arange(b.start, b.stop) - ci for b, ci in zip(box, c)], indexing="ij")
        dist = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, axes)))
        dist = dist * (1.0 + 0.25 * _smooth_field(dist.shape, rng, coarse=4))
        soft = max(0.5 / radius, 0.05)
        core[box] = np.maximum(core[box], 1 / (1 + np.exp((dist - 1.0) / soft)))
        whole[box] = np.maximum(whole[box], 1 / (1 + np.exp((dist - rng.uniform(1.5, 2.0)) / soft)))
    brain = np.clip(tissue["wm"] + tissue["gm"], 0, 1)
    return core * brain, np.maximum(whole, core) * brain


def _appearance(
    tissue: dict[str, np.ndarray],
    core: np.ndarray,
    whole: np.ndarray,
    table: dict[str, float],
    site: SiteSpec,
    spacing: float,
    rng: np.random.Generator,
) -> np.ndarray:
    base = table["csf"] * tissue["csf"] + table["gm"] * tissue["gm"] + table["wm"] * tissue["wm"]
    frac = np.divide(core, whole, out=np.zeros_like(core), where=whole > 1e-6)
    lesion = table["edema"] * (1 - frac) + table["core"] * frac
    img = base * (1 - whole) + lesion * whole
    if site.blur > 0:
        img = ndimage.gaussian_filter(img, site.blur / spacing)
    img = np.clip(img, 0, None) ** site.gamma
    if site.bias > 0:
        img = img * np.exp(site.bias * _smooth_field(img.shape, rng, coarse=3))
    if site.noise > 0:
        n1, n2 = (rng.standard_normal(img.shape) * site.noise for _ in range(2))
        img = np.sqrt((img + n1) ** 2 + n2**2)
    return (img * site.scale + site.offset).astype(np.float32)


def make_case(template: Template, site: SiteSpec, rng: np.random.Generator) -> Case:
    """One case of `site` on the template grid."""
    spacing = float(template.spacing[0])
    csf, gm, wm = _deform([template.csf, template.gm, template.wm], spacing, site.deformation, rng)
    tissue = {"csf": csf, "gm": gm, "wm": wm}
    core, whole = _lesions(tissue, spacing, site, rng)
    labels = np.where(core > 0.5, CORE, np.where(whole > 0.5, EDEMA, 0)).astype(np.uint8)
    images = {}
    for channel, table in site.contrast.items():
        img = sitk.GetImageFromArray(_appearance(tissue, core, whole, table, site, spacing, rng))
        img.CopyInformation(template.geometry)
        images[channel] = img
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(template.geometry)
    return Case(images=images, label=label, site=site.name)
