"""Peak memory of `uharmony segment` against the input's size.

    .venv/bin/python benchmarks/memory.py [--model BUNDLE] [--sizes 160x160x100 240x240x155 ...] [--quick]
        [--out docs/results/memory.json]

Each run is `uharmony segment --no-mirror` in its own process on a synthetic 1 mm head-like
volume (an ellipsoid of noisy tissue in a zero background, float32 NIfTI), with and without
`--probabilities`; the process reports its own peak resident memory (getrusage, exact, no
sampling). The baseline, run in the same session, is the same command on a 32^3 volume: what
the process needs whatever the input (Python, torch, MONAI, the model). The figure is
`bytes_per_voxel`, the peak above that baseline divided by the number of input voxels; a
pipeline that works in model space and keeps one full-resolution class at a time stays flat
as the input grows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.resources import BUNDLED_MODELS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "memory.json"
DEFAULT_SIZES = ("160x160x100", "240x240x155", "320x320x200", "400x400x260")
CHILD = (
    "import resource, sys\n"
    "from UHarmonyLib.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def head_volume(size_xyz: tuple[int, int, int], path: Path) -> Path:
    """A 1 mm float32 volume: noisy tissue inside an ellipsoid, exact zeros outside (as a skull-stripped scan)."""
    x, y, z = size_xyz
    zz, yy, xx = np.ogrid[:z, :y, :x]
    inside = ((zz - z / 2) / (z / 2.2)) ** 2 + ((yy - y / 2) / (y / 2.2)) ** 2 + ((xx - x / 2) / (x / 2.2)) ** 2 < 1
    array = np.zeros((z, y, x), np.float32)
    array[inside] = np.random.default_rng(0).normal(100, 5, int(inside.sum())).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))
    return path


def peak_mb(model: Path, image: Path, work: Path, probabilities: bool) -> tuple[float, float]:
    """Peak resident memory (MB) and wall seconds of one `uharmony segment` process."""
    args = ["segment", "--model", str(model), str(image), "--out", str(work / "seg.nii.gz"), "--no-mirror"]
    args += ["--probabilities", str(work / "probs.nii.gz")] if probabilities else []
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"segment failed on {image.name}: {run.stderr.strip().splitlines()[-1:]}")
    line = next(ln for ln in run.stderr.splitlines() if ln.startswith("peak_kb "))
    return int(line.split()[1]) / 1024, seconds


def parse_size(text: str) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in text.lower().split("x"))
    return x, y, z


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODELS / "uharmony-starter-v1")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="input sizes XxYxZ at 1 mm")
    parser.add_argument("--quick", action="store_true", help="the two smallest sizes only: a smoke check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in (args.sizes[:2] if args.quick else args.sizes)]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="uharmony-memory-") as tmp:
        work = Path(tmp)
        baseline, _ = peak_mb(args.model, head_volume((32, 32, 32), work / "tiny.nii.gz"), work, False)
        print(f"baseline (32^3 input): {baseline:.0f} MB")
        for size in sizes:
            image = head_volume(size, work / "case.nii.gz")
            voxels = int(np.prod(size))
            for probabilities in (False, True):
                mb, seconds = peak_mb(args.model, image, work, probabilities)
                per_voxel = (mb - baseline) * 2**20 / voxels
                rows.append(
                    {
                        "size": list(size),
                        "voxels": voxels,
                        "probabilities": probabilities,
                        "peak_rss_mb": round(mb, 1),
                        "bytes_per_voxel": round(per_voxel, 1),
                        "seconds": round(seconds, 1),
                    }
                )
                print(f"{'x'.join(map(str, size)):>12s} probabilities={probabilities!s:5s} {mb:7.0f} MB peak, "
                      f"{per_voxel:5.1f} bytes per input voxel above the baseline, {seconds:5.1f} s")  # fmt: skip
    doc = {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "baseline_peak_rss_mb": round(baseline, 1),
        "rows": rows,
        "bytes_per_voxel_max": max(r["bytes_per_voxel"] for r in rows if not r["probabilities"]),
        "definitions": {
            "bytes_per_voxel": "(peak RSS of the run - peak RSS of the 32^3 baseline run) / input voxels",
            "peak_rss_mb": "the segment process's own peak resident memory (getrusage ru_maxrss)",
        },
        "command": " ".join(["memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.date.today().isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
