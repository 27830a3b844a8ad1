"""The MNI ICBM152 2009a template (T1, GM and WM maps, 1 mm) that the nilearn wheel ships.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University. Permission to use, copy, modify and
distribute for any purpose, provided this notice appears in all copies.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError

MNI_NOTICE = (
    "MNI ICBM152 2009a template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    "Montreal Neurological Institute, McGill University. Permission to use, copy, modify and distribute "
    "for any purpose, provided this notice appears in all copies."
)
_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def template_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise InputError("the MNI template needs the 'nilearn' package (pip install 'uharmony[data]')")
    return Path(spec.origin).parent / "datasets" / "data"


@dataclass(frozen=True)
class Template:
    """Tissue probability maps (z, y, x arrays in [0, 1]) and the template's geometry."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    geometry: sitk.Image  # an empty image with the template grid

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.GetSpacing()

    @cached_property
    def depth_mm(self) -> np.ndarray:
        """Distance (mm) from each brain voxel to the brain's outer surface: deep vs superficial lesion sites."""
        from scipy import ndimage  # comes with nilearn, which the template needs anyway

        return ndimage.distance_transform_edt(self.mask, sampling=self.spacing[::-1]).astype(np.float32)


def _resample(image: sitk.Image, spacing: float) -> sitk.Image:
    size = [round(n * s / spacing) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


@lru_cache(maxsize=4)
def load_template(spacing: float = 1.0) -> Template:
    """The template at an isotropic spacing (mm); cached because every case starts from it."""
    folder = template_folder()
    images = {}
    for key, name in _FILES.items():
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: MNI template file missing from the nilearn package")
        img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
        images[key] = img if abs(spacing - 1.0) < 1e-6 else _resample(img, spacing)
    t1 = sitk.GetArrayFromImage(images["t1"]) / 255.0
    gm = sitk.GetArrayFromImage(images["gm"]) / 255.0
    wm = sitk.GetArrayFromImage(images["wm"]) / 255.0
    mask = t1 > 0.2
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    geometry = sitk.Image(images["t1"].GetSize(), sitk.sitkUInt8)
    geometry.CopyInformation(images["t1"])
    return Template(t1=t1, gm=gm * mask, wm=wm * mask, csf=csf, mask=mask, geometry=geometry)
