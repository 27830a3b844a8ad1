"""Data-side harmonization: make every site's images look alike before the model sees them.

Methods (`METHODS`): `n4` (bias-field correction), `zscore` and `percentile` (per-image
affine scaling), `nyul` (landmark standardization learned from chosen sites),
`match` (histogram matching to a reference learned from them) and `whitestripe`
(normal white matter as the unit). One interface for all:

    params = fit(method, {channel: [(where, image), ...]})   # plain JSON, no pickle
    image = apply(image, params, channel, where)

`fit` learns nothing for methods that need no training images (it records their
settings). `params` is what a model card stores under `preprocessing.harmonize`, so
inference repeats exactly what training did. Every method measures intensities in
Otsu's foreground (mask.py) and maps the whole image, except voxels that are exactly 0
(outside a skull-stripped brain, padding): they stay 0, because the model reads 0 as
"no data" (its nonzero normalization, the gate's foreground weight, absent channels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization import matching, n4, nyul, scaling, whitestripe
from UHarmonyLib.image_harmonization.mask import Voxels, voxels

FORMAT = 1
Samples = Iterable[tuple[str, np.ndarray]]  # (where, foreground intensities) per image
Transform = Callable[[Voxels, dict[str, Any], dict[str, Any], str], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One method: its default settings, how it learns per channel (if at all) and how it maps an image."""

    name: str
    summary: str
    settings: dict[str, Any]
    transform: Transform
    needs_fit: bool = False  # learns from training images (else `fit_channel` sees none)
    fit_channel: Callable[[Samples, dict[str, Any], str], dict[str, Any]] | None = None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("n4", "N4 bias-field correction (SimpleITK) in Otsu's foreground", n4.SETTINGS, n4.correct),
        Method("zscore", "robust z-score in the foreground: (x - median) / (IQR / 1.349)", {}, scaling.zscore),
        Method("percentile", "foreground percentiles (1, 99) to 0 and 1", scaling.PERCENTILE, scaling.percentile),
        Method(
            "nyul",
            "Nyúl-Udupa landmark standardization learned on the fitted images",
            nyul.SETTINGS,
            nyul.apply,
            needs_fit=True,
            fit_channel=nyul.fit,
        ),
        Method(
            "match",
            "histogram matching (SimpleITK) to the fitted images' most typical one",
            matching.SETTINGS,
            matching.apply,
            needs_fit=True,
            fit_channel=matching.fit,
        ),
        Method(
            "whitestripe",
            "WhiteStripe: z-score by the normal white matter's intensity stripe",
            whitestripe.SETTINGS,
            whitestripe.apply,
            fit_channel=lambda _samples, _settings, channel: whitestripe.fit_channel(channel),
        ),
    )
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown harmonization method '{name}' (use {', '.join(METHODS)})")
    return METHODS[name]


def _samples(images: Iterable[tuple[str, sitk.Image]]) -> Samples:
    for where, image in images:
        yield where, voxels(image, where).fg


def fit(
    name: str, images: Mapping[str, Iterable[tuple[str, sitk.Image]]], settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Parameters of `name` learned from `images` ({channel: [(where, image), ...]}, read lazily)."""
    m = method(name)
    chosen = {**copy.deepcopy(m.settings), **(settings or {})}
    channels = {}
    if m.fit_channel is not None:
        for channel, items in images.items():
            channels[channel] = m.fit_channel(_samples(items) if m.needs_fit else iter(()), chosen, channel)
    return {"method": name, "format": FORMAT, "settings": chosen, "channels": channels}


def check_params(params: Any) -> str | None:
    """What is wrong with a parameter set (None when it is usable); the caller says where it came from."""
    if not isinstance(params, dict):
        return "harmonization parameters must be a JSON object"
    name = params.get("method")
    if name not in METHODS:
        return f"unknown harmonization method {name!r} (known: {', '.join(METHODS)})"
    if not isinstance(params.get("format"), int) or params["format"] > FORMAT:
        return f"harmonization parameters format {params.get('format')!r} is not one this version reads ({FORMAT})"
    if not isinstance(params.get("settings"), dict) or not isinstance(params.get("channels"), dict):
        return "harmonization parameters need 'settings' and 'channels' objects"
    missing = next((k for k in METHODS[name].settings if k not in params["settings"]), None)
    return f"{name} settings lack '{missing}'" if missing else None


def apply(image: sitk.Image, params: dict[str, Any], channel: str, where: str) -> sitk.Image:
    """`image` harmonized as `params` say (float32, same grid); one-line errors name `where`."""
    m = method(params["method"])
    fitted = params["channels"].get(channel)
    if fitted is None and m.needs_fit:
        known = ", ".join(params["channels"]) or "none"
        raise InputError(f"{where}: the {m.name} parameters hold no channel '{channel}' (fitted: {known})")
    if fitted is None and m.fit_channel is not None:
        fitted = m.fit_channel(iter(()), params["settings"], channel)
    v = voxels(image, where)
    out = np.where(v.x == 0, 0.0, m.transform(v, params["settings"], fitted or {}, where))
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.CopyInformation(image)
    return result


def apply_channels(
    images: Sequence[sitk.Image], params: dict[str, Any], channels: Sequence[str], where: str
) -> list[sitk.Image]:
    """A case's channels harmonized in model order; an all-zero image (an absent channel) stays zero."""
    if len(images) != len(channels):
        raise ValueError(f"{len(images)} images for {len(channels)} channel names")
    return [
        image if not sitk.GetArrayViewFromImage(image).any() else apply(image, params, channel, f"{where} {channel}")
        for image, channel in zip(images, channels)
    ]
