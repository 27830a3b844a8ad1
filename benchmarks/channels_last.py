"""Does `torch.channels_last_3d` speed up the forward pass on this CPU? A side-by-side micro-measurement.

Usage: .venv/bin/python benchmarks/channels_last.py [--model BUNDLE] [--pairs N] [--out JSON]

One 96^3 window from the centre of the MNI template, preprocessed as benchmarks/inference.py does (the bundle copied
at 1 mm), through `net.segment` three times per round: the network and input as the engine keeps them (contiguous),
both converted to channels_last_3d, and only the input converted (the weights as loaded), in rotating order, under
bfloat16 autocast and in float32. Each figure is a layout's median time over the median contiguous time of the same
rounds. Results go to
docs/results/channels_last.json; the engine would take the layout only where it measures faster (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from inference import (
    DEFAULT_MODEL,
    ROI,
    Meter,
    _rel,
    cpu_model,
    derive_bundle,
    git_state,
    median,
    preprocessed,
    template_copy,
    timed_forward,
    write_json,
)

from UHarmonyLib.inference.device import cpu_has_bf16
from UHarmonyLib.inference.windows import pad_to_roi, window_slices
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.nn.network import UHarmonyNet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "channels_last.json"


def centre_window(model: Path, work: Path) -> tuple[UHarmonyNet, torch.Tensor, torch.Tensor]:
    """The 1 mm copy's network, its centre window (1, C, 96, 96, 96) of the template and uniform site weights."""
    bundle = load_bundle(derive_bundle(model, work / "bench-1mm"))
    x, _ = preprocessed(bundle, template_copy(work))
    padded = pad_to_roi(x, ROI)
    slices = window_slices(padded.shape[2:], ROI, 0.5)
    patch = padded[(slice(None), slice(None), *slices[len(slices) // 2])].contiguous()
    sites = bundle.net.config.num_sites
    return bundle.net, patch, torch.full((1, sites), 1.0 / sites)


def round_times(
    nets: dict[str, UHarmonyNet], inputs: dict[str, torch.Tensor], w: torch.Tensor, dtype: torch.dtype, rounds: int
) -> dict[str, list[float]]:
    """Seconds per forward of each layout, once per round in rotating order; one warm-up call each first."""
    for name in nets:
        timed_forward(nets[name], inputs[name], w, dtype)
    times: dict[str, list[float]] = {name: [] for name in nets}
    names = list(nets)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(timed_forward(nets[name], inputs[name], w, dtype))
    return times


LAYOUTS = ("channels_last_3d", "input_only")  # measured against "contiguous"


def measure(model: Path, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="uharmony-cl-") as tmp:
        net, patch, w = centre_window(model, Path(tmp))
    last = patch.to(memory_format=torch.channels_last_3d)
    nets = {
        "contiguous": net,
        "channels_last_3d": copy.deepcopy(net).to(memory_format=torch.channels_last_3d),
        "input_only": net,
    }
    inputs = {"contiguous": patch, "channels_last_3d": last, "input_only": last}
    with torch.inference_mode():
        outputs = {name: nets[name].segment(inputs[name], w) for name in nets}
    difference = {k: float((outputs["contiguous"] - outputs[k]).abs().max()) for k in LAYOUTS}
    figures: dict[str, Any] = {}
    for dtype in (torch.bfloat16, torch.float32):
        with Meter() as m:
            times = round_times(nets, inputs, w, dtype, rounds)
        figures[str(dtype).replace("torch.", "")] = {
            "ratio": {k: round(median(times[k]) / median(times["contiguous"]), 4) for k in LAYOUTS},
            "faster_in_rounds": {k: sum(a < b for a, b in zip(times[k], times["contiguous"])) for k in LAYOUTS},
            "median_seconds": {k: round(median(v), 4) for k, v in times.items()},
            "seconds": times,
            "foreign_cores": m.foreign_cores,
        }
    return {"figures": figures, "max_abs_logit_difference_float32": difference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model bundle (default: starter model)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the three layouts per precision (default 15)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = parser.parse_args(argv)
    measured = measure(args.model, args.rounds)
    doc = {
        "ratio_over_contiguous": {k: v["ratio"] for k, v in measured["figures"].items()},
        "definition": "median seconds of net.segment on one 1x1x96^3 window in a layout / the same with network and "
        "input contiguous (the engine's layout), in rounds of all three layouts in rotating order after one warm-up "
        "call each; below 1 is faster. channels_last_3d: network and input converted; input_only: the input alone "
        "(the loaded weights unchanged). faster_in_rounds: rounds in which the layout beat contiguous",
        "rounds": args.rounds,
        "model": _rel(args.model),
        **measured,
        "machine": {
            "cpu": cpu_model(),
            "native_bf16": cpu_has_bf16(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "code": git_state(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(args.out, doc)
    print(f"layout / contiguous: {doc['ratio_over_contiguous']}; wrote {_rel(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
