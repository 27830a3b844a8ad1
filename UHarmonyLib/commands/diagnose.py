"""`uharmony diagnose`: appearance vs structure evidence per site pair and a recommendation, as HTML + JSON.

For sites that cannot pool images, each writes a summary of its cases (`--summarize`) and
one site diagnoses its own cases with the others' summaries (`--peer-summaries`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from UHarmonyLib.commands.evaluate import full_command
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_creatable, check_writable, write_text_atomic
from UHarmonyLib.options import (
    DEVICE,
    MIRROR_PASSES,
    NO_MIRROR,
    PROGRESS,
    Option,
    Verbs,
    add_command,
    defaults,
    field_options,
    mirror_passes,
)
from UHarmonyLib.progress import JsonReporter, Reporter
from UHarmonyLib.training.config import DEFAULT_STEPS, TrainConfig

if TYPE_CHECKING:
    from UHarmonyLib.diagnose.trials import TrialSettings

REPORT_HTML, SUMMARY_JSON = "report.html", "summary.json"
SHOWN = 6  # findings printed to the terminal; the report lists all
SUMMARIZE_DESTS = ("data", "summarize", "site", "progress")  # the options --summarize takes
# the network the trials train: train's own options (same flags, defaults and checks)
_TRAIN = {o.dest: o for o in field_options(TrainConfig)}
TRIAL_OPTIONS = [
    Option("--budget-minutes", type=float, default=20.0, metavar="MIN", help="trials: time for all of them (20)"),
    Option("--trial-seeds", type=int, default=2, metavar="N", help="trials: seeds, each its own folds (2)"),
    Option("--trial-folds", type=int, default=2, metavar="K", help="trials: folds of each site's cases (2)"),
    Option(
        "--trial-max-steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"trials: the steps of the training the advice is for, and the most a trial runs ({DEFAULT_STEPS}, "
        "train's default); shorter trials add a learning check",
    ),
    Option("--margin", type=float, default=0.01, help="trials: Dice gain over plain training worth advising (0.01)"),
    Option(
        "--harmonize-method",
        metavar="METHOD",
        help="trials: harmonization of the harmonized strategies (auto: the method the screen finds best)",
    ),
    *(
        replace(_TRAIN[dest], help=f"trials: {_TRAIN[dest].help}")
        for dest in ("patch", "filters", "batch_size", "spacing")
    ),
]
OPTIONS = [
    Option("--data", required=True, type=Path, metavar="DATASET_JSON", help="or its folder"),
    Option(
        "--peer-summaries",
        type=Path,
        nargs="+",
        metavar="SITE_SUMMARY",
        help="other sites' summaries (--summarize) to compare with DATA's sites, for sites that cannot pool images",
    ),
    Option("--model", type=Path, metavar="BUNDLE", help="add the model's evidence (gate, Dice)"),
    Option("--out", type=Path, metavar="REPORT_DIR", help="report.html and summary.json (required unless --summarize)"),
    Option(
        "--summarize",
        type=Path,
        metavar="SITE_SUMMARY",
        help="instead of a report, write one site's case features (no images, paths or case names) for other sites",
    ),
    Option("--site", metavar="NAME", help="--summarize: the site of DATA to summarize (needed if it holds several)"),
    Option(
        "--trials",
        action="store_true",
        help="also train each strategy briefly on held-out splits and advise from the measured Dice",
    ),
    *TRIAL_OPTIONS,
    DEVICE,
    NO_MIRROR,
    MIRROR_PASSES,
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


def trial_settings(args: argparse.Namespace) -> TrialSettings | None:
    """The trials' settings, checked before any work; None without --trials (whose options it then refuses)."""
    from UHarmonyLib.diagnose.trials import AUTO, TrialSettings

    if not args.trials:
        given = next((o.flag for o in TRIAL_OPTIONS if getattr(args, o.dest) != defaults([o])[o.dest]), None)
        if given is not None:
            raise InputError(f"{given} sets up the outcome trials: add --trials")
        return None
    if args.peer_summaries:
        raise InputError(
            "--trials cannot use --peer-summaries: the outcome trials train and score on every site's images and "
            "labels in one place, and a summary holds neither; to train across sites that cannot pool images, "
            "use `uharmony federated`"
        )
    settings = TrialSettings(
        seeds=args.trial_seeds,
        folds=args.trial_folds,
        budget_minutes=args.budget_minutes,
        margin=args.margin,
        max_steps=args.trial_max_steps,
        method=args.harmonize_method or AUTO,
        patch=tuple(args.patch),
        filters=tuple(args.filters),
        batch_size=args.batch_size,
        spacing=None if args.spacing is None else tuple(args.spacing),
        device=args.device,
    )
    settings.check()
    return settings


def run_summarize(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """`--summarize`: one site's summary (diagnose/summaries.py), written atomically; no report."""
    from UHarmonyLib.diagnose import summarize_site

    start = time.perf_counter()
    extra = next(
        (o.flag for o in OPTIONS if o.dest not in SUMMARIZE_DESTS and getattr(args, o.dest) != o.default), None
    )
    if extra is not None:
        raise InputError(f"{extra} does not go with --summarize, which writes only the site's summary")
    check_writable(args.summarize)
    record = summarize_site(args.data, args.site, reporter)
    text = json.dumps(record, indent=1) + "\n"
    write_text_atomic(args.summarize, text)
    payload = {
        "summary": str(args.summarize),
        "site": record["site"],
        "cases": record["case_count"],
        "bytes": len(text.encode("utf-8")),
        "seconds": round(time.perf_counter() - start, 3),
    }
    reporter.result(payload)
    if not isinstance(reporter, JsonReporter):
        print(
            f"Wrote {payload['summary']}: {payload['cases']} cases of site {payload['site']}, {payload['bytes']} bytes "
            "of case features (no images, paths or case names); give it to the site that runs "
            "`uharmony diagnose --peer-summaries`"
        )
    return payload


def run_diagnose(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Measure, compare, decide (and score the model as `evaluate` does), then write report.html and summary.json."""
    from UHarmonyLib.diagnose import diagnose_dataset
    from UHarmonyLib.diagnose.report import render_html
    from UHarmonyLib.diagnose.summaries import read_summary

    if args.summarize is not None:
        return run_summarize(args, reporter)
    if args.site is not None:
        raise InputError("--site names the site to summarize: add --summarize SITE_SUMMARY")
    if args.out is None:
        raise InputError("--out REPORT_DIR is required (or --summarize SITE_SUMMARY, to summarize a site for others)")
    start = time.perf_counter()
    check_out(args.out)
    trials = trial_settings(args)
    passes = mirror_passes(args)
    peers = [read_summary(path) for path in args.peer_summaries or []]
    if trials is not None:
        from UHarmonyLib.diagnose.trials import trial_plan

        plan = trial_plan(args.data, trials)
    model = None
    if args.model is not None:
        from UHarmonyLib.diagnose.model import map_for_model
        from UHarmonyLib.inference.device import resolve_device
        from UHarmonyLib.inference.engine import mirror_flips
        from UHarmonyLib.model.weights import load_bundle

        device = resolve_device(args.device)
        bundle = load_bundle(args.model)
        mirror_flips(bundle, passes)  # refuses more passes than the card's axes give, before any work
        model = (bundle, map_for_model(bundle, args.data), device)
    summary, cases = diagnose_dataset(args.data, reporter, peers)
    if model is not None:
        from UHarmonyLib.diagnose.model import model_evidence

        summary["model"] = model_evidence(*model, reporter, passes)
    if trials is not None:
        from UHarmonyLib.diagnose.trials import run_trials

        summary["trials"] = run_trials(args.data, plan, trials, reporter)
    recorded = OPTIONS if args.trials else [o for o in OPTIONS if o not in TRIAL_OPTIONS]
    summary["command"] = full_command("diagnose", recorded, args)
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
        **({k: decision[k] for k in ("can_tell", "cannot_tell")} if peers else {}),
        **(
            {"trial_advice": summary["trials"]["advice"], "trial_reason": summary["trials"]["reason"]} if trials else {}
        ),
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
        if trials is not None:
            outcome = summary["trials"]
            print(f"Trials ({outcome['steps']} steps x {outcome['budget']['trials']}): {outcome['advice']}")
            print(f"  {outcome['reason']}")
            screen = outcome["harmonize_method"]["screen"]
            if screen is not None:
                print(f"  harmonization screened: {screen['verdict']}")
            drivers = outcome["drivers"]
            if drivers["sites"]:
                shown = ", ".join(f"{site} {d:+.3f}" for site, d in drivers["sites"].items())
                print(f"  {drivers['strategy']} - plain per site: {shown}")
        print(f"Wrote {payload['report']} and {payload['summary']} ({summary['seconds']:.1f} s)")
    return payload
