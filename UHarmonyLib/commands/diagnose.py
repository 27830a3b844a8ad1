"""`uharmony diagnose`: appearance vs structure evidence per site pair and a recommendation, as HTML + JSON."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from UHarmonyLib.commands.evaluate import full_command
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_creatable, check_writable, write_text_atomic
from UHarmonyLib.options import DEVICE, NO_MIRROR, PROGRESS, Option, Verbs, add_command
from UHarmonyLib.progress import JsonReporter, Reporter

REPORT_HTML, SUMMARY_JSON = "report.html", "summary.json"
SHOWN = 6  # findings printed to the terminal; the report lists all
OPTIONS = [
    Option("--data", required=True, type=Path, metavar="DATASET_JSON", help="or its folder"),
    Option("--model", type=Path, metavar="BUNDLE", help="add the model's evidence (gate, Dice)"),
    Option("--out", required=True, type=Path, metavar="REPORT_DIR", help="report.html and summary.json"),
    DEVICE,
    NO_MIRROR,
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "diagnose", "do sites differ in appearance, structure, both or neither? (HTML report)", OPTIONS)


def check_out(out: Path) -> None:
    """REPORT_DIR: an existing folder or one that can be created (with its parents); refused before any work."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    check_creatable(out, out)
    for name in (REPORT_HTML, SUMMARY_JSON):
        if out.is_dir():
            check_writable(out / name)


def run_diagnose(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Measure, compare, decide (and score the model as `evaluate` does), then write report.html and summary.json."""
    from UHarmonyLib.diagnose import diagnose_dataset
    from UHarmonyLib.diagnose.report import render_html

    start = time.perf_counter()
    check_out(args.out)
    model = None
    if args.model is not None:
        from UHarmonyLib.diagnose.model import map_for_model
        from UHarmonyLib.inference.device import resolve_device
        from UHarmonyLib.model.weights import load_bundle

        device = resolve_device(args.device)
        bundle = load_bundle(args.model)
        model = (bundle, map_for_model(bundle, args.data), device)
    summary, cases = diagnose_dataset(args.data, reporter)
    if model is not None:
        from UHarmonyLib.diagnose.model import model_evidence

        summary["model"] = model_evidence(*model, reporter, mirror=not args.no_mirror)
    summary["command"] = full_command("diagnose", OPTIONS, args)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    page = render_html(summary, cases)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(args.out / REPORT_HTML, page)
    decision = summary["decision"]
    payload = {
        "report": str(args.out / REPORT_HTML),
        "summary": str(args.out / SUMMARY_JSON),
        "recommendation": decision["recommendation"],
        "appearance_findings": decision["appearance_findings"],
        "structural_findings": decision["structural_findings"],
        "cautions": decision["cautions"],
        "seconds": summary["seconds"],
    }
    reporter.result(payload)
    if not isinstance(reporter, JsonReporter):
        print(f"Recommendation: {decision['recommendation']}. {decision['advice']}")
        for line in decision["cautions"]:
            print(f"Caution: {line}")
        findings = decision["appearance_findings"] + decision["structural_findings"]
        for line in findings[:SHOWN]:
            print(f"  - {line}")
        if len(findings) > SHOWN:
            print(f"  ... and {len(findings) - SHOWN} more findings in the report")
        print(f"Wrote {payload['report']} and {payload['summary']} ({summary['seconds']:.1f} s)")
    return payload
