"""What diagnose measures on each case: appearance per channel, lesion structure, acquisition grid.

Appearance is measured on *normal* tissue only: the head mask (Otsu, as harmonization
uses) minus the lesions dilated by `LESION_MARGIN_MM`, after a per-image robust z-score
((x - median) / (IQR / 1.349)). The z-score removes what every model's own input
normalization removes anyway (gain and offset); excluding lesions keeps cohorts with
more or larger lesions from looking like different scanners. What is left (contrast
between tissues, gamma, noise, blur, bias field) is the appearance shift harmonization
can act on. Structure is measured on the annotated lesions: volume, count, size and
location relative to the head's centre (so head placement in the scanner does not count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.data.cases import LoadedCase
from UHarmonyLib.image_harmonization import n4
from UHarmonyLib.image_harmonization.mask import foreground_mask
from UHarmonyLib.image_harmonization.scaling import IQR_PER_SD

PROBS = np.linspace(0.01, 0.99, 99)  # the quantile function's grid (W1 distance = mean |Qa - Qb| over it)
HIST_EDGES = np.linspace(-5.0, 5.0, 101)  # normalized intensity histogram for the report
LESION_MARGIN_MM = 4.0
BIAS_SETTINGS = {**n4.SETTINGS, "shrink_mm": 12.0, "iterations": [50, 50]}  # strength only: a coarse fit suffices
BACKGROUND_MARGIN = 2  # voxels between the head mask and the background used for noise


@dataclass
class ChannelFeatures:
    """One channel of one case: its normal-tissue intensity distribution and noise."""

    quantiles: list[float]  # robust-z intensities at PROBS
    histogram: list[float]  # density over HIST_EDGES
    snr: float | None  # (median tissue - median background) / background sd; None without a noisy background


@dataclass
class CaseFeatures:
    """Everything diagnose compares between sites, for one case."""

    case: str
    site: str
    spacing: list[float]  # mm along the first channel's axes, sorted (orientation does not matter)
    labels: list[str]  # label names the case annotates
    bias: float = 0.0  # sd of N4's log bias field in the head, first channel (the coil's field is the session's)
    channels: dict[str, ChannelFeatures] = field(default_factory=dict)
    lesion_ml: float = 0.0
    lesions: list[dict[str, Any]] = field(default_factory=list)  # ml, centre_mm (RAS, relative to the head's centre)

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "channels"}
        out["lesion_count"] = self.lesion_count
        out["channels"] = {c: {"snr": f.snr} for c, f in self.channels.items()}
        return out


def _ras_centroid(mask: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """Physical centroid (RAS mm) of a (z, y, x) mask on `reference`'s grid."""
    idx = np.argwhere(mask)[:, ::-1].mean(0)
    lps = np.asarray(reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))
    return lps * np.array([-1.0, -1.0, 1.0])


def _dilate(mask: np.ndarray, reference: sitk.Image, margin_mm: float) -> np.ndarray:
    radius = [max(1, round(margin_mm / s)) for s in reference.GetSpacing()]
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryDilate(image, radius)).astype(bool)


def channel_features(
    image: sitk.Image, lesions: np.ndarray, where: str, head: np.ndarray | None = None
) -> ChannelFeatures:
    """Normal-tissue distribution (robust z) and SNR of one channel image.

    `head` (default: Otsu's mask of `image`) lets a harmonized image be measured on its original's
    tissue: Otsu on a z-scored, skull-stripped image (tissue either side of its zero background) is not the head.
    """
    head = foreground_mask(image, where) if head is None else head
    x = sitk.GetArrayViewFromImage(image)
    tissue = x[head & ~_dilate(lesions, image, LESION_MARGIN_MM)].astype(np.float64)
    if tissue.size < 100:
        tissue = x[head].astype(np.float64)
    q1, median, q3 = np.percentile(tissue, [25.0, 50.0, 75.0])
    z = (tissue - median) / max(float(q3 - q1) / IQR_PER_SD, 1e-12)
    hist, _ = np.histogram(np.clip(z, HIST_EDGES[0], HIST_EDGES[-1]), bins=HIST_EDGES, density=True)
    background = x[~_dilate(head, image, BACKGROUND_MARGIN * max(image.GetSpacing()))]
    noise = float(background.std()) if background.size > 100 else 0.0
    snr = (float(median) - float(np.median(background))) / noise if noise > 0 else None
    return ChannelFeatures(
        quantiles=np.quantile(z, PROBS).round(4).tolist(),
        histogram=hist.round(5).tolist(),
        snr=None if snr is None else round(snr, 3),
    )


def lesion_features(features: CaseFeatures, lesions: np.ndarray, head: np.ndarray, reference: sitk.Image) -> None:
    """Total volume and each lesion (26-connected component): its volume and centre relative to the head's."""
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    features.lesion_ml = round(float(lesions.sum()) * voxel_ml, 3)
    if not lesions.any():
        return
    image = sitk.GetImageFromArray(lesions.astype(np.uint8))
    image.CopyInformation(reference)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(sitk.ConnectedComponent(image, True))
    head_centre = _ras_centroid(head, reference)
    for label in shapes.GetLabels():
        centre = np.asarray(shapes.GetCentroid(label)) * np.array([-1.0, -1.0, 1.0]) - head_centre  # LPS -> RAS
        ml = shapes.GetNumberOfPixels(label) * voxel_ml
        features.lesions.append({"ml": round(ml, 4), "centre_mm": centre.round(2).tolist()})


def case_features(
    name: str, site: str, labels: list[str], loaded: LoadedCase, channel_names: list[str], where: str
) -> CaseFeatures:
    """Measure one loaded case (images in `channel_names` order, absent channels all-zero)."""
    reference = loaded.images[loaded.present[0]]
    lesions = loaded.groups_zyx > 0
    features = CaseFeatures(name, site, sorted(round(s, 4) for s in reference.GetSpacing()), labels)
    for c in loaded.present:
        features.channels[channel_names[c]] = channel_features(loaded.images[c], lesions, f"{where} {channel_names[c]}")
    head = foreground_mask(reference, where)
    features.bias = round(n4.bias_strength(reference, head, BIAS_SETTINGS), 4)
    lesion_features(features, lesions, head, reference)
    return features
