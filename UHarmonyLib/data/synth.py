"""Synthetic multi-site lesion cases on the real MNI template, with known ground truth.

Anatomy comes from the template's tissue maps, varied per case by a smooth random
deformation; lesions are irregular white-matter-centred blobs with a core and a
surrounding edema and soft (partial-volume) borders. Each site then "acquires" the case:
its own contrast table per channel, point-spread blur and slice profile, resampling to
its voxel spacing and field of view, gamma, a smooth multiplicative bias field, Rician
noise, intensity scale and offset, and the orientation the files are stored in.

Randomness: `make_case` derives one child Generator per stage (anatomy, lesions, and one
per channel in CHANNELS order) from the Generator it is given, so a site's lesions do
not change when its appearance or channel list changes, and a seed fixes every byte.
The docs (docs/synthetic-data.md) describe every parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from UHarmonyLib.data.labels import FULL_LABELS, WHOLE_LABEL
from UHarmonyLib.data.mr_physics import Physics
from UHarmonyLib.data.template import Template

CORE, EDEMA = 1, 2
TISSUES = ("csf", "gm", "wm", "core", "edema")
CHANNELS = ("T1", "T2", "FLAIR")
REGIONS = ("any", "left", "right", "anterior", "posterior", "deep", "superficial")

# Relative signal per tissue class (about 0..1): T1 WM > GM > CSF with a dark core and
# mildly hypointense edema; T2 bright CSF and lesion; FLAIR dark CSF, brightest edema.
DEFAULT_CONTRAST: dict[str, dict[str, float]] = {
    "T1": {"csf": 0.15, "gm": 0.55, "wm": 0.80, "core": 0.30, "edema": 0.62},
    "T2": {"csf": 1.00, "gm": 0.55, "wm": 0.40, "core": 0.75, "edema": 0.85},
    "FLAIR": {"csf": 0.15, "gm": 0.55, "wm": 0.45, "core": 0.75, "edema": 0.95},
}
FLAIR_LIKE = DEFAULT_CONTRAST["FLAIR"]

DEFORMATION_CONTROL_MM = 40.0  # B-spline control-point spacing of the anatomy deformation
BIAS_CONTROL_MM = 80.0  # ... and of the bias field (smoother than anatomy)
STREAMS = 2 + len(CHANNELS)  # child generators per case: anatomy, lesions, one per channel


@dataclass(frozen=True)
class LesionSpec:
    """A site's lesion statistics: counts, core radius and edema extent, shape and location."""

    count: tuple[int, int] = (1, 3)  # lesions per case, drawn uniformly from [lo, hi]
    radius_mm: tuple[float, float] = (5.0, 10.0)  # core radius
    edema_ratio: tuple[float, float] = (1.5, 2.0)  # outer edema radius / core radius
    irregularity: float = 0.3  # 0 = ellipsoids; larger = lumpier, more elongated blobs
    region: tuple[str, ...] = ("any",)  # all must hold: left/right, anterior/posterior, deep/superficial


@dataclass(frozen=True)
class SiteSpec:
    """One site: appearance (contrast per channel, scanner effects), acquisition grid and lesion statistics.

    The Python default is one FLAIR channel (what the starter-model script uses); a JSON
    spec site without "channels" gets T1, T2 and FLAIR (see UHarmonyLib.data.spec).
    """

    name: str
    channels: dict[str, dict[str, float]] = field(default_factory=lambda: {"FLAIR": dict(FLAIR_LIKE)})
    scale: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    bias: float = 0.0  # std of the log gain of the bias field
    noise: float = 0.02  # Rician noise std, relative to the contrast table's units
    blur: float = 0.0  # Gaussian point-spread sigma, mm
    slice_thickness: float | None = None  # mm along S-I; None: the slice spacing (contiguous slices)
    spacing: tuple[float, float, float] | None = None  # mm along R-L, A-P, S-I; None: the generation grid
    fov_crop: tuple[tuple[float, float], ...] | None = None  # kept [lo, hi] fraction per R-L, A-P, S-I axis
    orientation: str = "RAS"  # stored file orientation (SimpleITK DICOMOrient code)
    lesions: LesionSpec = field(default_factory=LesionSpec)
    deformation_mm: float = 3.0  # std of the smooth anatomy displacement
    annotation: str = "full"  # "full": core 1 + edema 2; "whole": one label 1 = core and edema merged
    cases: int | None = None  # cases of this site; None: the dataset's cases per site
    physics: Physics | None = None  # acquire by MR physics (channels are then PHYSICS_CHANNELS; physics_case.py)
    edema_margin_mm: float = 0.0  # annotators' edema outline, grown (> 0) or shrunk (< 0) around the true one
    rim_label: str = "core"  # physics sites: the enhancing rim counts as core (BraTS tumour core) or "edema"

    @property
    def label_names(self) -> list[str]:
        return list(FULL_LABELS) if self.annotation == "full" else [WHOLE_LABEL]


@dataclass
class Case:
    """One generated case: images per channel and the label map, on the site's acquisition grid."""

    images: dict[str, sitk.Image]
    label: sitk.Image
    site: str
    lesions: list[dict[str, Any]] = field(default_factory=list)  # centre_ras_mm, radius_mm of each lesion
    tissue_label: sitk.Image | None = None  # physics cases, when asked: each voxel's main tissue (TISSUE_VALUES)


# ---------------------------------------------------------------- smooth random fields


def _bspline_basis(n: int, knots: int) -> np.ndarray:
    """(n, knots + 2) cubic B-spline weights, rows scaled to unit L2 norm (so every voxel is N(0, 1))."""
    t = np.linspace(0.0, knots - 1.0, n) if n > 1 else np.zeros(1)
    d = np.abs(t[:, None] - np.arange(-1, knots + 1)[None, :])
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def smooth_field(shape: tuple[int, ...], knots: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A smooth standard-normal random field: coarse noise through a separable B-spline basis.

    Separable matrix products cost a few multiplications per voxel, unlike cubic zooming.
    """
    out = rng.standard_normal(tuple(k + 2 for k in knots), dtype=np.float32)
    for axis, (n, k) in enumerate(zip(shape, knots)):
        out = np.moveaxis(np.tensordot(_bspline_basis(n, k), out, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def knots_for(shape: tuple[int, ...], spacing: float, control_mm: float) -> tuple[int, ...]:
    return tuple(max(2, round(n * spacing / control_mm)) for n in shape)


# ---------------------------------------------------------------- anatomy


def _brain_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    nz = np.argwhere(mask)
    lo, hi = nz.min(0) - margin, nz.max(0) + margin + 1
    return tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, mask.shape))


def deform(
    template: Template, amount_mm: float, rng: np.random.Generator, scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> dict[str, np.ndarray]:
    """CSF, GM and WM maps warped by one smooth random displacement (std `amount_mm`), sized by `scale` (z, y, x).

    The displacement is a coarse B-spline field; the warp (trilinear, torch grid_sample,
    all three maps in one pass) runs on the brain's bounding box only, grown for a larger brain.
    """
    maps = {"csf": template.csf, "gm": template.gm, "wm": template.wm}
    if amount_mm <= 0 and scale == (1.0, 1.0, 1.0):
        return {k: v.astype(np.float32, copy=False) for k, v in maps.items()}
    spacing = float(template.spacing[0])
    grow = max(0.0, max(scale) - 1.0) * max(template.mask.shape) / 2
    margin = math.ceil(4 * amount_mm / spacing + grow) + 1
    box = _brain_box(template.mask, margin)
    shape = tuple(b.stop - b.start for b in box)
    knots = knots_for(shape, spacing, DEFORMATION_CONTROL_MM)
    grid = np.empty((*shape, 3), np.float32)  # (z, y, x, [x, y, z]) normalized to [-1, 1]
    for i, axis in enumerate((2, 1, 0)):
        n = shape[axis]
        base = np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        if scale[axis] != 1.0:  # sample nearer the centre to grow the brain
            base = (base - np.float32((n - 1) / 2)) / np.float32(scale[axis]) + np.float32((n - 1) / 2)
        disp = smooth_field(shape, knots, rng) * np.float32(amount_mm / spacing)
        grid[..., i] = (base + disp) * np.float32(2.0 / max(n - 1, 1)) - np.float32(1.0)
    stack = torch.from_numpy(np.stack([m[box] for m in maps.values()]).astype(np.float32))[None]
    with torch.no_grad():
        warped = torch.nn.functional.grid_sample(
            stack, torch.from_numpy(grid)[None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0].numpy()
    out = {}
    for i, key in enumerate(maps):
        full = np.zeros(template.mask.shape, np.float32)
        full[box] = warped[i]
        out[key] = full
    return out


# ---------------------------------------------------------------- lesions


def ras_axes(geometry: sitk.Image) -> list[tuple[int, float]]:
    """For R, A, S: (numpy axis of the z,y,x array, +1/-1 direction) of an axis-aligned image."""
    d = np.reshape(geometry.GetDirection(), (3, 3)) * np.array([-1.0, -1.0, 1.0])[:, None]  # LPS -> RAS rows
    out = []
    for r in range(3):
        k = int(np.argmax(np.abs(d[r])))
        out.append((2 - k, float(np.sign(d[r, k]))))
    return out


def _ras_coords(geometry: sitk.Image, idx_zyx: np.ndarray) -> np.ndarray:
    """RAS mm of voxel indices (rows of z, y, x)."""
    d = np.reshape(geometry.GetDirection(), (3, 3))
    lps = np.asarray(geometry.GetOrigin()) + (idx_zyx[:, ::-1] * np.asarray(geometry.GetSpacing())) @ d.T
    return lps * np.array([-1.0, -1.0, 1.0])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _centre_candidates(template: Template, wm: np.ndarray, region: tuple[str, ...]) -> np.ndarray:
    """Flat indices of white-matter voxels that satisfy every region condition (loosened if none do)."""
    for threshold in (0.9, 0.6, 0.3):
        flat = np.flatnonzero(wm > threshold)
        if len(flat) == 0:
            continue
        keep = np.ones(len(flat), bool)
        idx = np.stack(np.unravel_index(flat, wm.shape), axis=1)
        ras = _ras_coords(template.geometry, idx)
        depth = template.depth_mm.ravel()[flat]
        for cond in region:
            if cond == "left":
                keep &= ras[:, 0] < -4.0
            elif cond == "right":
                keep &= ras[:, 0] > 4.0
            elif cond == "anterior":
                keep &= ras[:, 1] > -10.0
            elif cond == "posterior":
                keep &= ras[:, 1] < -30.0
            elif cond == "deep":
                keep &= depth >= np.quantile(depth, 0.67)
            elif cond == "superficial":
                keep &= depth <= np.quantile(depth, 0.33)
        if keep.any():
            return flat[keep]
    return np.flatnonzero(template.mask)


def place_lesions(
    template: Template,
    tissue: dict[str, np.ndarray],
    spec: LesionSpec,
    rng: np.random.Generator,
    necrosis: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Soft core and whole-lesion (core + edema) memberships in [0, 1], and where the lesions are.

    Given a `necrosis` array, each core also gets a necrotic centre (filled in place): an
    inner part of random relative size inside a rim, with its own outline distortion.

    Each lesion is a randomly rotated ellipsoid whose radius is modulated by a smooth
    random field (irregular outline); borders are sigmoid ramps about one voxel wide, so
    intensities mix tissue and lesion like partial-volume voxels. Edema spreads in white
    matter and is damped in grey matter; nothing lesional is placed in CSF.
    """
    shape = tissue["wm"].shape
    spacing = float(template.spacing[0])
    core = np.zeros(shape, np.float32)
    whole = np.zeros(shape, np.float32)
    info: list[dict[str, Any]] = []
    count = int(rng.integers(spec.count[0], spec.count[1] + 1))
    if count == 0:
        return core, whole, info
    candidates = _centre_candidates(template, tissue["wm"], spec.region)
    soft = 0.3 * spacing  # mm: sigmoid width of the partial-volume border
    irr = spec.irregularity
    for _ in range(count):
        centre = np.array(np.unravel_index(candidates[rng.integers(len(candidates))], shape))
        radius = float(rng.uniform(*spec.radius_mm))
        ratio = float(rng.uniform(*spec.edema_ratio))
        axes = radius * np.clip(rng.uniform(1 - 0.6 * irr, 1 + 0.6 * irr, size=3), 0.3, None)
        rot = _random_rotation(rng)
        reach = math.ceil(axes.max() * ratio * (1 + 1.5 * irr) / spacing) + 2
        box = tuple(slice(max(int(c) - reach, 0), min(int(c) + reach + 1, n)) for c, n in zip(centre, shape))
        offsets = [np.arange(b.start, b.stop, dtype=np.float32) - c for b, c in zip(box, centre)]
        zz, yy, xx = np.meshgrid(*offsets, indexing="ij")
        pts = np.stack([zz, yy, xx], axis=-1) * np.float32(spacing) @ rot.T.astype(np.float32)
        dist = np.sqrt(((pts / (axes / radius).astype(np.float32)) ** 2).sum(-1))  # mm, ellipsoid-normalized
        box_shape = dist.shape
        knots = (3, 3, 3)
        d_core = dist * np.exp(np.float32(0.5 * irr) * smooth_field(box_shape, knots, rng))
        d_edema = dist * np.exp(np.float32(0.8 * irr) * smooth_field(box_shape, knots, rng))
        c = 1.0 / (1.0 + np.exp((d_core - radius) / soft))
        w = 1.0 / (1.0 + np.exp((d_edema - radius * ratio) / soft))
        core[box] = np.maximum(core[box], c)
        whole[box] = np.maximum(whole[box], w)
        if necrosis is not None:
            inner = radius * float(rng.uniform(0.0, 0.75))  # 0: a solid, wholly enhancing core
            d_inner = dist * np.exp(np.float32(0.5 * irr) * smooth_field(box_shape, knots, rng))
            necrosis[box] = np.maximum(necrosis[box], 1.0 / (1.0 + np.exp((d_inner - inner) / soft)) * c)
        ras = _ras_coords(template.geometry, centre[None].astype(float))[0]
        info.append({"centre_ras_mm": [round(float(v), 1) for v in ras], "radius_mm": round(radius, 2)})
    brain = np.clip(tissue["wm"] + tissue["gm"], 0, 1)
    core *= brain
    if necrosis is not None:
        necrosis *= brain
    whole = np.maximum(core, whole * np.clip(tissue["wm"] + 0.3 * tissue["gm"], 0, 1))
    return core, whole, info


def label_map(core: np.ndarray, whole: np.ndarray, annotation: str) -> np.ndarray:
    """Hard labels from soft memberships: a voxel is lesional where it is more than half lesion."""
    if annotation == "whole":
        return (whole > 0.5).astype(np.uint8)
    return np.where(core > 0.5, CORE, np.where(whole > 0.5, EDEMA, 0)).astype(np.uint8)


# ---------------------------------------------------------------- acquisition


@dataclass(frozen=True)
class Grid:
    """An axis-aligned acquisition grid (SimpleITK size/spacing/origin/direction, x-y-z order)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def same_as(self, image: sitk.Image) -> bool:
        return (
            self.size == image.GetSize()
            and np.allclose(self.spacing, image.GetSpacing())
            and np.allclose(self.origin, image.GetOrigin())
        )


def acquisition_grid(template: Template, site: SiteSpec) -> Grid:
    """The site's grid: its spacing over the (cropped) template field of view, same axes as the template."""
    geo = template.geometry
    g = float(geo.GetSpacing()[0])
    size = list(geo.GetSize())
    spacing = [g, g, g]
    start = [-0.5] * 3  # voxel-edge extent in template index units, per sitk axis
    length = [float(n) for n in size]
    for r, (np_axis, sign) in enumerate(ras_axes(geo)):
        k = 2 - np_axis
        lo, hi = site.fov_crop[r] if site.fov_crop is not None else (0.0, 1.0)
        if sign < 0:
            lo, hi = 1.0 - hi, 1.0 - lo
        start[k] = -0.5 + lo * size[k]
        length[k] = (hi - lo) * size[k]
        if site.spacing is not None:
            spacing[k] = float(site.spacing[r])
    new_size, first = [], []
    for k in range(3):
        n = max(2, round(length[k] * g / spacing[k]))
        step = spacing[k] / g
        new_size.append(n)
        first.append(start[k] + (length[k] - n * step) / 2 + step / 2)
    origin = geo.TransformContinuousIndexToPhysicalPoint(first)
    return Grid(tuple(new_size), tuple(spacing), tuple(origin), geo.GetDirection())  # type: ignore[arg-type]


def _psf_sigma_vox(template: Template, site: SiteSpec, grid: Grid) -> list[float]:
    """Gaussian sigma (template voxels, z-y-x) of blur plus the box profile of coarser voxels and thick slices."""
    g = float(template.spacing[0])
    geo = template.geometry
    sigmas = [0.0, 0.0, 0.0]
    for r, (np_axis, _sign) in enumerate(ras_axes(geo)):
        width = grid.spacing[2 - np_axis]
        if r == 2 and site.slice_thickness is not None:
            width = site.slice_thickness
        box_var = max(width**2 - g**2, 0.0) / 12.0  # a box of `width` mm, less what the template voxel has
        sigmas[np_axis] = math.sqrt(site.blur**2 + box_var) / g
    return sigmas


def to_grid(array: np.ndarray, template: Template, grid: Grid) -> np.ndarray:
    """Linear resampling of a template-grid array onto an acquisition grid (identity when they coincide)."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(template.geometry)
    if grid.same_as(image):
        return array
    out = sitk.Resample(
        image, grid.size, sitk.Transform(), sitk.sitkLinear, grid.origin, grid.spacing, grid.direction, 0.0,
        sitk.sitkFloat32,
    )  # fmt: skip
    return sitk.GetArrayFromImage(out)


def channel_image(
    tissue: dict[str, np.ndarray],
    core: np.ndarray,
    whole: np.ndarray,
    table: dict[str, float],
    template: Template,
    site: SiteSpec,
    grid: Grid,
    rng: np.random.Generator,
) -> np.ndarray:
    """One channel as the site acquires it, on its grid (z, y, x float32).

    Order follows the physics: tissue contrast, point spread and slice profile, sampling
    on the site's grid, gamma (a monotone intensity distortion), bias field (coil gain),
    Rician noise (magnitude of complex Gaussian noise), then the stored scale and offset.
    """
    f32 = np.float32
    img = f32(table["csf"]) * tissue["csf"] + f32(table["gm"]) * tissue["gm"] + f32(table["wm"]) * tissue["wm"]
    frac = np.divide(core, whole, out=np.zeros_like(core), where=whole > 1e-6)
    lesion = f32(table["edema"]) + (f32(table["core"]) - f32(table["edema"])) * frac
    img += whole * (lesion - img)
    return acquire(img, template, site, grid, rng)


def acquire(
    img: np.ndarray,
    template: Template,
    site: SiteSpec,
    grid: Grid,
    rng: np.random.Generator,
    brain: np.ndarray | None = None,
) -> np.ndarray:
    """A template-grid signal as the site's scanner stores it; zero outside `brain` (skull-stripped) if given."""
    f32 = np.float32
    sigmas = _psf_sigma_vox(template, site, grid)
    if max(sigmas) > 0.05:
        img = ndimage.gaussian_filter(img, sigmas, truncate=3.0)
    img = to_grid(img, template, grid)
    if site.gamma != 1.0:
        img = np.power(np.maximum(img, 0, out=img), f32(site.gamma))
    if site.bias > 0:
        knots = knots_for(img.shape, float(min(grid.spacing)), BIAS_CONTROL_MM)
        img *= np.exp(f32(site.bias) * smooth_field(img.shape, knots, rng))
    if site.noise > 0:
        n1 = rng.standard_normal(img.shape, dtype=f32)
        n1 *= f32(site.noise)
        n1 += img
        n2 = rng.standard_normal(img.shape, dtype=f32)
        n2 *= f32(site.noise)
        img = np.sqrt(n1 * n1 + n2 * n2)
    if site.scale != 1.0:
        img *= f32(site.scale)
    if site.offset != 0.0:
        img += f32(site.offset)
    if brain is not None:
        img *= brain
    return img.astype(f32, copy=False)


def stored_image(array: np.ndarray, grid: Grid, orientation: str) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(grid.direction) != orientation:
        image = sitk.DICOMOrient(image, orientation)
    return image


def make_case(template: Template, site: SiteSpec, rng: np.random.Generator) -> Case:
    """One case of `site`: anatomy and lesions on the template grid, then acquired on the site's grid."""
    streams = [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=STREAMS)]
    tissue = deform(template, site.deformation_mm, streams[0])
    core, whole, info = place_lesions(template, tissue, site.lesions, streams[1])
    grid = acquisition_grid(template, site)
    images = {}
    for channel in sorted(site.channels, key=CHANNELS.index):  # canonical order; unknown names raise
        stream = streams[2 + CHANNELS.index(channel)]
        array = channel_image(tissue, core, whole, site.channels[channel], template, site, grid, stream)
        images[channel] = stored_image(array, grid, site.orientation)
    labels = label_map(to_grid(core, template, grid), to_grid(whole, template, grid), site.annotation)
    return Case(images=images, label=stored_image(labels, grid, site.orientation), site=site.name, lesions=info)
