"""Whole-volume inference: read, move to model space, crop to the foreground, gate pass, segmentation pass, map back."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.volumes import read_channels
from UHarmonyLib.inference.crop import Box, foreground_box
from UHarmonyLib.inference.device import autocast, resolve_precision
from UHarmonyLib.inference.gate_decision import GateDecision, aggregate, given_site
from UHarmonyLib.inference.preprocessing import ModelSpace, model_channels, normalize
from UHarmonyLib.inference.windows import pad_to_roi, window_slices
from UHarmonyLib.model.card import MIRROR_AXES, MIRROR_PASSES
from UHarmonyLib.model.signature_bank import case_vector
from UHarmonyLib.model.weights import Bundle
from UHarmonyLib.progress import Reporter, SilentReporter


@dataclass
class SegmentationResult:
    """Everything one case produced, on the input grid."""

    labels: sitk.Image
    gate: GateDecision
    probabilities: sitk.Image | None = None
    gate_map: sitk.Image | None = None
    windows: int = 0
    passes: int = 1
    device: str = "cpu"
    precision: str = "float32"
    seconds: dict[str, float] = field(default_factory=dict)

    def label_volumes_ml(self, labels: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Volume of each label in millilitres, from the input grid's voxel size."""
        counts = np.bincount(sitk.GetArrayViewFromImage(self.labels).ravel())
        voxel_ml = float(np.prod(self.labels.GetSpacing())) / 1000.0
        return {
            lab["name"]: round(float(counts[lab["value"]]) * voxel_ml if lab["value"] < len(counts) else 0.0, 3)
            for lab in labels
        }


def check_site(bundle: Bundle, site: str) -> None:
    """Refuse an unknown site name, or 'auto' on a model that needs the site named."""
    if site == "auto":
        if bundle.config.site_required:
            raise InputError(
                f"{bundle.path}: this model ({bundle.config.norm}) needs the site named with --site "
                f"({', '.join(bundle.site_names)})"
            )
    elif site not in bundle.site_names:
        raise InputError(f"unknown site '{site}'; the model knows: {', '.join(bundle.site_names)}")


def mirror_flips(bundle: Bundle, passes: int | None = None) -> list[tuple[int, ...]]:
    """The tensor dims each test-time mirroring pass flips, `passes` of them (None: `MIRROR_PASSES`, or fewer).

    A fixed order over the card's `mirror_axes` (model-space x, y, z): no flip, each axis alone,
    each pair, all three. With every axis listed, 4 passes are the single flips (what the engine
    always ran before the count was selectable) and 8 are all flips, as nnU-Net mirrors.
    """
    axes = [int(a) for a in bundle.inference.get("mirror_axes", MIRROR_AXES)]
    subsets = [s for k in range(len(axes) + 1) for s in itertools.combinations(axes, k)]
    count = min(MIRROR_PASSES, len(subsets)) if passes is None else passes
    if not 1 <= count <= len(subsets):
        raise InputError(
            f"{bundle.path}: {count} mirrored passes asked for; this model mirrors along axes {axes} "
            f"(its card's inference.mirror_axes), which gives 1 to {len(subsets)} passes"
        )
    return [tuple(2 + a for a in s) for s in subsets[:count]]


@dataclass
class GatePass:
    """What the gate saw in every window of one volume."""

    probabilities: np.ndarray  # (N, S)
    vectors: np.ndarray  # (N, F) scanner signatures
    weights: np.ndarray  # (N,) foreground fraction
    slices: list[tuple[slice, ...]]
    padded: tuple[int, ...]


class _Engine:
    """Runs the two passes on one device and precision."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device,
        dtype: torch.dtype,
        batch: int,
        reporter: Reporter,
        flips: list[tuple[int, ...]],
    ):
        self.bundle = bundle
        self.net = bundle.net.to(device)
        self.device = device
        self.dtype = dtype
        self.batch = batch
        self.reporter = reporter
        self.roi = tuple(int(r) for r in bundle.inference["patch_size"])
        self.overlap = float(bundle.inference["overlap"])
        self.flips = flips

    def gate_pass(self, x: torch.Tensor) -> GatePass:
        """Per-window site probabilities, signatures and foreground weights over the (cropped) volume."""
        padded = pad_to_roi(x, self.roi)
        slices = window_slices(padded.shape[2:], self.roi, self.overlap)
        probs, vectors, weights = [], [], []
        for start in range(0, len(slices), self.batch):
            chunk = slices[start : start + self.batch]
            patches = torch.cat([padded[(slice(None), slice(None), *s)] for s in chunk]).to(self.device)
            features = self.net.gate.features(patches)
            with autocast(self.device, self.dtype):
                logits = self.net.gate.classify(features)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            vectors.append(features.float().cpu())
            weights.append((patches != 0).flatten(1).float().mean(1).cpu())
            self.reporter.progress("gate", start + len(chunk), len(slices))
        return GatePass(
            torch.cat(probs).numpy(), torch.cat(vectors).numpy(), torch.cat(weights).numpy(), slices, padded.shape[2:]
        )

    def decide(self, passed: GatePass, threshold: float, site: str = "auto") -> GateDecision:
        """The case-level decision: aggregated probabilities (or the named site), and distances to the bank if any."""
        bank = self.bundle.bank
        distances = None
        if bank is not None:
            distances = bank.distances(self.net.gate, case_vector(passed.vectors, passed.weights))
        if site == "auto":
            probabilities = aggregate(passed.probabilities, passed.weights)
        else:
            probabilities = given_site(self.bundle.site_names, site, threshold).probabilities
        return GateDecision(
            self.bundle.site_names,
            probabilities,
            threshold,
            given=site != "auto",
            window_probabilities=passed.probabilities,
            distances=distances,
            distance_threshold=bank.threshold if bank is not None else float("inf"),
        )

    def segment_pass(self, x: torch.Tensor, site_weights: torch.Tensor, total: int) -> torch.Tensor:
        """Stitched class scores (1, K, x, y, z) in float32 on the CPU; their softmax is the class probability.

        With test-time mirroring the volume is also segmented flipped (`mirror_flips`: along
        axes the training augmentation flipped), and the probabilities are averaged (as nnU-Net
        does): a flip costs one more pass and smooths out orientation-specific mistakes on small
        lesions. The log of the mean probability keeps the contract: softmax gives it back,
        and a class no pass gives any probability (a new label at an old site) stays at 0.
        """
        done = 0
        w = site_weights.to(self.device)
        passes = len(self.flips)

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            nonlocal done
            with autocast(self.device, self.dtype):
                out = self.net.segment(patch, w.expand(patch.shape[0], -1))
            done += patch.shape[0]
            self.reporter.progress("segment", min(done, total * passes), total * passes)
            return out.float()

        def stitched(volume: torch.Tensor) -> torch.Tensor:
            out = sliding_window_inference(
                volume,
                roi_size=self.roi,
                sw_batch_size=self.batch,
                predictor=predictor,
                overlap=self.overlap,
                mode=self.bundle.inference.get("blend", "gaussian"),
                sw_device=self.device,
                device=torch.device("cpu"),
            )
            assert isinstance(out, torch.Tensor)  # a predictor returning one tensor gives one tensor
            return out

        if passes == 1:
            return stitched(x)
        mean = torch.zeros(())
        for dims in self.flips:
            probs = torch.softmax(stitched(torch.flip(x, dims) if dims else x), dim=1)
            mean = mean + (torch.flip(probs, dims) if dims else probs)
        return torch.log(mean / passes)


def _gate_map(decision: GateDecision, passed: GatePass, box: Box) -> np.ndarray:
    """Most likely site per model-space voxel (1-based site index) from the windows covering it.

    No window runs outside the box: there the map holds the case's own choice, the site whose
    weights segmented every window (an uncropped run gave those voxels the gate's reading of
    empty windows, each voting with a weight of 0.001), so every voxel still names a site.
    """
    acc = np.zeros((len(decision.sites), *passed.padded), dtype=np.float32)
    for p, w, s in zip(decision.window_probabilities, passed.weights, passed.slices):
        acc[(slice(None), *s)] += (p * (w + 1e-3))[:, None, None, None].astype(np.float32)
    offsets = [(pd - sh) // 2 for pd, sh in zip(passed.padded, box.size)]
    inner = tuple(slice(o, o + n) for o, n in zip(offsets, box.size))
    sites = (acc[(slice(None), *inner)].argmax(0) + 1).astype(np.uint8)
    return box.paste(sites, int(np.argmax(decision.probabilities)) + 1)


def _run(
    engine: _Engine, x: torch.Tensor, box: Box, site: str, want_gate_map: bool
) -> tuple[GateDecision, torch.Tensor, np.ndarray | None, int, dict[str, float]]:
    """Both passes over `x`, the (1, C, *box.size) box of the case: the decision, its class scores, the gate map."""
    bundle = engine.bundle
    threshold = float(bundle.inference.get("familiar_entropy", 0.5))
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    gate_map = None
    with torch.inference_mode():
        if site == "auto" or bundle.bank is not None:  # a named site is still checked against the bank
            passed = engine.gate_pass(x)
            decision = engine.decide(passed, threshold, site)
            if want_gate_map:
                gate_map = _gate_map(decision, passed, box)
            total = len(passed.slices)
        else:
            decision = given_site(bundle.site_names, site, threshold)
            total = len(window_slices(pad_to_roi(x[:, :1], engine.roi).shape[2:], engine.roi, engine.overlap))
        seconds["gate"] = time.perf_counter() - t
        t = time.perf_counter()
        site_weights = torch.as_tensor(decision.probabilities, dtype=torch.float32).unsqueeze(0)
        scores = engine.segment_pass(x, site_weights, total)
        seconds["segment"] = time.perf_counter() - t
    return decision, scores, gate_map, total, seconds


def segment_volumes(
    bundle: Bundle,
    images: Sequence[sitk.Image],
    *,
    site: str = "auto",
    device: torch.device | None = None,
    precision: str = "auto",
    want_probabilities: bool = False,
    want_gate_map: bool = False,
    passes: int | None = None,
    reporter: Reporter | None = None,
) -> SegmentationResult:
    """Segment one case given as SimpleITK images (one per model channel, same grid).

    `passes` is the number of test-time mirroring passes (`mirror_flips`; None: the default);
    1 skips mirroring, for speed (training validation, large benchmark tables). Both passes
    run on the case's foreground box only (`inference/crop.py`); outside it every voxel is
    background with probability 1.
    """
    reporter = reporter or SilentReporter()
    device = device or torch.device("cpu")
    check_site(bundle, site)
    if want_gate_map and site != "auto":
        raise InputError("--gate-map shows the gate's choice of site, which --site replaces")
    flips = mirror_flips(bundle, passes)
    t0 = time.perf_counter()
    space = ModelSpace.for_image(images[0], bundle.preprocessing)
    raw = model_channels(space, images, bundle.preprocessing, bundle.channel_names)
    roi = [int(r) for r in bundle.inference["patch_size"]]
    box = foreground_box(raw, roi, float(bundle.inference["overlap"]))
    x = box.take(normalize(raw, bundle.preprocessing["intensity"])).unsqueeze(0)
    prep = time.perf_counter() - t0
    batch = int(bundle.inference.get("batch_size", 1))
    attempts = [(device, batch)]
    if device.type == "cuda":
        attempts += [(device, 1)] if batch > 1 else []
        attempts += [(torch.device("cpu"), 1)]
    for i, (dev, size) in enumerate(attempts):
        dtype = resolve_precision(precision if dev == device else "auto", dev, bundle.config.backbone)
        engine = _Engine(bundle, dev, dtype, size, reporter, flips)
        try:
            decision, scores, gate_map, total, seconds = _run(engine, x, box, site, want_gate_map)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if i + 1 == len(attempts):
                raise
            retry = "with batch 1" if attempts[i + 1][0].type == "cuda" else "on the CPU (slower)"
            reporter.log(f"GPU out of memory with batch {size}; retrying {retry}", "warning")
    seconds["preprocess"] = prep
    t = time.perf_counter()
    values = np.array([0] + [lab["value"] for lab in bundle.labels], dtype=np.uint16)
    values = values.astype(np.uint8 if values.max() < 256 else np.uint16)
    probabilities = None
    if space.resampled:
        probs = torch.softmax(scores[0], dim=0).numpy()
        labels = space.array_to_input(values[_argmax_on_input(space, box, probs)])
        if want_probabilities:
            probabilities = space.to_input(_on_grid(box, probs).transpose(1, 2, 3, 0), sitk.sitkLinear)
    else:
        labels = space.to_input(values[box.paste(_argmax_small(scores[0]), 0)])
        if want_probabilities:
            probs = torch.softmax(scores[0], dim=0).numpy()
            probabilities = space.to_input(_on_grid(box, probs).transpose(1, 2, 3, 0))
    gate_img = space.to_input(gate_map) if gate_map is not None else None
    seconds["postprocess"] = time.perf_counter() - t
    return SegmentationResult(
        labels=labels,
        gate=decision,
        probabilities=probabilities,
        gate_map=gate_img,
        windows=total,
        passes=len(engine.flips),
        device=str(engine.device),
        precision=str(engine.dtype).replace("torch.", ""),
        seconds=seconds,
    )


def _on_grid(box: Box, probs: np.ndarray) -> np.ndarray:
    """(C, x, y, z) class probabilities of the box on the whole model grid: certain background outside it."""
    if box.whole:
        return probs
    out = np.zeros((probs.shape[0], *box.shape), probs.dtype)
    out[0] = 1.0
    out[(slice(None), *box.slices)] = probs
    return out


def _argmax_on_input(space: ModelSpace, box: Box, probs: np.ndarray) -> np.ndarray:
    """The most likely class of each input voxel, from (C, *box.size) model-space probabilities, one class at a time.

    Why one at a time: resampling every class at once holds a C-component float image and an
    int64 argmax at input resolution (about 20 bytes per input voxel for three classes); this
    holds one class, the running maximum and a byte per voxel. Linear interpolation acts on each
    class alone and ties keep the first class, as argmax does, so the labels are the same.
    """
    best: np.ndarray | None = None
    arg = np.zeros(0, np.uint8)
    for c in range(probs.shape[0]):
        image = space.to_input(box.paste(probs[c], float(c == 0)), sitk.sitkLinear)
        p = sitk.GetArrayViewFromImage(image)
        if best is None:
            best, arg = p.copy(), np.zeros(p.shape, np.uint8)
            continue
        better = p > best
        np.copyto(best, p, where=better)
        arg[better] = c
    return arg


def _argmax_small(scores: torch.Tensor) -> np.ndarray:
    """argmax over classes of (C, x, y, z) scores as uint8, one class at a time.

    Why not torch's argmax: it reduces over the outermost dimension with strided reads and
    returns int64 (a second of a 1 mm case's postprocessing); a running maximum reads each
    class once and keeps a byte per voxel. Ties keep the first class, as argmax does.
    """
    best = scores[0].clone()
    out = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        out.masked_fill_(better, c)
        torch.maximum(best, scores[c], out=best)
    return out.numpy()


# peak memory above the process's fixed part per input voxel, measured by benchmarks/memory.py (docs/RESULTS.md):
# about 20 bytes for the label map, about 60 with --probabilities; rounded up
BYTES_PER_VOXEL = {False: 24, True: 64}


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (Linux's MemAvailable); None where it cannot be asked."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def segment_files(bundle: Bundle, paths: Sequence[Path], **kwargs: Any) -> SegmentationResult:
    """Read one file per model channel and segment them; warn first when the case may not fit in memory."""
    reporter = kwargs.get("reporter") or SilentReporter()
    images = read_channels(paths, bundle.channel_names, log=reporter.log)
    voxels = int(np.prod(images[0].GetSize()))
    needed = voxels * BYTES_PER_VOXEL[bool(kwargs.get("want_probabilities"))]
    free = available_memory()
    if free is not None and needed > free:
        reporter.log(
            f"this {' x '.join(map(str, images[0].GetSize()))} case needs about {needed / 2**30:.1f} GB more memory "
            f"and {free / 2**30:.1f} GB are available: it may fail or swap",
            "warning",
        )
    return segment_volumes(bundle, images, **kwargs)
