"""The CUDA path on a lent GPU, checked and timed: training steps and segmentation, written to docs/results.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--no-compile] [--spacing MM]
        [--budget-minutes 8] [--out docs/results/gpu_check.json] [--work DIR]

Training: the default U-Harmony network (TrainConfig's defaults: DynUNet 16-256, cubic restore,
site rows as shared + offset) on the `clinics` scenario from `uharmony synth` (one case per
site, 2 mm: the default model's grid; each case padded to the patch as training pads it),
patch 128^3, batch 2, in the library's own Trainer: its train_step, with autocast in the
precision resolve_precision picks (bfloat16 where the GPU has it, else float16 with a
GradScaler). Four variants: the network and its input contiguous or channels_last_3d,
eager or under `--compile`. Every variant starts from the same weights and trains the same
batches, cut once before any timing, so its seconds are the device's alone (`batch_seconds`,
the CPU's time to cut one batch, says whether training would need `--workers`): the first
step (CUDA start, compiling) and the median of the others, peak GPU memory, and the losses.
Checks: every loss finite, each variant's first loss within 2 % of the eager contiguous one
(the same batch through the same weights), each compiled variant finished.

Segmentation: `uharmony segment` (run_segment, as the demo calls it) on the bundled sample case
with the bundled default model, in float32 and in the default precision (after one untimed
warm-up run on CUDA), `repeats` times each, medians; checks: it ran on the device asked for,
and the default precision's label map agrees with float32's (whole-lesion Dice >= 0.99).

Eager variants and segmentation run first; a compiled variant starts only while the budget
(default 8 min, under the device's 10-minute limit per command) leaves room for it. The JSON
is rewritten (atomically) after every part, so a run cut short keeps what it measured;
`complete` is true at the end. Exit 0 when every check holds, 1 when one fails, 2 when the
device asked for is absent. `--quick`: patch 96, 4 steps, one compiled variant, no mirroring;
on the CPU (the suite's smoke test): a 4 mm dataset, a tiny network, no torch.compile (inductor
compiles C++ for minutes there).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch
from case_time import processor

from UHarmonyLib.cli import main as uharmony
from UHarmonyLib.commands import segment
from UHarmonyLib.commands.demo import sample_channels
from UHarmonyLib.errors import UHarmonyError
from UHarmonyLib.evaluation.scoring import WHOLE, dice_scores
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.model.card import read_card
from UHarmonyLib.options import defaults
from UHarmonyLib.progress import SilentReporter
from UHarmonyLib.resources import default_model
from UHarmonyLib.training.compiling import check_compile
from UHarmonyLib.training.config import TrainConfig
from UHarmonyLib.training.distributed import World
from UHarmonyLib.training.loop import Trainer
from UHarmonyLib.training.sampling import Batch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "gpu_check.json"
CONTIGUOUS, CHANNELS_LAST = "contiguous", "channels_last_3d"
LOSS_TOLERANCE = 0.02  # relative difference of a variant's first loss from the eager contiguous one
AGREEMENT = 0.99  # whole-lesion Dice of the default precision's label map against float32's
FIRST_COMPILE_GUESS = 240.0  # seconds a compiled variant is assumed to need before one has been measured
FULL: dict[str, Any] = {
    "spacing": 2.0,
    "patch": 128,
    "steps": 12,
    "repeats": 2,
    "mirror": True,
    "compiled": [CONTIGUOUS, CHANNELS_LAST],
}
QUICK: dict[str, Any] = {**FULL, "patch": 96, "steps": 4, "repeats": 1, "mirror": False, "compiled": [CONTIGUOUS]}
QUICK_CPU: dict[str, Any] = {**QUICK, "spacing": 4.0, "patch": 32, "steps": 3, "filters": [4, 8, 16], "compiled": []}


def dataset(work: Path, spacing: float) -> Path:
    """The `clinics` scenario, one case per site, written once into `work` and reused."""
    folder = work / f"clinics-{spacing:g}mm"
    if not (folder / "dataset.json").is_file():
        args = ["synth", "--scenario", "clinics", "--out", str(folder), "--spacing", f"{spacing:g}"]
        if uharmony([*args, "--cases-per-site", "1", "--overwrite"]) != 0:
            raise SystemExit("gpu_check: synth failed")
    return folder


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device_name": processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "processor": processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


def synced(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_config(data: Path, work: Path, plan: dict[str, Any], device: torch.device) -> TrainConfig:
    """TrainConfig's defaults but for the patch (and the quick CPU run's tiny network); no validation or checkpoints."""
    size = int(plan["patch"])
    config = TrainConfig(
        data=[data], out=work / "never-written", steps=plan["steps"], patch=(size, size, size), device=device.type,
        val_fraction=0.0, checkpoint_every=plan["steps"] + 1, scaler_patches=4,
    )  # fmt: skip
    if "filters" in plan:
        config = replace(config, filters=tuple(plan["filters"]))
    config.check()
    return config


def train_variant(
    config: TrainConfig, device: torch.device, layout: str, batches: list[Batch] | None
) -> tuple[dict[str, Any], list[Batch]]:
    """One variant's steps on `batches` (cut here when None, timed on the CPU); its row and the batches."""
    reset_peak(device)
    started = time.perf_counter()
    trainer = Trainer(config, SilentReporter(), World.from_env(), device)
    if layout == CHANNELS_LAST:  # in place: the optimizer keeps the same parameters
        trainer.net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    trainer.start()
    trainer.net.train()
    row: dict[str, Any] = {"layout": layout, "compile": config.compile, "precision": trainer.precision}
    if batches is None:
        t = time.perf_counter()
        batches = [trainer.sampler.batch(step) for step in range(1, trainer.total + 1)]
        row["batch_seconds"] = round((time.perf_counter() - t) / len(batches), 3)
    row["setup_seconds"] = round(time.perf_counter() - started, 2)
    seconds, losses = [], []
    layout_format = torch.channels_last_3d if layout == CHANNELS_LAST else torch.contiguous_format
    try:
        for step, batch in enumerate(batches, 1):
            image = batch.image.contiguous(memory_format=layout_format)
            t = synced(device)
            seg, gate, _ = trainer.train_step(step, replace(batch, image=image))
            seconds.append(synced(device) - t)
            losses.append(round(seg + config.gate_weight * gate, 5))
    except (UHarmonyError, torch.cuda.OutOfMemoryError) as e:  # a compiler that fails, a GPU too small
        row["error"] = " ".join(str(e).split())[:300]
    row.update(
        steps=len(seconds),
        first_step_seconds=round(seconds[0], 3) if seconds else None,
        step_seconds=round(statistics.median(seconds[1:]), 4) if len(seconds) > 1 else None,
        peak_gpu_memory_gib=peak_gib(device),
        losses=losses,
        seconds=round(time.perf_counter() - started, 1),
    )
    del trainer
    gc.collect()
    if config.compile:
        torch._dynamo.reset()  # the next variant compiles afresh
    return row, batches


def segment_once(
    model: Path, channels: list[Path], out: Path, device: torch.device, precision: str, mirror: bool
) -> tuple[dict[str, Any], sitk.Image]:
    """`uharmony segment` as the demo runs it (its printed summary swallowed): the payload and the label map."""
    given = {"model": model, "channels": channels, "out": out, "device": device.type, "precision": precision}
    args = argparse.Namespace(**{**defaults(segment.OPTIONS), **given, "no_mirror": not mirror})
    with contextlib.redirect_stdout(io.StringIO()):
        payload = segment.run_segment(args, SilentReporter(), emit_result=False)
    return payload, sitk.ReadImage(str(out))


def segmentation(device: torch.device, plan: dict[str, Any], work: Path) -> dict[str, Any]:
    """The sample case through the default model in float32 and the default precision: seconds and agreement."""
    model = default_model()
    card = read_card(model)
    channels, truth_path = sample_channels([c["name"] for c in card["channels"]])
    truth = sitk.ReadImage(str(truth_path))
    reset_peak(device)
    if device.type == "cuda":  # CUDA start and first kernels, not counted
        segment_once(model, channels, work / "warmup.nii.gz", device, "auto", plan["mirror"])
    runs: dict[str, list[dict[str, Any]]] = {"float32": [], "auto": []}
    labels: dict[str, sitk.Image] = {}
    for _ in range(plan["repeats"]):
        for precision in runs:
            payload, labels[precision] = segment_once(
                model, channels, work / f"{precision}.nii.gz", device, precision, plan["mirror"]
            )
            runs[precision].append(payload)
    figures = {
        name: {
            "precision": done[0]["precision"],
            "device": done[0]["device"],
            "passes": done[0]["passes"],
            "seconds": round(statistics.median(p["seconds"] for p in done), 3),
            "runs": [p["seconds"] for p in done],
            "dice_vs_reference": dice_scores(labels[name], truth, card["labels"]),
        }
        for name, done in runs.items()
    }
    return {
        "model": f"{card['name']}-v{card['version']}",
        "case": "Resources/SampleData (the bundled sample case)",
        "float32": figures["float32"],
        "default": figures["auto"],
        "speedup": round(figures["float32"]["seconds"] / figures["auto"]["seconds"], 3),
        "agreement_dice": dice_scores(labels["auto"], labels["float32"], card["labels"]),
        "peak_gpu_memory_gib": peak_gib(device),
    }


def checks(doc: dict[str, Any], device: torch.device) -> dict[str, bool]:
    rows = [r for r in doc["training"]["rows"] if "skipped" not in r]
    base = next((r for r in rows if r["layout"] == CONTIGUOUS and not r["compile"] and r["losses"]), None)
    found = {
        "training_losses_finite": bool(rows)
        and all(r["losses"] and all(map(math.isfinite, r["losses"])) for r in rows),
        "training_variants_ran": bool(rows) and all("error" not in r for r in rows),
        "first_losses_agree": base is not None
        and all(
            abs(r["losses"][0] - base["losses"][0]) <= LOSS_TOLERANCE * abs(base["losses"][0])
            for r in rows
            if r["losses"]
        ),
    }
    seg = doc.get("segmentation")
    if seg is not None:
        found["segmentation_on_device"] = all(seg[k]["device"].startswith(device.type) for k in ("float32", "default"))
        whole = seg["agreement_dice"][WHOLE]
        found["precision_agreement"] = whole is not None and whole >= AGREEMENT
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="patch 96, 4 steps, one compiled variant (cpu: tiny)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--spacing", type=float, help="synthetic cases' spacing in mm (2; quick cpu: 4)")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="start no compiled variant past this")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--work", type=Path, help="keeps the synthetic dataset for the next run (default: temporary)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device cuda: no CUDA device here (torch {torch.__version__}); run it where a GPU is "
              "lent, or with --device cpu --quick", file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device(args.device)
    plan = dict(QUICK_CPU if args.quick and device.type == "cpu" else QUICK if args.quick else FULL)
    plan["spacing"] = args.spacing or plan["spacing"]
    if args.no_compile or device.type == "cpu":
        plan["compiled"] = []
    started = time.perf_counter()
    about = machine(device)
    doc: dict[str, Any] = {
        "device": about["device_name"],
        "machine": about,
        "settings": plan,
        "training": {"rows": []},
        "checks": {},
        "complete": False,
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }

    def save() -> None:
        doc["seconds"] = round(time.perf_counter() - started, 1)
        write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="uharmony-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        data = dataset(work, plan["spacing"])
        rows, batches = doc["training"]["rows"], None
        config = train_config(data, Path(tmp), plan, device)
        doc["training"].update(
            data=f"synth clinics, 1 case per site, {plan['spacing']:g} mm", filters=list(config.filters),
            patch=list(config.patch), batch_size=config.batch_size, restore_degree=config.restore_degree,
        )  # fmt: skip
        for layout in (CONTIGUOUS, CHANNELS_LAST):
            row, batches = train_variant(config, device, layout, batches)
            rows.append(row)
            if "batch_seconds" in row:
                doc["training"]["batch_seconds"] = row.pop("batch_seconds")
            print(f"train {layout:16s} eager   : {row['step_seconds']} s/step (first {row['first_step_seconds']} s)")
            save()
        doc["segmentation"] = segmentation(device, plan, Path(tmp))
        seg = doc["segmentation"]
        print(f"segment float32 {seg['float32']['seconds']} s, {seg['default']['precision']} "
              f"{seg['default']['seconds']} s, agreement {seg['agreement_dice']}")  # fmt: skip
        save()
        needed = FIRST_COMPILE_GUESS
        for layout in plan["compiled"]:
            left = args.budget_minutes * 60 - (time.perf_counter() - started)
            if left < needed:
                skipped = f"{left:.0f} s of the budget left, {needed:.0f} s needed"
                rows.append({"layout": layout, "compile": True, "skipped": skipped})
                continue
            check_compile()
            row, _ = train_variant(replace(config, compile=True), device, layout, batches)
            rows.append(row)
            needed = row["seconds"] * 1.2
            print(f"train {layout:16s} compile : {row['step_seconds']} s/step (first {row['first_step_seconds']} s)")
            save()
    base = rows[0]["step_seconds"]
    for row in rows:
        if row.get("step_seconds") and base:
            row["speedup"] = round(base / row["step_seconds"], 3)
    doc["checks"] = checks(doc, device)
    doc["complete"] = True
    save()
    print(json.dumps(doc, indent=2))
    print(f"wrote {args.out}; checks: {', '.join(k for k, ok in doc['checks'].items() if not ok) or 'all hold'}")
    return 0 if all(doc["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
