"""Time per case of a model bundle, as a user runs it: `uharmony segment` in its own process on a 1 mm scan.

    .venv/bin/python benchmarks/case_time.py [--model BUNDLE] [--case FILE ...] [--repeats 3] [--write-card]
        [--out docs/results/case_time.json]

The case is the bundled sample case (or `--case`, one file per model channel) resampled to
1 mm (the grid a clinical scan usually arrives on; the engine resamples it to the model's
grid as it would a real scan). Every
device this machine offers is timed (the CPU always; CUDA and MPS where present), with
one pass (the default) and with 4 mirrored passes, `--repeats` times each; medians are reported. "seconds"
is the engine's own figure (bundle check, reading, preprocessing, gate and segmentation
passes, writing); "wall_seconds" adds the process start and imports, which the Slicer
panel also waits for. `--write-card` records the figures in the card
(`inference.expected_seconds`, per device, other devices' figures kept), where the model
list shows them; the weights stay byte-identical.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from UHarmonyLib.commands.demo import sample_channels
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.model.card import read_card, set_expected_seconds
from UHarmonyLib.options import MIRRORED_PASSES
from UHarmonyLib.resources import default_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "case_time.json"


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def processor() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def one_mm_case(channels: list[Path], folder: Path) -> list[Path]:
    """Each channel resampled (linear) to 1 mm over the same field of view."""
    out = []
    for index, path in enumerate(channels):
        image = sitk.ReadImage(str(path))
        size = [round(n * s) for n, s in zip(image.GetSize(), image.GetSpacing())]
        resampled = sitk.Resample(
            image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (1.0, 1.0, 1.0),
            image.GetDirection(), 0.0, image.GetPixelID(),
        )  # fmt: skip
        target = folder / f"{index}_{path.name}"
        sitk.WriteImage(resampled, str(target))
        out.append(target)
    return out


def run_once(model: Path, case: list[Path], device: str, mirror: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "UHarmonyLib", "segment", "--model", str(model), "--out", str(out)]
    cmd += [
        "--device",
        device,
        "--progress",
        "json",
        "--mirror-passes",
        str(MIRRORED_PASSES if mirror else 1),
        *map(str, case),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"segment failed on {device}: {done.stderr.strip().splitlines()[-1:]}")
    result = next(e for e in map(json.loads, done.stdout.splitlines()) if e.get("event") == "result")
    return {"seconds": result["seconds"], "wall_seconds": round(wall, 3), "passes": result["passes"]}


def measure(model: Path, case: list[Path], devices: list[str], repeats: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    for device in devices:
        for mirror in (True, False):
            runs = [run_once(model, case, device, mirror, work / "seg.nii.gz") for _ in range(repeats)]
            row = {
                "device": device,
                "mirror": mirror,
                "passes": runs[0]["passes"],
                "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                "wall_seconds": round(statistics.median(r["wall_seconds"] for r in runs), 2),
                "runs": runs,
            }
            seconds, wall = row["seconds"], row["wall_seconds"]
            print(f"{device:5s} mirror={mirror!s:5s} {seconds:7.2f} s in the engine, {wall:7.2f} s wall")
            rows.append(row)
    return rows


def card_figures(rows: list[dict[str, Any]], device: str, case_text: str, date: str) -> dict[str, Any]:
    mirrored = next(r for r in rows if r["device"] == device and r["mirror"])
    single = next(r for r in rows if r["device"] == device and not r["mirror"])
    machine = processor() if device == "cpu" else torch.cuda.get_device_name() if device == "cuda" else "Apple GPU"
    return {
        "seconds": mirrored["seconds"],
        "wall_seconds": mirrored["wall_seconds"],
        "no_mirror_seconds": single["seconds"],
        "machine": machine,
        "threads": torch.get_num_threads(),
        "case": case_text,
        "measured": date,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(), help="model bundle (default: the default)")
    parser.add_argument("--case", type=Path, nargs="+", help="one file per model channel (default: the sample case)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per device and mirroring setting")
    parser.add_argument("--write-card", action="store_true", help="record the figures in the model's card")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = parser.parse_args(argv)
    card = read_card(args.model)
    devices = available_devices()
    date = dt.date.today().isoformat()
    with tempfile.TemporaryDirectory(prefix="uharmony-case-time-") as tmp:
        source = args.case or sample_channels([c["name"] for c in card["channels"]])[0]
        case = one_mm_case(source, Path(tmp))
        shape = list(sitk.ReadImage(str(case[0])).GetSize())
        case_text = f"a 1 mm brain scan ({' x '.join(map(str, shape))} voxels, {len(case)} channels)"
        rows = measure(args.model, case, devices, args.repeats, Path(tmp))
    doc = {
        "model": f"{card['name']} v{card['version']}",
        "case": f"the bundled sample case resampled to 1 mm: {case_text}",
        "case_shape": shape,
        "repeats": args.repeats,
        "rows": rows,
        "expected_seconds": {d: card_figures(rows, d, case_text, date) for d in devices},
        "machine": {"processor": processor(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": date,
    }
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.write_card:
        for device, figures in doc["expected_seconds"].items():
            set_expected_seconds(args.model, device, figures)
        print(f"recorded {', '.join(devices)} figures in {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
