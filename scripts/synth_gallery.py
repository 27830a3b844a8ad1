"""Pictures of the synthetic-data scenarios for docs/synthetic-data.md.

For each scenario: one case per site at 2 mm (the very case `uharmony synth --seed 0`
writes first for that site), one axial slice through its largest lesion per channel,
shown in RAS display orientation (neurological: the patient's left on the left) with
the label outlines. Each panel is windowed on its own, so the caption gives the
intensity range, which is where scale and offset show.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/synth_gallery.py [SCENARIO ...] [--out docs/images]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
import torch

from UHarmonyLib.data.datasets import case_rng, dataset_channels, generate_case
from UHarmonyLib.data.physics_spec import sequence_to_json
from UHarmonyLib.data.scenarios import SCENARIOS
from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.data.synth import SiteSpec
from UHarmonyLib.data.template import load_template
from UHarmonyLib.files.atomic import atomic_path

REPO = Path(__file__).resolve().parent.parent
OUTLINES = {"full": [(1, "#ff3030", "lesion core"), (2, "#ffd000", "edema")], "whole": [(1, "#30c0ff", "whole lesion")]}


def ras_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, ...]]:
    """(x, y, z) array in RAS index order and its spacing, whatever the file's orientation."""
    ras = sitk.DICOMOrient(image, "RAS")
    return sitk.GetArrayFromImage(ras).transpose(2, 1, 0), ras.GetSpacing()


def describe(site: SiteSpec) -> str:
    """The site's non-default effects in a few words, for the row label."""
    parts = []
    if site.physics is not None:
        parts.append(f"{site.physics.field_t:g} T")
        for channel, seq in site.physics.sequences.items():
            timing = "/".join(f"{v:g}" for k, v in sequence_to_json(seq).items() if k != "sequence")
            parts.append(f"\n{channel} {seq.kind} {timing}")
        if site.physics.kspace != (1.0, 1.0, 1.0):
            parts.append("\nk-space " + "×".join(f"{k:g}" for k in site.physics.kspace))
        if site.edema_margin_mm:
            parts.append(f"edema outline {site.edema_margin_mm:+g} mm")
        if site.rim_label != "core":
            parts.append("rim labelled edema")
    if site.gamma != 1:
        parts.append(f"γ {site.gamma:g}")
    if site.bias:
        parts.append(f"bias {site.bias:g}")
    parts.append(f"\nnoise {site.noise:g}" if site.physics is not None else f"noise {site.noise:g}")
    if site.blur:
        parts.append(f"blur {site.blur:g}")
    if site.slice_thickness:
        parts.append(f"slice {site.slice_thickness:g} mm")
    if site.spacing:
        parts.append("×".join(f"{s:g}" for s in site.spacing) + " mm")
    if site.fov_crop:
        parts.append("FOV " + "×".join(f"{lo:g}-{hi:g}" for lo, hi in site.fov_crop))
    if site.orientation != "RAS":
        parts.append(site.orientation)
    if site.annotation == "whole":
        parts.append("whole-lesion labels")
    les = site.lesions
    lesion = f"{les.count[0]}-{les.count[1]} lesions, r {les.radius_mm[0]:g}-{les.radius_mm[1]:g} mm"
    if les.region != ("any",):
        lesion += ", " + "+".join(les.region)
    return f"{site.name}\n" + ", ".join(parts) + f"\n{lesion}, deform {site.deformation_mm:g} mm"


def gallery(name: str, out: Path, spacing: float = 2.0, seed: int = 0) -> Path:
    spec = resolve_scenario(name)
    template = load_template(spacing)
    channels = dataset_channels(spec.sites)
    rows, cols = len(spec.sites), len(channels)
    fig, axes = plt.subplots(rows, cols + 1, figsize=(2.6 * cols + 2.6, 2.75 * rows), squeeze=False)
    for si, site in enumerate(spec.sites):
        case = generate_case(template, site, case_rng(seed, si, 0))
        lab = ras_array(case.label)[0]
        z = int(np.argmax((lab > 0).sum(axis=(0, 1)))) if (lab > 0).any() else lab.shape[2] // 2
        axes[si, 0].text(0.0, 0.5, describe(site), fontsize=7.5, va="center", ha="left", wrap=True)
        axes[si, 0].axis("off")
        for ci, channel in enumerate(channels):
            ax = axes[si, ci + 1]
            ax.axis("off")
            if si == 0:
                ax.set_title(channel, fontsize=10)
            if channel not in case.images:
                ax.text(0.5, 0.5, "not acquired", ha="center", va="center", fontsize=8, color="0.5")
                continue
            img, sp = ras_array(case.images[channel])
            sl = img[:, :, z].T
            lo, hi = np.percentile(img, [1, 99.8])
            extent = (0, sl.shape[1] * sp[0], 0, sl.shape[0] * sp[1])
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
            for value, color, _label in OUTLINES[site.annotation]:
                mask = (lab[:, :, z] == value).T
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=[color], linewidths=1.1, extent=extent, origin="lower")
            ax.text(2, 2, f"{img.min():.3g} … {img.max():.3g}", color="w", fontsize=6.5, va="bottom")
    handles = [
        plt.Line2D([], [], color=c, label=n) for c, n in [(v[1], v[2]) for v in OUTLINES["full"] + OUTLINES["whole"]]
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=8)
    fig.suptitle(f"scenario '{name}': {SCENARIOS[name]['description']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    path = out / f"synth_{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all ({', '.join(SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.scenarios or list(SCENARIOS):
        print(f"wrote {gallery(name, args.out, seed=args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
