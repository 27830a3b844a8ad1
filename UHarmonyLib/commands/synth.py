"""`uharmony synth`: write a synthetic multi-site lesion dataset (Decathlon layout) into a folder.

Safety: everything is generated into a staging folder (a hidden sibling of a new DIR, or
a hidden folder inside an existing one) and moved into place at the end, so an
interrupted run leaves nothing half-written and nothing is ever written outside DIR.
An existing non-empty DIR is refused unless `--overwrite`, and even then only the files
that an earlier `uharmony synth` listed in its dataset.json are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_creatable, umask_mode
from UHarmonyLib.options import PROGRESS, Option, Verbs, add_command
from UHarmonyLib.progress import JsonReporter, Reporter

if TYPE_CHECKING:
    from UHarmonyLib.data.spec import SynthSpec

SPACING_RANGE = (1.0, 8.0)  # mm: the template is 1 mm; coarser than 8 mm leaves too few voxels for lesions
OPTIONS = [
    Option("--scenario", metavar="NAME|SPEC.json", help="built-in scenario, 'list', or a JSON spec file"),
    Option("--out", type=Path, metavar="DIR", help="dataset folder: new or empty (or see --overwrite)"),
    Option("--cases-per-site", type=int, default=4, metavar="N", help="default 4 (a site's 'cases' wins)"),
    Option("--seed", type=int, default=0, help="same seed, same bytes (default 0)"),
    Option("--spacing", type=float, default=2.0, metavar="MM", help="generation grid in mm (default 2)"),
    Option(
        "--channel-naming",
        choices=["msd", "brats"],
        help="MR-physics channel names: FLAIR/T1w/t1gd/T2w (msd) or flair/t1/t1ce/t2 (brats); default: the spec's",
    ),
    Option("--list-scenarios", action="store_true", help="print the built-in scenarios"),
    Option("--overwrite", action="store_true", help="replace a dataset an earlier synth wrote in DIR"),
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "synth", "write a synthetic multi-site lesion dataset (Decathlon layout)", OPTIONS)


def previous_files(out: Path) -> list[Path]:
    """The files an earlier `uharmony synth` wrote into `out` (from its dataset.json); refuse anything else."""
    from UHarmonyLib.data.datasets import DATASET_JSON
    from UHarmonyLib.data.spec import GENERATOR

    meta = out / DATASET_JSON
    refuse = f"{out}: folder is not empty and has no dataset.json written by {GENERATOR}; refusing to clear it"
    if not meta.is_file():
        raise InputError(refuse)
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(refuse) from e
    if not isinstance(data, dict) or not str(data.get("generator", "")).startswith(GENERATOR):
        raise InputError(refuse)
    root = out.resolve()
    files = [meta]
    for entry in data.get("training", []):
        images = entry.get("image", []) if isinstance(entry, dict) else []
        rels = [*(images if isinstance(images, list) else [images]), entry.get("label")]
        for rel in rels:
            if not isinstance(rel, str):
                continue
            path = (out / rel).resolve()
            if not path.is_relative_to(root) or path == root:
                raise InputError(f"{meta}: lists {rel}, outside {out}; refusing to clear it")
            files.append(path)
    return files


def check_out(out: Path, overwrite: bool) -> list[Path]:
    """Refuse an unusable DIR before any work; returns the earlier dataset's files to replace."""
    from UHarmonyLib.data.spec import GENERATOR

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if not out.exists():
        check_creatable(out.parent, out)  # missing parents are created when the dataset is written
        return []
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: folder is not writable")
    if not any(out.iterdir()):
        return []
    if not overwrite:
        raise InputError(f"{out}: folder is not empty; use --overwrite to replace a dataset written by {GENERATOR}")
    return previous_files(out)


def commit(staging: Path, out: Path, old: list[Path]) -> None:
    """Move the finished dataset into `out`: rename a new folder, or swap the files of an earlier dataset."""
    from UHarmonyLib.data.datasets import DATASET_JSON, IMAGES, LABELS

    if not out.exists():
        os.chmod(staging, umask_mode(0o777))
        os.rename(staging, out)
        return
    for path in old:
        path.unlink(missing_ok=True)
    for sub in (IMAGES, LABELS):
        target = out / sub
        target.mkdir(exist_ok=True)
        for f in sorted((staging / sub).iterdir()):
            os.replace(f, target / f.name)
    os.replace(staging / DATASET_JSON, out / DATASET_JSON)  # last: the dataset is complete once this exists


def list_scenarios(reporter: Reporter) -> dict[str, Any]:
    from UHarmonyLib.data.spec import scenario_table

    rows = scenario_table()
    if isinstance(reporter, JsonReporter):
        reporter.result({"scenarios": rows})
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['sites']} sites  {r['description']}")
    return {"scenarios": rows}


def check_args(args: argparse.Namespace) -> None:
    if args.scenario is None:
        raise InputError("synth needs --scenario NAME|SPEC.json (see --list-scenarios)")
    if args.out is None:
        raise InputError("synth needs --out DIR")
    if not 1 <= args.cases_per_site <= 10000:
        raise InputError(f"--cases-per-site must be from 1 to 10000, got {args.cases_per_site}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    lo, hi = SPACING_RANGE
    if not lo <= args.spacing <= hi:
        raise InputError(f"--spacing must be from {lo:g} to {hi:g} mm, got {args.spacing:g}")


def run_synth(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    from UHarmonyLib.data.datasets import DATASET_JSON, channel_name, dataset_channels, write_dataset
    from UHarmonyLib.data.spec import resolve_scenario, with_channel_naming

    if args.list_scenarios or args.scenario == "list":
        return list_scenarios(reporter)
    start = time.perf_counter()
    check_args(args)
    spec: SynthSpec = resolve_scenario(args.scenario)
    if args.channel_naming is not None:
        spec = with_channel_naming(spec, args.channel_naming)
    out = Path(args.out)
    old = check_out(out, args.overwrite)
    channels = [channel_name(c, spec.channel_naming) for c in dataset_channels(spec.sites)]
    reporter.log(
        f"scenario {spec.scenario}: {len(spec.sites)} sites ({', '.join(s.name for s in spec.sites)}), "
        f"channels {', '.join(channels)}, {args.spacing:g} mm, seed {args.seed}"
    )
    if out.exists():
        staging = Path(tempfile.mkdtemp(prefix=".uharmony-synth-", dir=out))
    else:
        parent = out.parent if str(out.parent) else Path(".")
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-synth-", dir=parent))
    try:
        t0 = time.perf_counter()
        data = write_dataset(
            staging,
            spec,
            seed=args.seed,
            spacing=float(args.spacing),
            cases_per_site=args.cases_per_site,
            progress=lambda done, total: reporter.progress("synth", done, total),
        )
        per_case = (time.perf_counter() - t0) / max(data["numTraining"], 1)
        commit(staging, out, old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    payload = {
        "dataset": str(out / DATASET_JSON),
        "out": str(out),
        "scenario": spec.scenario,
        "sites": [s.name for s in spec.sites],
        "channels": channels,
        "cases": data["numTraining"],
        "seconds": round(time.perf_counter() - start, 3),
        "seconds_per_case": round(per_case, 3),
    }
    reporter.result(payload)
    if not isinstance(reporter, JsonReporter):
        print(
            f"Wrote {payload['cases']} cases from {len(spec.sites)} sites ({spec.scenario}) to {out} "
            f"in {payload['seconds']:.1f} s ({per_case:.2f} s per case)"
        )
    return payload
