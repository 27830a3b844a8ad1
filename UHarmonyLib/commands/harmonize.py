"""`uharmony harmonize`: one image in, its harmonized version out (parameters fitted, given or none)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.files.json_file import read_json
from UHarmonyLib.options import PROGRESS, Option, Verbs, add_command
from UHarmonyLib.progress import JsonReporter, Reporter

OPTIONS = [
    Option("--method", help="n4, zscore, percentile, nyul, match or whitestripe (or from --params)"),
    Option("--fit", type=Path, metavar="DATASET_JSON", help="learn the parameters from this dataset"),
    Option("--channel", metavar="NAME", help="the image's channel (needed when there are several)"),
    Option("--in", dest="input", required=True, type=Path, metavar="FILE", help="the image to harmonize"),
    Option("--out", required=True, type=Path, metavar="FILE", help="the harmonized image"),
    Option("--params-out", type=Path, metavar="JSON", help="write the fitted parameters"),
    Option("--params", type=Path, metavar="JSON", help="parameters from --params-out, or a model bundle"),
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "harmonize", "harmonize one image's intensities (fitted on a dataset if needed)", OPTIONS)


def load_params(path: Path) -> dict[str, Any]:
    """Parameters from a --params-out file, or from a model bundle's card (verified) or its model.json."""
    from UHarmonyLib import image_harmonization
    from UHarmonyLib.model.card import CARD_NAME, read_card

    if path.is_dir() or path.name == CARD_NAME:
        bundle = path if path.is_dir() else path.parent
        params = read_card(bundle)["preprocessing"].get("harmonize")
        if params is None:
            raise InputError(f"{bundle}: this model was trained without harmonization; it has no parameters")
        return params
    params = read_json(path, "parameter file")
    problem = image_harmonization.check_params(params)
    if problem:
        raise InputError(f"{path}: {problem}")
    return params


def _fit(args: argparse.Namespace, method: str, reporter: Reporter) -> tuple[dict[str, Any], str | None]:
    """(parameters, channel) learned from --fit's dataset: only its images of the chosen channel."""
    from UHarmonyLib.data.cases import load_case
    from UHarmonyLib.data.harmonization_fit import fit_on_cases
    from UHarmonyLib.data.plan import plan_training

    plan = plan_training([args.fit], val_fraction=0.0, seed=0)
    file = plan.datasets[0]["path"]
    channel = args.channel
    if channel is None:
        if len(plan.channels) > 1:
            raise InputError(f"{file}: has channels {', '.join(plan.channels)}; say which one --in is with --channel")
        channel = plan.channels[0]
    if channel not in plan.channels:
        raise InputError(f"{file}: has no channel '{channel}' (its channels: {', '.join(plan.channels)})")
    ids = [i for i, c in enumerate(plan.cases) if plan.channels.index(channel) in c.channels]
    reporter.log(f"fitting {method} on {len(ids)} {channel} image(s) of {file}")
    params = fit_on_cases(method, plan, ids, lambda i: load_case(plan.cases[i], len(plan.channels)), [channel])
    return params, channel


def resolve_params(args: argparse.Namespace, reporter: Reporter) -> tuple[dict[str, Any], str | None]:
    """The parameters and channel to apply, from --params, --fit or the method's defaults; one-line refusals."""
    from UHarmonyLib import image_harmonization

    if args.params is not None:
        if args.fit is not None:
            raise InputError("--fit and --params both give the parameters; use one")
        params = load_params(args.params)
        if args.method is not None and args.method != params["method"]:
            raise InputError(f"{args.params}: holds {params['method']} parameters, not {args.method}")
        return params, args.channel
    if args.method is None:
        raise InputError("harmonize needs --method (n4, zscore, percentile, nyul, match, whitestripe) or --params")
    method = image_harmonization.method(args.method)
    if args.fit is not None and method.needs_fit:
        return _fit(args, method.name, reporter)
    if method.needs_fit:
        raise InputError(f"--method {method.name} learns from training images: add --fit DATASET_JSON (or --params)")
    if args.fit is not None:
        reporter.log(f"{method.name} works on each image alone; --fit {args.fit} is not needed and was not read")
    return image_harmonization.fit(method.name, {}), args.channel


def _channel(params: dict[str, Any], channel: str | None, needs_fit: bool) -> str:
    fitted = list(params["channels"])
    if channel is not None:
        return channel
    if len(fitted) == 1:
        return fitted[0]
    if needs_fit:
        raise InputError(f"the parameters hold channels {', '.join(fitted)}; say which one --in is with --channel")
    return "image"


def check_outputs(args: argparse.Namespace) -> None:
    from UHarmonyLib.files.volumes import check_output_path

    check_output_path(args.out)
    if args.out.resolve() == args.input.resolve():
        raise InputError(f"{args.out}: output would overwrite the input")
    if args.params_out is not None:
        if args.params_out.suffix.lower() != ".json":
            raise InputError(f"{args.params_out}: the parameter file must end in .json")
        check_writable(args.params_out)


def run_harmonize(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Resolve the parameters, harmonize --in, write --out (and --params-out) atomically."""
    from UHarmonyLib import image_harmonization
    from UHarmonyLib.files.volumes import read_volume, write_volume

    start = time.perf_counter()
    check_outputs(args)
    image = read_volume(args.input)
    params, channel = resolve_params(args, reporter)
    channel = _channel(params, channel, image_harmonization.method(params["method"]).needs_fit)
    result = image_harmonization.apply(image, params, channel, str(args.input))
    write_volume(result, args.out)
    if args.params_out is not None:
        write_text_atomic(args.params_out, json.dumps(params, indent=2) + "\n")
    payload = {
        "method": params["method"],
        "channel": channel,
        "out": str(args.out),
        "params_out": None if args.params_out is None else str(args.params_out),
        "seconds": round(time.perf_counter() - start, 3),
    }
    reporter.result(payload)
    if not isinstance(reporter, JsonReporter):
        print(f"Wrote {args.out} ({params['method']}, channel {channel}, {payload['seconds']:.1f} s)")
    return payload
