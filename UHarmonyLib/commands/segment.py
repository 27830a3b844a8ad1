"""`uharmony segment`: one case in, label map and gate decision out."""

from __future__ import annotations

import argparse
import colorsys
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.options import (
    DEVICE,
    MIRROR_PASSES,
    NO_MIRROR,
    PRECISION,
    PROGRESS,
    Option,
    Verbs,
    add_command,
    mirror_passes,
)
from UHarmonyLib.progress import JsonReporter, Reporter

if TYPE_CHECKING:
    import SimpleITK as sitk

    from UHarmonyLib.inference.engine import SegmentationResult
    from UHarmonyLib.inference.gate_decision import GateDecision
    from UHarmonyLib.model.weights import Bundle

OPTIONS = [
    Option("--model", required=True, type=Path, help="model bundle folder"),
    Option(
        "channels",
        nargs="+",
        type=Path,
        metavar="CHANNEL_FILE",
        help="one file or DICOM folder per model channel, in the card's order; '-' for a channel the case lacks",
    ),
    Option("--out", required=True, type=Path, help="label map (.nii.gz, .nrrd, .seg.nrrd, .mha)"),
    Option("--site", default="auto", help="auto (domain gate) or a site name from the model card"),
    DEVICE,
    PRECISION,
    Option("--gate-json", type=Path, help="write the gate's site probabilities as JSON"),
    Option("--gate-map", type=Path, help="write the per-patch most likely site as a label volume"),
    Option("--probabilities", type=Path, help="write per-class probabilities (vector volume)"),
    NO_MIRROR,
    MIRROR_PASSES,
    Option("--harmonize", metavar="METHOD", help="optional check: the model card's harmonization (the card decides)"),
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "segment", "segment one case with a model bundle", OPTIONS)


SITE_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"]
META = "UHarmony_"  # prefix of the metadata keys that name what a vector component or label value holds
GOLDEN = 0.618033988749895  # hue step that keeps every further site's colour apart from all before it


def site_color(index: int) -> str:
    """A distinct colour per site: the palette first, then golden-ratio hues for models with more sites."""
    if index < len(SITE_COLORS):
        return SITE_COLORS[index]
    r, g, b = colorsys.hsv_to_rgb((index * GOLDEN) % 1.0, 0.8, 0.9)
    return "#" + "".join(f"{round(c * 255):02x}" for c in (r, g, b))


def site_labels(sites: list[str]) -> list[dict[str, Any]]:
    """Gate-map segments: one per site, value = 1-based site index (no background segment)."""
    return [{"value": i + 1, "name": s, "color": site_color(i)} for i, s in enumerate(sites)]


def named_probabilities(image: sitk.Image, labels: list[dict[str, Any]]) -> sitk.Image:
    """The probability volume with each component's class name and label value in its metadata.

    Component 0 is the background, then the card's labels in order; NRRD and MetaImage keep
    one key per component, NIfTI only its 80-character description.
    """
    import SimpleITK as sitk

    named = sitk.Image(image)
    classes = [{"value": 0, "name": "background"}, *labels]
    for i, lab in enumerate(classes):
        named.SetMetaData(f"{META}Component{i}_Class", lab["name"])
        named.SetMetaData(f"{META}Component{i}_LabelValue", str(lab["value"]))
    named.SetMetaData("ITK_FileNotes", "probabilities: " + "|".join(lab["name"] for lab in classes))
    return named


def named_gate_map(image: sitk.Image, sites: list[str]) -> sitk.Image:
    """The gate map with the site each value stands for in its metadata (value = 1-based site index)."""
    import SimpleITK as sitk

    named = sitk.Image(image)
    for lab in site_labels(sites):
        named.SetMetaData(f"{META}Value{lab['value']}_Site", lab["name"])
    named.SetMetaData("ITK_FileNotes", "gate map, site per value from 1: " + "|".join(sites))
    return named


def describe_gate(decision: GateDecision) -> str:
    """The gate's decision in plain words, one site per line."""
    lines = ["Site probabilities (domain gate):" if not decision.given else "Site given by the user:"]
    width = max(len(s) for s in decision.sites)
    for name, p in sorted(zip(decision.sites, decision.probabilities), key=lambda t: -t[1]):
        lines.append(f"  {name:<{width}}  {p:6.3f}  {'#' * int(p * 30 + 0.5)}")
    if not decision.given:
        lines.append(f"Chosen site: {decision.chosen} (normalized entropy {decision.entropy:.2f})")
    if decision.familiar is False:
        lines.append(
            f"WARNING: this case looks unlike every site the model was trained on: {decision.concern}; "
            "check the result carefully."
        )
    elif decision.familiar is None:
        lines.append(f"Not checked whether this case looks like the model's sites: {decision.concern}.")
    return "\n".join(lines)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable or clashing output paths before any work is done."""
    from UHarmonyLib.files.volumes import ABSENT, check_output_path

    if all(str(p) == ABSENT for p in args.channels):
        raise InputError(f"every channel is marked absent ('{ABSENT}'); at least one image is needed")
    if args.gate_map is not None and args.site != "auto":
        raise InputError("--gate-map shows the gate's choice of site, which --site replaces")
    outputs = [p for p in (args.out, args.gate_map, args.probabilities) if p is not None]
    for p in outputs:
        check_output_path(p)
    if args.gate_json is not None:
        if args.gate_json.suffix.lower() != ".json":
            raise InputError(f"{args.gate_json}: gate JSON file must end in .json")
        check_writable(args.gate_json)
        outputs.append(args.gate_json)
    resolved = [p.resolve() for p in outputs]
    if len(set(resolved)) != len(resolved):
        raise InputError("two outputs name the same file")
    inputs = {p.resolve() for p in args.channels if str(p) != ABSENT}
    clash = next((p for p in outputs if p.resolve() in inputs), None)
    if clash is not None:
        raise InputError(f"{clash}: output would overwrite an input file")


def check_harmonize(bundle: Bundle, method: str | None) -> None:
    """`--harmonize` only confirms the card's choice: the card decides what inference repeats from training."""
    if method is None:
        return
    stored = bundle.preprocessing.get("harmonize")
    if stored is None:
        raise InputError(
            f"{bundle.path}: this model was trained without harmonization and applies none; drop --harmonize "
            f"{method} (harmonized input would look unlike its training images)"
        )
    if stored["method"] != method:
        raise InputError(
            f"{bundle.path}: this model was trained with {stored['method']} harmonization and repeats it from its "
            f"card; --harmonize {method} contradicts it"
        )


def write_outputs(args: argparse.Namespace, bundle: Bundle, result: SegmentationResult) -> dict[str, str]:
    """Write the label map and each optional output; the volumes say in their metadata what they hold."""
    from UHarmonyLib.files.volumes import write_volume

    written = {"segmentation": str(args.out)}
    write_volume(result.labels, args.out, labels=bundle.labels)
    if args.gate_json is not None:
        write_text_atomic(args.gate_json, json.dumps(result.gate.to_json(), indent=2) + "\n")
        written["gate_json"] = str(args.gate_json)
    if args.gate_map is not None and result.gate_map is not None:
        gate_map = named_gate_map(result.gate_map, bundle.site_names)
        write_volume(gate_map, args.gate_map, labels=site_labels(bundle.site_names))
        written["gate_map"] = str(args.gate_map)
    if args.probabilities is not None and result.probabilities is not None:
        write_volume(named_probabilities(result.probabilities, bundle.labels), args.probabilities)
        written["probabilities"] = str(args.probabilities)
    return written


def result_payload(bundle: Bundle, result: SegmentationResult, written: dict[str, str], seconds: float) -> dict:
    return {
        "model": bundle.label_text,
        "gate": result.gate.to_json(),
        "volumes_ml": result.label_volumes_ml(bundle.labels),
        "outputs": written,
        "windows": result.windows,
        "passes": result.passes,
        "device": result.device,
        "precision": result.precision,
        "seconds": round(seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }


def run_segment(args: argparse.Namespace, reporter: Reporter, emit_result: bool = True) -> dict:
    """Segment and write the outputs; `emit_result=False` lets a caller (the demo) send one combined result."""
    from UHarmonyLib.inference.device import resolve_device
    from UHarmonyLib.inference.engine import check_site, mirror_flips, segment_files
    from UHarmonyLib.model.weights import load_bundle

    start = time.perf_counter()
    check_outputs(args)
    device = resolve_device(args.device)
    bundle = load_bundle(args.model)
    check_site(bundle, args.site)
    passes = mirror_passes(args)
    mirror_flips(bundle, passes)  # refuses more passes than the card's axes give, before any case is read
    check_harmonize(bundle, args.harmonize)
    reporter.log(f"model {bundle.label_text}: channels {', '.join(bundle.channel_names)}; device {device}")
    result = segment_files(
        bundle,
        [Path(p) for p in args.channels],
        site=args.site,
        device=device,
        precision=args.precision,
        want_probabilities=args.probabilities is not None,
        want_gate_map=args.gate_map is not None,
        passes=passes,
        reporter=reporter,
    )
    written = write_outputs(args, bundle, result)
    payload = result_payload(bundle, result, written, time.perf_counter() - start)
    if emit_result:
        reporter.result(payload)
    if not isinstance(reporter, JsonReporter):
        print(describe_gate(result.gate))
        vols = ", ".join(f"{k} {v:.2f} ml" for k, v in payload["volumes_ml"].items())
        print(f"Lesion volumes: {vols}")
        mirrored = f" x {result.passes} mirrored passes" if result.passes > 1 else ""
        run = f"{result.windows} windows{mirrored}, {result.device} {result.precision}, {payload['seconds']:.1f} s"
        print(f"Wrote {args.out} ({run})")
    return payload
