"""Write the bundled sample case: one case of a site no bundled model was trained on.

The sample is a one-case dataset in the project's own layout (dataset.json, imagesTr/,
labelsTr/), so the demo reads it with the same reader as training data, ground truth
included. Its site is a fifth MR protocol (3 T, spoiled-gradient T1, long-TI FLAIR, 3 mm
slices) that no bundled model and no benchmark site uses, with all four BraTS channels.

    .venv/bin/python scripts/make_sample_case.py [--seed 2026]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

from UHarmonyLib.data.datasets import write_dataset
from UHarmonyLib.data.scenarios import PHYSICS_DEFAULTS
from UHarmonyLib.data.spec import parse_spec
from UHarmonyLib.resources import SAMPLE_DATA

SPEC = {
    "name": "uharmony-sample",
    "description": "One case of a held-out MR protocol (not in any bundled model's training data)",
    "channel_naming": "brats",
    "defaults": PHYSICS_DEFAULTS,
    "sites": [
        {
            "name": "held-out-clinic",
            "physics": {"field_strength": 3.0, "kspace": [0.85, 0.85, 1.0]},
            "channels": {
                "FLAIR": {"TR": 10000, "TE": 120, "TI": 2600},
                "T1w": {"sequence": "spgr", "TR": 20, "TE": 4, "flip": 25},
                "t1gd": {"sequence": "spgr", "TR": 20, "TE": 4, "flip": 25},
                "T2w": {"TR": 5000, "TE": 100},
            },
            "spacing": [2.0, 2.0, 3.0],
            "noise": 0.02,
            "bias": 0.15,
            "scale": 1200.0,
            "cases": 1,
        }
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args()
    spec = parse_spec(SPEC, "scripts/make_sample_case.py")
    staging = tempfile.mkdtemp(prefix=".sample-", dir=SAMPLE_DATA.parent)
    try:
        write_dataset(Path(staging), spec, args.seed, args.spacing, 1)
        for image in sorted((Path(staging) / "imagesTr").iterdir()):  # int16, as scanners store MRI: 4x smaller
            sitk.WriteImage(sitk.Cast(sitk.Round(sitk.ReadImage(str(image))), sitk.sitkInt16), str(image), True)
        os.chmod(staging, 0o755)
        shutil.rmtree(SAMPLE_DATA, ignore_errors=True)
        shutil.move(staging, SAMPLE_DATA)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {SAMPLE_DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
