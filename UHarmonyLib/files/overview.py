"""A PNG overview of a result: three orthogonal slices through the lesion, outlines drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import atomic_path


def write_overview(
    image: sitk.Image, labels: sitk.Image, label_info: Sequence[dict[str, Any]], path: Path, title: str = ""
) -> None:
    """Axial, coronal and sagittal slices, each where the result has the most voxels, in RAS display orientation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("the PNG overview needs matplotlib (pip install 'uharmony[data]')") from e
    img = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS")).transpose(2, 1, 0)
    lab = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "RAS")).transpose(2, 1, 0)
    fg = lab > 0
    centre = [
        int(fg.sum(axis=tuple(a for a in range(3) if a != i)).argmax()) if fg.any() else n // 2
        for i, n in enumerate(lab.shape)
    ]
    lo, hi = np.percentile(img[img > 0] if (img > 0).any() else img, [1, 99.5])
    views = [
        ("axial", img[:, :, centre[2]], lab[:, :, centre[2]]),
        ("coronal", img[:, centre[1], :], lab[:, centre[1], :]),
        ("sagittal", img[centre[0], :, :], lab[centre[0], :, :]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, sl, ls) in zip(axes, views):
        ax.imshow(sl.T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        for info in label_info:
            mask = (ls == info["value"]).T
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[info["color"]], linewidths=1.0)
        ax.set_title(name)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=i["color"], label=i["name"]) for i in label_info]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
