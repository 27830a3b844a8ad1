"""Write the bundled sample case: one case of a site no bundled model was trained on.

The sample is a one-case dataset in the project's own layout (dataset.json, imagesTr/,
labelsTr/), so the demo reads it with the same reader as training data, ground truth
included. Its site differs in appearance from every site of the `mixed` scenario.

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
from UHarmonyLib.data.spec import parse_spec
from UHarmonyLib.resources import SAMPLE_DATA

SPEC = {
    "name": "uharmony-sample",
    "description": "One case of a held-out site (not in any bundled model's training data)",
    "sites": [
        {
            "name": "held-out-clinic",
            "gamma": 1.2,
            "noise": 0.03,
            "bias": 0.15,
            "scale": 800.0,
            "offset": 10.0,
            "blur": 0.5,
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
