"""Inference benchmark on one full 1 mm brain volume (the MNI ICBM152 2009 T1 template shipped by nilearn).

Usage: .venv/bin/python benchmarks/inference.py [--model BUNDLE] [--repeats N] [--quick] [--out JSON]
                                                [--only timings|passes|agreement]

Every figure is a ratio against a baseline measured in the same run on the same machine (medians of the
repeats). The bundle is copied with a card asking for 1 mm spacing and 96^3 windows (overlap 0.5), so the
volume is processed the way a real 1 mm model would process it. Results go to docs/results/inference.json.
Its "passes" section (benchmarks/passes.py) weighs test-time mirroring passes: Dice against seconds per case.
Its "bf16_agreement" section (benchmarks/precision.py) compares bfloat16 with float32 labels on cases with lesions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.resources
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import monai
import nibabel as nib
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, NormalizeIntensity, Orientation
from passes import CASES_PER_SITE as PASSES_CASES_PER_SITE
from passes import measure as measure_passes
from precision import measure as measure_agreement

from UHarmonyLib.files.volumes import read_volume, same_grid
from UHarmonyLib.inference.crop import Box, foreground_box
from UHarmonyLib.inference.device import autocast, cpu_has_bf16, resolve_precision
from UHarmonyLib.inference.preprocessing import ModelSpace, normalize, stack_channels
from UHarmonyLib.inference.windows import pad_to_roi, window_slices
from UHarmonyLib.model.weights import Bundle, load_bundle, make_card, save_bundle
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.resources import default_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "Resources" / "Models" / "uharmony-starter-v1"
DEFAULT_OUT = ROOT / "docs" / "results" / "inference.json"
TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
ROI = [96, 96, 96]
OVERLAP = 0.5
GOALS: dict[str, tuple[str, float]] = {
    "overhead_ratio": ("<=", 1.15),
    "harmony_cost_ratio": ("<=", 1.15),
    "vs_monai_ratio": ("<=", 0.5),
    "dice_agreement": (">=", 0.99),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Child:
    """A finished child process: wall time from spawn to reap, its own peak RSS, its stdout."""

    wall: float
    peak_rss_mb: float
    stdout: str


def run_child(cmd: list[str]) -> Child:
    """Run `cmd`; os.wait4 gives this very child's rusage, so ru_maxrss is its own peak RSS."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return Child(wall, usage.ru_maxrss / 1024.0, out.decode())


def template_copy(folder: Path) -> Path:
    """Copy nilearn's MNI152 2009 T1 template (197x233x189, 1 mm) into `folder`."""
    source = importlib.resources.files("nilearn") / "datasets" / "data" / TEMPLATE
    with importlib.resources.as_file(source) as path:
        return Path(shutil.copy(path, folder / "t1.nii.gz"))


def derive_bundle(source: Path, target: Path) -> Path:
    """A copy of the bundle whose card asks for 1 mm spacing and 96^3 windows with overlap 0.5."""
    bundle = load_bundle(source)
    card = bundle.card
    new = make_card(
        bundle.net,
        name=card["name"],
        version=card["version"],
        channels=card["channels"],
        labels=card["labels"],
        sites=card["sites"],
        title=card.get("title", ""),
        description=card.get("description", ""),
        preprocessing={**card["preprocessing"], "spacing": [1.0, 1.0, 1.0]},
        inference={**card["inference"], "patch_size": ROI, "overlap": OVERLAP},
        provenance={"derived_from": str(source), "purpose": "benchmarks/inference.py"},
        metrics=card.get("metrics"),
    )
    return save_bundle(bundle.net, new, target)


def cli_run(bundle: Path, image: Path, out: Path, precision: str = "auto") -> dict[str, Any]:
    """One `uharmony segment --progress json` in a fresh process: its result event, wall time and peak RSS."""
    exe = Path(sys.executable).with_name("uharmony")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "UHarmonyLib"]
    # one pass (--no-mirror): the MONAI baseline and the bare forward times cover the windows once
    args = ["segment", "--model", str(bundle), str(image), "--out", str(out), "--progress", "json", "--no-mirror"]
    child = run_child([*cli, *args, *(["--precision", precision] if precision != "auto" else [])])
    events = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    result = next(e for e in events if e["event"] == "result")
    return {**result, "wall": child.wall, "peak_rss_mb": child.peak_rss_mb}


def monai_script(model: Path, image: Path, out: Path, weights: list[float]) -> dict[str, Any]:
    """What a MONAI user would write: MONAI transforms, float32 sliding window, argmax, nibabel save."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    bundle = load_bundle(model)
    net, batch = bundle.net, int(bundle.inference.get("batch_size", 1))
    stages["load_model"] = time.perf_counter() - t0
    t = time.perf_counter()
    load = Compose(
        [
            LoadImage(image_only=True),
            EnsureChannelFirst(),
            Orientation(axcodes="RAS"),
            NormalizeIntensity(nonzero=True, channel_wise=True),
        ]
    )
    img = load(str(image))
    stages["transforms"] = time.perf_counter() - t
    t = time.perf_counter()
    w = torch.tensor([weights], dtype=torch.float32)
    with torch.inference_mode():
        logits = sliding_window_inference(
            img.unsqueeze(0),
            roi_size=ROI,
            sw_batch_size=batch,
            predictor=lambda p: net.segment(p, w.expand(p.shape[0], -1)),
            overlap=OVERLAP,
            mode="gaussian",
        )
        labels = logits.argmax(1)[0].to(torch.uint8)
    stages["inference"] = time.perf_counter() - t
    t = time.perf_counter()
    nib.save(nib.Nifti1Image(labels.numpy(), img.affine.numpy()), str(out))
    stages["save"] = time.perf_counter() - t
    return {"seconds": time.perf_counter() - t0, "stage_seconds": stages}


def monai_run(model: Path, image: Path, out: Path, weights: list[float]) -> dict[str, Any]:
    """`monai_script` in a fresh process (this file with --monai-child), like the CLI."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--monai-child", str(model), str(image), str(out)]
    child = run_child([*cmd, json.dumps(weights)])
    return {**json.loads(child.stdout.strip().splitlines()[-1]), "wall": child.wall, "peak_rss_mb": child.peak_rss_mb}


def preprocessed(bundle: Bundle, image: Path) -> tuple[torch.Tensor, Box]:
    """The volume exactly as the engine feeds it to the network (its foreground box, (1, C, x, y, z), as a plain
    tensor), and the box."""
    img = read_volume(image)
    space = ModelSpace.for_image(img, bundle.preprocessing)
    raw = stack_channels(space, [img])
    box = foreground_box(raw, ROI, OVERLAP)
    x = box.take(normalize(raw, bundle.preprocessing["intensity"])).unsqueeze(0)
    return x.as_subclass(torch.Tensor), box


def timed_forward(net: UHarmonyNet, patch: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> float:
    """Seconds of one bare `net.segment` call under the engine's autocast."""
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        start = time.perf_counter()
        net.segment(patch, weights.expand(patch.shape[0], -1))
        return time.perf_counter() - start


def forward_sum(
    net: UHarmonyNet, windows: list[torch.Tensor], weights: torch.Tensor, dtype: torch.dtype
) -> list[float]:
    """Per-call seconds of bare forward passes over the given (batched) windows."""
    return [timed_forward(net, patch, weights, dtype) for patch in windows]


def baseline_net(net: UHarmonyNet) -> UHarmonyNet:
    """The same backbone with plain InstanceNorm and a plain head, sharing every weight that fits."""
    cfg = net.config
    base = UHarmonyNet(
        NetworkConfig(
            cfg.in_channels,
            cfg.out_channels,
            cfg.num_sites,
            backbone=cfg.backbone,
            filters=cfg.filters,
            feature_size=cfg.feature_size,
            norm="instance",
            gated_heads=False,
        )
    ).eval()
    own = net.state_dict()
    shared = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    base.load_state_dict({k: own[k] for k in shared}, strict=False)
    return base


def harmony_cost(net: UHarmonyNet, patch: torch.Tensor, weights: torch.Tensor, pairs: int) -> dict[str, dict[str, Any]]:
    """U-Harmony vs plain-InstanceNorm forward time per precision, interleaved (order alternating)."""
    base = baseline_net(net)
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        nets = {"uharmony": net, "instance": base}
        for n in nets.values():
            timed_forward(n, patch, weights, dtype)  # warm-up: oneDNN primitive creation
        times: dict[str, list[float]] = {"uharmony": [], "instance": []}
        for i in range(pairs):
            for name in ("uharmony", "instance") if i % 2 == 0 else ("instance", "uharmony"):
                times[name].append(timed_forward(nets[name], patch, weights, dtype))
        ratio = median(times["uharmony"]) / median(times["instance"])
        out[str(dtype).replace("torch.", "")] = {"ratio": ratio, "seconds": times}
    return out


def dice(a_path: Path, b_path: Path) -> dict[str, float]:
    """Foreground Dice and exact label agreement of two label maps, on a checked common grid."""
    a, b = sitk.ReadImage(str(a_path)), sitk.ReadImage(str(b_path))
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(a.GetDirection())
    b = sitk.DICOMOrient(b, code)
    if not same_grid(a, b):
        raise RuntimeError(f"{a_path} and {b_path} are not on the same voxel grid")
    la, lb = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    fa, fb = la > 0, lb > 0
    total = int(fa.sum() + fb.sum())
    return {
        "dice": 2.0 * int((fa & fb).sum()) / total if total else 1.0,
        "label_agreement": float((la == lb).mean()),
        "foreground_voxels_uharmony": int(fa.sum()),
        "foreground_voxels_monai": int(fb.sum()),
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a temporary sibling, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def met(name: str, value: float) -> bool:
    op, goal = GOALS[name]
    return value <= goal if op == "<=" else value >= goal


def git_state() -> dict[str, Any]:
    """The commit and the locally modified UHarmonyLib files the figures were measured with."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "UHarmonyLib").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "uharmonylib_changes": [line[3:] for line in changed]}


class Meter:
    """Wall time of a block and the CPU cores other processes used meanwhile (/proc/stat minus this process tree)."""

    @staticmethod
    def _busy() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system  # children once reaped (os.wait4)

    def __enter__(self) -> Meter:
        self.start, self.busy, self.own = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.start
        foreign = (self._busy() - self.busy) - (self._own() - self.own)
        self.foreign_cores = round(max(foreign, 0.0) / max(self.wall, 1e-9), 3)


def wait_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait up to `limit` seconds until other processes use under `threshold` cores; returns their last load."""
    deadline = time.monotonic() + limit
    while True:
        with Meter() as probe:
            time.sleep(2.0)
        if probe.foreign_cores < threshold or time.monotonic() >= deadline:
            return probe.foreign_cores
        log(f"waiting for a quiet machine: other processes use {probe.foreign_cores:.2f} cores")
        time.sleep(10.0)


CLEAN = 0.25  # other processes may use at most this many cores during a block of a clean run


def measure(model: Path, repeats: int, pairs: int, work: Path, quiet: float) -> dict[str, Any]:
    """Run every measurement; returns raw timings and, per block, the cores other processes used.

    A repeat is clean when no block of it shared the CPU; up to `repeats` extra repeats replace unclean ones.
    """
    image = template_copy(work)
    bundle_path = derive_bundle(model, work / "bench-1mm")
    bundle = load_bundle(bundle_path)
    net, batch = bundle.net, int(bundle.inference.get("batch_size", 1))
    dtype = resolve_precision("auto", torch.device("cpu"))
    log(f"model {bundle.label_text} from {model}; 1 mm copy at {bundle_path}; default precision {dtype}")
    x, box = preprocessed(bundle, image)
    padded = pad_to_roi(x, ROI)
    slices = window_slices(padded.shape[2:], ROI, OVERLAP)
    windows = [
        torch.cat([padded[(slice(None), slice(None), *s)] for s in slices[i : i + batch]])
        for i in range(0, len(slices), batch)
    ]
    raw: dict[str, Any] = {"loadavg_start": os.getloadavg(), "runs": []}
    seg, mon = work / "seg.nii.gz", work / "monai.nii.gz"
    while sum(r["clean"] for r in raw["runs"]) < repeats and len(raw["runs"]) < 2 * repeats:
        n = len(raw["runs"]) + 1  # each repeat: import, CLI, MONAI script, bare forwards, so drift hits all alike
        run: dict[str, Any] = {
            "import_seconds": run_child([sys.executable, "-c", "import UHarmonyLib.inference.engine"]).wall
        }
        foreign = run["foreign_cores"] = {}
        wait_quiet(quiet)
        with Meter() as m:
            run["segment"] = cli = cli_run(bundle_path, image, seg)
        foreign["segment"] = m.foreign_cores
        if cli["windows"] != len(slices):
            raise RuntimeError(f"benchmark sees {len(slices)} windows, the CLI reported {cli['windows']}")
        weights = [float(v) for v in cli["gate"]["sites"].values()]
        wait_quiet(quiet)
        with Meter() as m:
            run["monai"] = monai_run(bundle_path, image, mon, weights)
        foreign["monai"] = m.foreign_cores
        w = torch.tensor([weights], dtype=torch.float32)
        raw.setdefault("forward_warmup_seconds", timed_forward(net, windows[0], w, dtype))
        wait_quiet(quiet)
        with Meter() as m:
            run["forward_seconds_per_call"] = forward_sum(net, windows, w, dtype)
        foreign["forwards"] = m.foreign_cores
        run["clean"] = max(foreign.values()) < CLEAN
        raw["runs"].append(run)
        log(
            f"run {n}: uharmony segment {cli['seconds']:.1f} s in process ({cli['wall']:.1f} s wall), MONAI float32 "
            f"{run['monai']['seconds']:.1f} s, bare forwards {sum(run['forward_seconds_per_call']):.1f} s "
            f"({len(windows)} calls); other processes used {foreign} cores{'' if run['clean'] else ': not clean'}"
        )
    raw["agreement"] = dice(seg, mon)
    cli_run(bundle_path, image, work / "seg32.nii.gz", "float32")  # tells precision from pipeline differences
    raw["agreement_float32"] = dice(work / "seg32.nii.gz", mon)
    log(f"harmony cost: {pairs} interleaved pairs per precision")
    centre = slices[len(slices) // 2]
    wait_quiet(quiet)
    with Meter() as m:
        raw["harmony_cost"] = harmony_cost(net, padded[(slice(None), slice(None), *centre)].contiguous(), w, pairs)
    raw["harmony_cost_foreign_cores"] = m.foreign_cores
    raw["loadavg_end"] = os.getloadavg()
    raw["context"] = {
        "volume_shape": list(box.shape),
        "crop_shape": list(box.size),
        "windows": len(slices),
        "windows_uncropped": len(window_slices([max(s, r) for s, r in zip(box.shape, ROI)], ROI, OVERLAP)),
        "forward_calls": len(windows),
        "batch_size": batch,
        "blend": bundle.inference.get("blend", "gaussian"),
        "model": {"bundle": _rel(model), "name": bundle.label_text, "architecture": bundle.card["architecture"]},
        "intensity": bundle.preprocessing["intensity"],
    }
    return raw


DEFINITIONS = {
    "overhead_ratio": "median in-process seconds of `uharmony segment` (the 'seconds' of its JSON result event: "
    "from after its imports through bundle load and checksum, reading, preprocessing, gate pass, segmentation pass, "
    "postprocessing and writing the .nii.gz) / median sum of bare net.segment forward times over the same windows "
    "(same count and batch, site weights, autocast precision, inference_mode, plain tensors; one warm-up call "
    "excluded)",
    "overhead_ratio_wall": "CLI process wall time (spawn to exit: interpreter start, imports, everything) / bare "
    "forward sum",
    "overhead_ratio_wall_minus_import": "(CLI wall time - wall time of "
    "`python -c 'import UHarmonyLib.inference.engine'`) / bare forward sum",
    "harmony_cost_ratio": "median forward time of the U-Harmony network / median forward time of the same DynUNet "
    "with plain InstanceNorm and a plain head (shared weights), one 1x1x96^3 window from the centre of the volume, "
    "interleaved pairs with alternating order; headline at the precision `segment` uses by default",
    "vs_monai_ratio": "median in-process seconds of `uharmony segment` / median in-process seconds of a plain MONAI "
    "float32 script (load_bundle, LoadImage + EnsureChannelFirst + Orientation RAS + NormalizeIntensity, "
    "sliding_window_inference gaussian with the same network, batch and overlap and the gate's site weights, argmax, "
    "nibabel save); both in fresh processes, timed after imports",
    "dice_agreement": "the bf16_agreement section's headline: the worst whole-lesion Dice between bfloat16 and "
    "float32 label maps on cases with lesions of realistic size (the issue's precision agreement; null when that "
    "section has not been measured)",
    "dice_agreement_monai_template": "foreground (label > 0) Dice between the label maps of the last uharmony and "
    "MONAI runs on the lesion-free template, read with SimpleITK and compared on a checked common grid: every "
    "foreground voxel either side is a false positive, so this measures where two pipelines put their false "
    "positives (the MONAI script also runs the windows outside the head), not precision",
    "peak_rss_mb": "max over runs of the `uharmony segment` process's own ru_maxrss (os.wait4), MiB",
    "foreign_cores": "CPU cores used by other processes during each measured block (from /proc/stat, minus this "
    "benchmark and its children); a run is clean when every block stays under 0.25, and the headline medians use "
    "the clean runs only (all runs, with contended = true, when none is clean)",
    "windows": "sliding windows the engine runs: those of the volume's foreground box (UHarmonyLib/inference/crop.py); "
    "`windows_uncropped` covers the whole volume, as the MONAI script does",
    "dice_agreement_cli_float32": "dice_agreement_monai_template with `uharmony segment --precision float32`: "
    "separates precision effects from pipeline differences",
    "bf16_agreement": "bfloat16 against float32 `segment_volumes` (one pass each) on cases with lesions of realistic "
    "size (benchmarks/precision.py): voxel = fraction of voxels with the same label, dice = whole-lesion (label > 0) "
    "Dice between the two label maps; the headline is the worst case",
}


def document(raw: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The results document: headline figures, goals, definitions, details, context and raw timings."""
    clean = [r for r in raw["runs"] if r["clean"]]
    runs = clean or raw["runs"]
    cli, mon = [r["segment"] for r in runs], [r["monai"] for r in runs]
    fwd_runs = [sum(r["forward_seconds_per_call"]) for r in runs]
    seconds, wall, fwd = median([c["seconds"] for c in cli]), median([c["wall"] for c in cli]), median(fwd_runs)
    imp, mon_s = median([r["import_seconds"] for r in runs]), median([m["seconds"] for m in mon])
    precision = cli[0]["precision"]
    cost = raw["harmony_cost"]
    figures = {
        "overhead_ratio": seconds / fwd,
        "harmony_cost_ratio": cost[precision]["ratio"] if precision in cost else float("nan"),
        "vs_monai_ratio": seconds / mon_s,
    }
    ctx = raw["context"]
    foreign = [*(v for r in raw["runs"] for v in r["foreign_cores"].values()), raw["harmony_cost_foreign_cores"]]
    return {
        **{k: round(v, 4) for k, v in figures.items()},
        "peak_rss_mb": round(max(c["peak_rss_mb"] for c in cli), 1),
        "goals": {k: {"op": op, "value": v, "met": met(k, figures[k])} for k, (op, v) in GOALS.items() if k in figures},
        "volume": f"MNI ICBM152 2009 T1 template ({TEMPLATE}) from nilearn {version('nilearn')}",
        "volume_shape": ctx["volume_shape"],
        "voxel_mm": [1.0, 1.0, 1.0],
        "windows": ctx["windows"],
        "windows_uncropped": ctx["windows_uncropped"],
        "crop_shape": ctx["crop_shape"],
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "clean_runs": len(clean),
        "contended": not clean or raw["harmony_cost_foreign_cores"] >= CLEAN,
        "model": ctx["model"],
        "inference": {"roi": ROI, "overlap": OVERLAP, "batch_size": ctx["batch_size"], "blend": ctx["blend"]},
        "definitions": DEFINITIONS,
        "details": {
            "overhead_ratio_wall": round(wall / fwd, 4),
            "overhead_ratio_wall_minus_import": round((wall - imp) / fwd, 4),
            "overhead_ratio_per_run": [round(c["seconds"] / f, 4) for c, f in zip(cli, fwd_runs)],
            "vs_monai_ratio_per_run": [round(c["seconds"] / m["seconds"], 4) for c, m in zip(cli, mon)],
            "vs_monai_ratio_wall": round(wall / median([m["wall"] for m in mon]), 4),
            "harmony_cost_ratio": {k: round(v["ratio"], 4) for k, v in cost.items()},
            "import_seconds": round(imp, 3),
            "segment_seconds": round(seconds, 3),
            "segment_wall_seconds": round(wall, 3),
            "segment_stage_seconds": {
                k: round(median([c["stage_seconds"][k] for c in cli]), 3) for k in cli[0]["stage_seconds"]
            },
            "forward_sum_seconds": round(fwd, 3),
            "forward_calls": ctx["forward_calls"],
            "forward_warmup_seconds": round(raw["forward_warmup_seconds"], 3),
            "monai_seconds": round(mon_s, 3),
            "monai_stage_seconds": {
                k: round(median([m["stage_seconds"][k] for m in mon]), 3) for k in mon[0]["stage_seconds"]
            },
            "monai_peak_rss_mb": round(max(m["peak_rss_mb"] for m in mon), 1),
            "dice_agreement_monai_template": round(raw["agreement"]["dice"], 4),
            **{k: v for k, v in raw["agreement"].items() if k != "dice"},
            "dice_agreement_cli_float32": round(raw["agreement_float32"]["dice"], 4),
            "label_agreement_cli_float32": raw["agreement_float32"]["label_agreement"],
            "foreign_cores_max": max(foreign),
            "loadavg_start": [round(v, 2) for v in raw["loadavg_start"]],
            "loadavg_end": [round(v, 2) for v in raw["loadavg_end"]],
        },
        "raw": {
            "runs": [
                {
                    "clean": r["clean"],
                    "foreign_cores": r["foreign_cores"],
                    "import_seconds": r["import_seconds"],
                    "segment": {k: r["segment"][k] for k in ("seconds", "wall", "stage_seconds", "peak_rss_mb")},
                    "monai": r["monai"],
                    "forward_sum_seconds": sum(r["forward_seconds_per_call"]),
                    "forward_seconds_per_call": r["forward_seconds_per_call"],
                }
                for r in raw["runs"]
            ],
            "gate_sites": raw["runs"][-1]["segment"]["gate"]["sites"],
            "harmony_cost_seconds": {k: v["seconds"] for k, v in cost.items()},
            "harmony_cost_foreign_cores": raw["harmony_cost_foreign_cores"],
        },
    }


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def with_agreement_headline(doc: dict[str, Any]) -> dict[str, Any]:
    """`dice_agreement` and its goal from the bf16_agreement section, the figures before the rest as in `document`."""
    section = doc.get("bf16_agreement")
    value = None if section is None else section["dice"]
    op, goal = GOALS["dice_agreement"]
    headline = {k: doc[k] for k in GOALS if k in doc and k != "dice_agreement"}
    goals = {k: v for k, v in doc.get("goals", {}).items() if k != "dice_agreement"}
    goals["dice_agreement"] = {"op": op, "value": goal, "met": value is not None and met("dice_agreement", value)}
    rest = {k: v for k, v in doc.items() if k not in headline and k not in ("dice_agreement", "goals")}
    return {**headline, "dice_agreement": value, **rest, "goals": goals}


def summary(doc: dict[str, Any]) -> str:
    d = doc["details"]
    lines = [
        f"Inference benchmark: {doc['model']['name']}, volume {doc['volume_shape']}, {doc['windows']} windows, "
        f"{doc['precision']}, {doc['machine']['torch_threads']} threads on {doc['machine']['cpu']}"
    ]
    for name, goal in doc["goals"].items():
        value = "not measured" if doc[name] is None else f"{doc[name]:8.3f}"
        verdict = "met" if goal["met"] else "MISSED"
        lines.append(f"  {name:<20} {value}   goal {goal['op']} {goal['value']:<5} {verdict}")
    lines += [
        f"  {'peak_rss_mb':<20} {doc['peak_rss_mb']:8.1f}",
        f"  segment {d['segment_seconds']:.1f} s in process ({d['segment_wall_seconds']:.1f} s wall, imports "
        f"{d['import_seconds']:.1f} s); bare forwards {d['forward_sum_seconds']:.1f} s; MONAI float32 "
        f"{d['monai_seconds']:.1f} s",
        f"  overhead incl. imports {d['overhead_ratio_wall']:.3f}, excl. imports "
        f"{d['overhead_ratio_wall_minus_import']:.3f}; harmony cost {d['harmony_cost_ratio']}",
    ]
    if d["foreign_cores_max"] > 0.25:
        lines.append(
            f"  WARNING: other processes used up to {d['foreign_cores_max']:.2f} cores during the measurements"
        )
    return "\n".join(lines)


def passes_section(model: Path, per_site: int) -> dict[str, Any]:
    """benchmarks/passes.py's rows and choice, with the cores other processes used meanwhile."""
    log(f"passes: 1, 2, 4 and 8 mirrored passes of {_rel(model)} on {per_site} development case(s) per site")
    with Meter() as m:
        section = measure_passes(model, per_site, log)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    return {**section, "foreign_cores": m.foreign_cores, "torch_threads": torch.get_num_threads(), "command": command}


def passes_summary(section: dict[str, Any]) -> str:
    rows = [f"  {r['passes']} passes: Dice {r['dice']}, {r['seconds']:.2f} s per case" for r in section["rows"]]
    choice = section["choice"]
    return "\n".join(
        [
            f"Mirroring passes ({section['model']}, {section['rows'][0]['cases']} development cases):",
            *rows,
            f"  chosen {choice['chosen']} ({choice['rule']}); the engine's default is {choice['engine_default']}",
        ]
    )


def agreement_section(model: Path) -> dict[str, Any]:
    """benchmarks/precision.py's cases, the benchmark's model run as the timings run it (its 1 mm copy)."""
    with tempfile.TemporaryDirectory(prefix="uharmony-bench-") as tmp:
        return measure_agreement(derive_bundle(model, Path(tmp) / "bench-1mm"), log)


def agreement_summary(section: dict[str, Any]) -> str:
    rows = [
        f"  {r['case']} ({r['model']}): voxels {r['voxel']:.6f}, whole-lesion Dice {r['dice']}, "
        f"{r['differing_voxels']} voxels differ, lesion {r['lesion_ml']['float32']} ml"
        for r in section["cases"]
    ]
    goal = section["goal"]
    return "\n".join(
        [
            f"bfloat16 vs float32 labels: worst Dice {section['dice']} (goal {goal['op']} {goal['value']} "
            f"{'met' if goal['met'] else 'MISSED'}), worst voxel agreement {section['voxel']:.6f}",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model bundle (default: starter model)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--quick", action="store_true", help="one repeat: a smoke check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        metavar="S",
        help="before each block, wait up to S s for other processes to leave the CPU (default 60)",
    )
    parser.add_argument(
        "--only",
        choices=("timings", "passes", "agreement"),
        help="measure this section alone (timings: everything but passes and agreement), keeping the rest of --out",
    )
    parser.add_argument(
        "--passes-model",
        type=Path,
        default=default_model(),
        help="bundle of the passes section (default: the bundled default model, trained on its cases' sites)",
    )
    parser.add_argument(
        "--passes-cases", type=int, default=PASSES_CASES_PER_SITE, help="development cases per site there (default 5)"
    )
    parser.add_argument("--monai-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.monai_child:
        model, image, out, weights = args.monai_child
        print(json.dumps(monai_script(Path(model), Path(image), Path(out), json.loads(weights))))
        return 0
    for flag, bundle in (("--model", args.model), ("--passes-model", args.passes_model)):
        if not (bundle / "model.json").is_file():
            parser.error(f"{bundle}: no model bundle there (give one with {flag})")
    per_site = 1 if args.quick else args.passes_cases
    if args.only == "passes":
        doc = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        doc["passes"] = passes_section(args.passes_model, per_site)
        write_json(args.out, doc)
        print(passes_summary(doc["passes"]))
        print(f"wrote {_rel(args.out)}")
        return 0
    if args.only == "agreement":
        doc = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        doc["bf16_agreement"] = agreement_section(args.model)
        write_json(args.out, with_agreement_headline(doc) if "goals" in doc else doc)
        print(agreement_summary(doc["bf16_agreement"]))
        print(f"wrote {_rel(args.out)}")
        return 0
    repeats = 1 if args.quick else max(args.repeats, 1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uharmony-bench-") as tmp:
        raw = measure(args.model, repeats, 3 if args.quick else max(5, 2 * repeats + 1), Path(tmp), args.wait_quiet)
    doc = document(raw, repeats)
    if args.only == "timings":
        kept = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        doc.update({k: kept[k] for k in ("passes", "bf16_agreement") if k in kept})
    else:
        doc["passes"] = passes_section(args.passes_model, per_site)
        doc["bf16_agreement"] = agreement_section(args.model)
    doc["machine"] = {
        "cpu": cpu_model(),
        "native_bf16": cpu_has_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    doc["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    doc["code"] = git_state()
    doc["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    doc["benchmark_seconds"] = round(time.perf_counter() - start, 1)
    doc = with_agreement_headline(doc)
    write_json(args.out, doc)
    print(summary(doc))
    if "passes" in doc:
        print(passes_summary(doc["passes"]))
    if "bf16_agreement" in doc:
        print(agreement_summary(doc["bf16_agreement"]))
    print(f"wrote {_rel(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
