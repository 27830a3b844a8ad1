"""`uharmony evaluate`: a model bundle on a labelled dataset; a JSON report and a Markdown summary beside it."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from UHarmonyLib import __version__
from UHarmonyLib.data.labels import WHOLE_LABEL as WHOLE
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.options import (
    DEVICE,
    MIRROR_PASSES,
    NO_MIRROR,
    PROGRESS,
    Option,
    Verbs,
    add_command,
    mirror_passes,
    to_argv,
    values_of,
)
from UHarmonyLib.progress import JsonReporter, Reporter

OPTIONS = [
    Option("--model", required=True, type=Path, help="model bundle folder"),
    Option("--data", required=True, type=Path, metavar="DATASET_JSON", help="or its folder"),
    Option(
        "--out",
        required=True,
        type=Path,
        metavar="REPORT.json",
        help="its Markdown summary REPORT.md (same name, ending .md) is written beside it",
    ),
    Option("--site", default="auto", choices=("auto", "given"), help="auto: the gate; given: each case's site"),
    DEVICE,
    NO_MIRROR,
    MIRROR_PASSES,
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(
        verbs,
        "evaluate",
        "score a model bundle on a labelled dataset: Dice, HD95, lesion-wise Dice, gate accuracy",
        OPTIONS,
    )


def markdown_path(out: Path) -> Path:
    """REPORT.json's summary: REPORT.md, so two reports in one folder keep their own summaries."""
    return out.with_suffix(".md")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse a report name or folder we cannot write before any work is done."""
    if args.out.suffix.lower() != ".json":
        raise InputError(f"{args.out}: the report file must end in .json")
    check_writable(args.out)
    check_writable(markdown_path(args.out))


def full_command(verb: str, options: list[Option], args: argparse.Namespace) -> str:
    """The command as given, every option spelled out (defaults too): a report records exactly how it was made."""
    words = to_argv(options, values_of(options, args), always=[o.dest for o in options])
    return shlex.join(["uharmony", verb, *words])


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _label_columns(report: dict[str, Any]) -> list[str]:
    """Every scored label in first-seen order, the whole lesion last."""
    names = dict.fromkeys(k for s in report["sites"].values() for k in s["dice"])
    return [n for n in names if n != WHOLE] + [WHOLE]


def _gate_cell(site: dict[str, Any]) -> str:
    if site["seen"] or site["unfamiliar_share"] is None:
        return _cell(site["gate_accuracy"], 2)
    return f"unseen ({site['unfamiliar_share']:.0%} flagged unfamiliar)"


def _case_cells(case: dict[str, Any], labels: list[str]) -> list[Any]:
    gate = [case["chosen"], case["entropy"], case["familiar"]]
    dice = [case["dice"].get(n) for n in labels]
    lesions = [case["lesion_dice"].get(n) for n in labels]
    return [case["case"], case["site"], *gate, *dice, case["hd95_mm"].get(WHOLE), *lesions]


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: per-site table, the gate's confusion matrix, per-case table.

    Lesion-wise Dice columns follow HD95, so the voxel-Dice columns keep their place.
    """
    labels = _label_columns(report)
    mode = "given per case (--site given)" if report["site_given"] else "chosen by the domain gate"
    lines = [
        f"# Evaluation of {report['model']['name']} v{report['model']['version']} on {report['dataset']['name']}",
        "",
        f"{len(report['cases'])} cases from `{report['dataset']['path']}`; site weights {mode}; "
        f"{report['device']} {report['precision']}, {report['seconds']:.1f} s.",
        "",
        "## Per site",
        "",
    ]
    lesion_header = [f"Lesion-wise Dice {n}" for n in labels]
    header = ["Site", "Cases", *[f"Dice {n}" for n in labels], f"HD95 {WHOLE} (mm)", *lesion_header, "Gate accuracy"]
    rows = [
        [
            name,
            s["cases"],
            *[s["dice"].get(n) for n in labels],
            s["hd95_mm"].get(WHOLE),
            *[s["lesion_dice"].get(n) for n in labels],
            _gate_cell(s),
        ]
        for name, s in report["sites"].items()
    ]
    lines += _table(header, rows)
    confusion = report["gate_confusion"]
    if confusion is not None:
        columns = list(next(iter(confusion.values())))
        lines += ["", "## Gate confusion", "", "Rows: the case's site; columns: the site the gate chose.", ""]
        lines += _table(["Site", *columns], [[s, *counts.values()] for s, counts in confusion.items()])
        lines += ["", f"Gate accuracy over cases from sites the model knows: {_cell(report['gate_accuracy'], 3)}"]
    lines += ["", "## Per case", ""]
    header = ["Case", "Site", "Chosen", "Entropy", "Familiar", *[f"Dice {n}" for n in labels], f"HD95 {WHOLE} (mm)"]
    header += lesion_header
    lines += _table(header, [_case_cells(c, labels) for c in report["cases"]])
    return "\n".join(lines) + "\n"


def print_summary(report: dict[str, Any], out: Path) -> None:
    """Per-site whole-lesion Dice and gate accuracy, then where the report went."""
    for name, s in report["sites"].items():
        gate = "" if report["site_given"] else f", gate accuracy {_gate_cell(s)}"
        lesions = f" (lesion-wise {_cell(s['lesion_dice'].get(WHOLE))})"
        print(f"{name}: {s['cases']} cases, whole-lesion Dice {_cell(s['dice'].get(WHOLE))}{lesions}{gate}")
    if not report["site_given"]:
        print(f"Gate accuracy (sites the model knows): {_cell(report['gate_accuracy'])}")
    print(f"Wrote {out} and {markdown_path(out)} ({len(report['cases'])} cases, {report['seconds']:.1f} s)")


def run_evaluate(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Check everything, score every case, then write the JSON report and its Markdown summary atomically."""
    from UHarmonyLib.evaluation.report import describe_run, evaluate_dataset, map_dataset
    from UHarmonyLib.inference.device import resolve_device
    from UHarmonyLib.model.weights import load_bundle

    start = time.perf_counter()
    check_outputs(args)
    device = resolve_device(args.device)
    bundle = load_bundle(args.model)
    mapped = map_dataset(bundle, args.data, args.site)
    if args.out.resolve() == mapped.file:
        raise InputError(f"{args.out}: the report would overwrite the dataset file")
    passes = mirror_passes(args)
    reporter.log(describe_run(bundle, mapped, device, passes))
    body = evaluate_dataset(bundle, mapped, args.site, device, reporter, passes)
    report = {
        "model": {"name": bundle.card["name"], "version": bundle.card["version"], "path": str(bundle.path.resolve())},
        "command": full_command("evaluate", OPTIONS, args),
        "software": f"UHarmonyLib {__version__}",
        "seconds": round(time.perf_counter() - start, 3),
        **body,
    }
    write_text_atomic(markdown_path(args.out), render_markdown(report))
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    payload = {
        "report": str(args.out),
        "markdown": str(markdown_path(args.out)),
        **{
            k: report[k]
            for k in (
                "site_given",
                "gate_accuracy",
                "mean_dice_whole_lesion",
                "mean_lesion_dice_whole_lesion",
                "sites",
                "seconds",
            )
        },
    }
    reporter.result(payload)
    if not isinstance(reporter, JsonReporter):
        print_summary(report, args.out)
    return payload
