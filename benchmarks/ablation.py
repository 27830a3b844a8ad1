"""Which of U-Harmony's design choices pay off at the reproduction table's budget? Variants, paired case by case.

    .venv/bin/python benchmarks/ablation.py --work DIR [--quick] [--final] [--jobs 2] [--variants NAME ...]
        [--out docs/results/ablation.json]

U-Harmony here makes two choices beyond the paper's outline (docs/ARCHITECTURE.md): a cubic restore polynomial
below full resolution (`--restore-degree`), and site rows trained as a shared value plus a per-site offset
(`--site-params residual`). The reproduction table already holds both restores with residual rows (uharmony,
uharmony_linear); this trains the same two with independent rows on the table's data, settings and replicates,
and pairs every variant with the table's arms on the same test cases, so each factor's effect is a paired
difference with a bootstrap CI. With `--work` naming a finished reproduce.py work folder (same settings and
`--final`) its data, models and scores are reused and only the variants are trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobs import Job
from protocol import compare, write_case_scores
from reproduce import FULL, PROTOCOL, QUICK, Run, check_work, joint_jobs, log, make_data, replicates_of, row

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import check_writable, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, dict[str, Any]] = {  # arm stem -> train settings; the table has both restores with residual rows
    "uharmony_independent": {"restore_degree": 3, "site_params": "independent"},
    "uharmony_linear_independent": {"restore_degree": 1, "site_params": "independent"},
}
TABLE_ARMS = ("joint_instance", "uharmony_gated", "uharmony_linear_gated")
CONTRASTS = (  # (b, a, what b - a measures)
    ("uharmony_gated", "uharmony_independent_gated", "residual over independent site rows (cubic restore)"),
    ("uharmony_linear_gated", "uharmony_linear_independent_gated", "residual over independent site rows (linear)"),
    ("uharmony_gated", "uharmony_linear_gated", "cubic over linear restore (residual rows)"),
    ("uharmony_independent_gated", "uharmony_linear_independent_gated", "cubic over linear restore (independent)"),
    ("uharmony_independent_gated", "joint_instance", "U-Harmony with independent rows over plain joint training"),
)


def model_name(variant: str, r: int) -> str:
    return f"{variant.replace('_', '-')}-r{r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the reproduce table's miniature settings")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "ablation.json")
    parser.add_argument("--work", type=Path, required=True, help="a reproduce.py work folder to reuse (or a new one)")
    parser.add_argument("--jobs", type=int, default=1, help="single-threaded worker processes (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    args = parser.parse_args()
    if args.quick and args.final:
        parser.error("--quick never uses the test seeds: drop --final")
    started = time.perf_counter()
    settings = QUICK if args.quick else FULL
    check_writable(args.out)
    check_work(args.work, {**json.loads(json.dumps(asdict(settings))), "final": args.final})
    run = Run(args.work, settings, args.device, args.jobs, started)
    run.data = make_data(args.work, settings, args.final)
    seeds = PROTOCOL.replicate_seeds(settings.replicates)
    jobs: list[Job] = [
        j for j in joint_jobs(run) if j.out.name.rsplit("-r", 1)[0] in ("instance", "uharmony", "linear")
    ]
    for v in args.variants:
        jobs += [
            run.train(model_name(v, r), f"train-r{r}", "uharmony", seed, settings.steps, **VARIANTS[v])
            for r, seed in enumerate(seeds)
        ]
    run.build(jobs)
    scoring = []
    for r in range(settings.replicates):
        for model, arm in (
            ("instance", "joint_instance"),
            ("uharmony", "uharmony_gated"),
            ("linear", "uharmony_linear_gated"),
        ):
            scoring.append((f"{arm}/r{r}", run.score_job(f"{model}-r{r}", "test", False, arm, r)))
        for v in args.variants:
            for given, mode in ((True, "given"), (False, "gated")):
                arm = f"{v}_{mode}"
                scoring.append((f"{arm}/r{r}", run.score_job(model_name(v, r), "test", given, arm, r)))
    run.score(scoring)
    arms = [*TABLE_ARMS, *(f"{v}_{m}" for v in args.variants for m in ("given", "gated"))]
    rows = [row(arm, "protocols", replicates_of(run, arm), settings.steps) for arm in arms]
    compared = [
        {**compare(f"{b} - {a}", replicates_of(run, a), replicates_of(run, b)), "meaning": meaning}
        for b, a, meaning in CONTRASTS
        if a in arms and b in arms
    ]
    doc = {
        "rows": rows,
        "comparisons": compared,
        "evaluation": "test" if args.final else "development",
        "protocol": PROTOCOL.to_json(),
        "variants": {
            "uharmony": {"restore_degree": 3, "site_params": "residual"},
            "uharmony_linear": {"restore_degree": 1, "site_params": "residual"},
            **VARIANTS,
        },
        "command": "python benchmarks/ablation.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": {**asdict(settings), "jobs": args.jobs, "torch_threads_per_job": 1},
        "models": run.trained,
        "notes": [
            "uharmony and uharmony_linear are the reproduce table's models (site rows shared + offset); the variants "
            "change only what 'variants' lists. Same data, replicates, steps, sampler and test cases as "
            "benchmarks/reproduce.py; models marked reused in 'models' were trained by it in the same work folder.",
            "comparisons: b minus a, case by case within each replicate, with the hierarchical bootstrap 95 % CI "
            "(replicates, then cases); holds when its lower bound is above 0. Scored with one pass (no test-time "
            "mirroring), as the table is.",
        ],
    }
    doc["case_scores"] = write_case_scores(args.out, PROTOCOL, args.final, [run.scored[n] for n, _ in scoring]).name
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for x in rows:
        print(f"{x['method']:<36} {x['dice_mean']} +/- {x['dice_std']}")
    for c in compared:
        print(f"{c['name']}: {c['diff_mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    log(f"wrote {args.out}", started)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as e:  # a bad --out, --work or data path: one line, nothing half-written
        sys.exit(f"ablation.py: {e}")
