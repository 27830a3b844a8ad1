"""The reproduction table on MR-physics sites: the paper's four claims with paired bootstrap CIs, the gate's
honesty, and adding a site fairly.

    .venv/bin/python benchmarks/reproduce.py [--quick] [--plan] [--final] [--jobs 2] [--work DIR] [--keep]
        [--out docs/results/reproduce.json] [--gate-map PNG] [--device auto]

Training sites are the four `protocols` hospitals (same four channels, same lesion statistics; field strength
and sequences differ); the annotation claim trains on the four `annotation` sites (one protocol, four
annotators). Every arm gets the same data, steps, sampler and test cases; replicate r trains on its own draw
(`training_seeds[r]`) with that training seed, and test cases come from the protocol's test seeds only with
`--final` (benchmarks/protocol.py). Models are trained by the library's `train` and `add_site`, and every case
goes through `segment_volumes` as `uharmony segment` runs it; every case's scores are saved beside the summary.
Claims are written, before the final run, in docs/reproduction.md ("The claims"); each is a paired comparison
with a hierarchical bootstrap 95 % CI. The plan with its estimated minutes is printed first (`--plan` stops
there). Jobs run in `--jobs` single-threaded processes; a rerun with the same `--work` reuses every finished
dataset, bundle and score file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from gate_figures import accuracy, expected_calibration_error, flag_figures, threshold_at
from jobs import FineTune, Job, ScoreJob, run_all
from protocol import Scored, compare, load_protocol, load_tests, write_case_scores

from UHarmonyLib.data.datasets import DATASET_JSON, write_dataset
from UHarmonyLib.data.scenarios import PHYSICS_DEFAULTS
from UHarmonyLib.data.spec import SynthSpec, parse_spec, resolve_scenario
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined
from UHarmonyLib.files.atomic import atomic_dir, check_writable, write_text_atomic
from UHarmonyLib.inference.device import resolve_device
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.add_site import AddSiteConfig

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
NEW_SITE = "hospital-new"
NEW_SITE_SPEC: dict[str, Any] = {  # a fifth protocol: 1.5 T, low-flip spoiled-gradient T1, long-echo T2, 4 mm slices
    "name": "reproduce-new-site",
    "defaults": PHYSICS_DEFAULTS,
    "sites": [
        {
            "name": NEW_SITE,
            "physics": {"field_strength": 1.5, "kspace": [0.85, 0.85, 1.0]},
            "channels": {
                "FLAIR": {"TR": 9000, "TE": 120, "TI": 2200},
                "T1w": {"sequence": "spgr", "TR": 15, "TE": 5, "flip": 15},
                "t1gd": {"sequence": "spgr", "TR": 15, "TE": 5, "flip": 15},
                "T2w": {"TR": 4500, "TE": 110},
            },
            "spacing": [2.0, 2.0, 4.0],
            "noise": 0.025,
            "bias": 0.2,
            "scale": 600.0,
        }
    ],
}
ADDSITE_LR = 2e-3  # add-site's default; fine-tuning the InstanceNorm model uses the same schedule
FALSE_POSITIVE_RATE = 0.05  # declared: the unfamiliar flag's share of known-site development cases flagged
ADDSITE_OLD_SITE_LIMIT = -0.005  # declared: a method may cost the old sites at most this much
CLAIMS = (  # (name, a, b, margin): the claim holds when the 95 % CI of b - a lies above margin
    ("1. U-Harmony gated beats joint InstanceNorm", "joint_instance", "uharmony_gated", 0.0),
    ("2. U-Harmony gated is within 1 Dice point of the site given", "uharmony_given", "uharmony_gated", -0.01),
    ("3. U-Harmony beats residual DSBN (cubic over affine restore)", "uharmony_linear_given", "uharmony_given", 0.0),
    (
        "4. on annotation, site-conditioned beats joint InstanceNorm",
        "annotation_joint_instance",
        "annotation_uharmony_given",
        0.0,
    ),
)
COMPARISONS = (  # further paired differences, b - a, reported but not claimed
    ("uharmony_linear_gated", "joint_instance", "residual DSBN's architecture with the gate deciding, over plain"),
    ("joint_instance", "separate", "one joint model over one model per site"),
    ("annotation_uharmony_gated", "annotation_joint_instance", "on annotation, the gate deciding (it cannot tell)"),
)
ARMS = (  # the table's rows, in order: (arm, scenario)
    ("separate", "protocols"),
    ("joint_instance", "protocols"),
    ("uharmony_linear_given", "protocols"),
    ("uharmony_linear_gated", "protocols"),
    ("uharmony_given", "protocols"),
    ("uharmony_gated", "protocols"),
    ("annotation_joint_instance", "annotation"),
    ("annotation_uharmony_given", "annotation"),
    ("annotation_uharmony_gated", "annotation"),
)
ADDSITE_METHODS = ("addsite_uharmony", "addsite_finetune_instance", "addsite_scratch")


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (stored in the JSON; a reused --work folder must match it)."""

    spacing: float
    cases_per_site: int  # training cases per site and replicate
    test_cases_per_site: int
    calibration_cases_per_site: int  # development cases that set the unfamiliar threshold
    ladder_cases_per_rung: int
    filters: tuple[int, ...]
    patch: int
    batch_size: int
    steps: int  # per joint model; the separate models share this budget (steps / sites each)
    replicates: int
    addsite_cases: tuple[int, ...]
    addsite_draws: int
    addsite_steps: int  # add-site, fine-tuning and scratch alike
    new_site_test: int
    old_site_check: int  # test cases per old site scored again after adding the new one


@dataclass(frozen=True)
class Cost:
    """Seconds on the development CPU (one thread per job), for the plan's estimate only."""

    synth_case: float
    step: float
    test_case: float
    model: float  # per trained model: start-up, gate scaler, gate bank, saving


FULL = Settings(
    spacing=4.0,  # the physics sites' glioma-sized lesions (6-12 mm, with edema) survive a 4 mm grid
    cases_per_site=6,
    test_cases_per_site=PROTOCOL.test_cases_per_site,
    calibration_cases_per_site=5,
    ladder_cases_per_rung=6,
    filters=(8, 16, 32, 64),
    patch=32,
    batch_size=2,
    steps=300,
    replicates=PROTOCOL.replicates,
    addsite_cases=(1, 3, 5, 10),
    addsite_draws=3,
    addsite_steps=60,
    new_site_test=PROTOCOL.test_cases_per_site,
    old_site_check=2,
)
QUICK = Settings(
    spacing=4.0,
    cases_per_site=2,
    test_cases_per_site=1,
    calibration_cases_per_site=1,
    ladder_cases_per_rung=1,
    filters=(4, 8, 16),
    patch=32,
    batch_size=2,
    steps=4,
    replicates=2,
    addsite_cases=(1, 2),
    addsite_draws=1,
    addsite_steps=3,
    new_site_test=1,
    old_site_check=1,
)
COSTS = {  # measured 2026-12-04 on 2 cores, one thread per job (patch 32, filters 8-64, 4 channels, 4 mm)
    "full": Cost(synth_case=0.35, step=0.55, test_case=1.6, model=12.0),
    "quick": Cost(synth_case=0.4, step=0.15, test_case=0.2, model=8.0),
}


def log(message: str, started: float) -> None:
    print(f"[{(time.perf_counter() - started) / 60:6.1f} min] {message}", flush=True)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class DataJob:
    scenario: str  # a built-in scenario, or "new-site"
    seed: int
    cases: int


def new_site_spec() -> SynthSpec:
    return parse_spec(NEW_SITE_SPEC, "benchmarks/reproduce.py's new site")


def data_plan(s: Settings, final: bool) -> dict[str, DataJob]:
    """Every dataset of the run by name: training draws from training seeds, evaluation sets from the protocol's
    evaluation seeds (test seeds only when final), and the flag's calibration cases from the last development seed,
    which no evaluation set uses."""
    train = PROTOCOL.replicate_seeds(s.replicates)
    draws = PROTOCOL.replicate_seeds(s.addsite_draws)
    evaluation = PROTOCOL.evaluation_seeds(final)
    return {
        **{f"train-r{r}": DataJob("protocols", seed, s.cases_per_site) for r, seed in enumerate(train)},
        **{f"annotation-r{r}": DataJob("annotation", seed, s.cases_per_site) for r, seed in enumerate(train)},
        **{f"new-site-d{d}": DataJob("new-site", seed, max(s.addsite_cases)) for d, seed in enumerate(draws)},
        "test": DataJob("protocols", evaluation[0], s.test_cases_per_site),
        "annotation-test": DataJob("annotation", evaluation[1], s.test_cases_per_site),
        "new-site-test": DataJob("new-site", evaluation[2], s.new_site_test),
        "ladder": DataJob("unseen-ladder", evaluation[3], s.ladder_cases_per_rung),
        "calibration": DataJob("protocols", PROTOCOL.development_seeds[-1], s.calibration_cases_per_site),
    }


def synthesize(folder: Path, spec: SynthSpec, seed: int, spacing: float, cases: int) -> Path:
    """An MSD dataset written as `uharmony synth` writes it (atomically; a finished one is reused)."""
    if not (folder / DATASET_JSON).is_file():
        with atomic_dir(folder) as tmp:
            write_dataset(tmp, spec, seed, spacing, cases)
    return folder


def listing(dataset: Path, folder: Path, site: str | None = None, first: int = 0) -> Path:
    """A dataset.json listing some cases of `dataset` (one site's, or the first `first`) by absolute path."""
    if (folder / DATASET_JSON).is_file():
        return folder
    data = json.loads((dataset / DATASET_JSON).read_text(encoding="utf-8"))
    kept = [e for e in data["training"] if site is None or e["site"] == site]
    kept = kept[:first] if first else kept
    absolute = [
        {**e, "image": [str(dataset / p) for p in e["image"]], "label": str(dataset / e["label"])} for e in kept
    ]
    folder.mkdir(parents=True, exist_ok=True)
    sites = [s for s in data.get("sites", []) if any(e["site"] == s for e in kept)]  # listed sites must have cases
    listed = {
        **data,
        "training": absolute,
        "numTraining": len(absolute),
        **({"sites": sites} if "sites" in data else {}),
    }
    write_text_atomic(folder / DATASET_JSON, json.dumps(listed))
    return folder


def make_data(work: Path, s: Settings, final: bool) -> dict[str, Path]:
    specs = {name: resolve_scenario(name) for name in ("protocols", "annotation", "unseen-ladder")}
    specs["new-site"] = new_site_spec()
    (work / "data").mkdir(parents=True, exist_ok=True)
    data = {
        name: synthesize(work / "data" / name, specs[job.scenario], job.seed, s.spacing, job.cases)
        for name, job in data_plan(s, final).items()
    }
    for site in (x.name for x in specs["protocols"].sites):
        data[f"train-{site}"] = listing(data["train-r0"], work / "data" / f"train-{site}", site=site)
    for d in range(s.addsite_draws):
        for k in s.addsite_cases:
            data[f"new-site-d{d}-k{k}"] = listing(
                data[f"new-site-d{d}"], work / "data" / f"new-site-d{d}-k{k}", first=k
            )
    return data


# ---------------------------------------------------------------- the plan


def planned_work(s: Settings) -> dict[str, int]:
    """How many cases, models, optimizer steps and test-case inferences the run does."""
    sites, reps, added = 4, s.replicates, len(s.addsite_cases) * s.addsite_draws
    tests = sites * s.test_cases_per_site
    calibration, ladder = sites * s.calibration_cases_per_site, 5 * s.ladder_cases_per_rung
    return {
        "synth_cases": 2 * reps * sites * s.cases_per_site
        + s.addsite_draws * max(s.addsite_cases)
        + 2 * tests
        + s.new_site_test
        + ladder
        + calibration,
        "models": 5 * reps + sites + 3 * added,
        "steps": (5 * reps + 1) * s.steps + 3 * added * s.addsite_steps,
        "test_cases": tests * (5 * reps + 1)  # protocols: instance, uharmony and linear (given and gated), separate
        + tests * (2 * reps + 1)  # annotation: instance and uharmony given; gated on replicate 0 only
        + reps * (calibration + ladder)
        + 2 * s.new_site_test
        + 3 * added * (s.new_site_test + sites * s.old_site_check),
    }


def estimate_minutes(work: dict[str, int], cost: Cost, jobs: int) -> float:
    seconds = (
        work["synth_cases"] * cost.synth_case
        + work["models"] * cost.model
        + work["steps"] * cost.step
        + work["test_cases"] * cost.test_case
    )
    return seconds / 60 / max(1, jobs)


# ---------------------------------------------------------------- the run


class Run:
    """The run's folders, settings and clock, the record of every model trained and every set scored."""

    def __init__(self, work: Path, settings: Settings, device: str, jobs: int, started: float) -> None:
        self.work = work
        self.models = work / "models"
        self.scores = work / "scores"
        self.models.mkdir(parents=True, exist_ok=True)
        self.scores.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.device = device
        self.jobs = jobs
        self.started = started
        self.trained: list[dict[str, Any]] = []
        self.data: dict[str, Path] = {}
        self.scored: dict[str, Scored] = {}  # by score-job name

    def train(
        self,
        name: str,
        data: str,
        norm: str,
        seed: int,
        steps: int,
        restore_degree: int = 3,
        site_params: str = "residual",
    ) -> TrainConfig:
        """The library's `train` as a job (site rows shared + offset unless `site_params` says otherwise)."""
        s = self.settings
        return TrainConfig(
            data=[self.data[data]],
            out=self.models / name,
            norm=norm,
            filters=s.filters,
            restore_degree=restore_degree,
            site_params=site_params,
            steps=steps,
            patch=(s.patch,) * 3,
            batch_size=s.batch_size,
            seed=seed,
            spacing=(s.spacing,) * 3,
            val_fraction=0.0,  # the test cases score the model; the last weights are kept
            device=self.device,
            resume=True,  # continues an interrupted run's checkpoint, else starts fresh
        )

    def build(self, jobs: Sequence[Job]) -> None:
        """Every bundle job whose bundle is not there yet (bundles appear whole or not at all)."""
        todo = [j for j in jobs if not isinstance(j, ScoreJob) and not j.out.is_dir()]
        for j in jobs:
            if not isinstance(j, ScoreJob) and j.out.is_dir() and j not in todo:
                self.trained.append({"model": j.out.name, "reused": True})

        def done(job: Job, result: Any) -> None:
            assert not isinstance(job, ScoreJob)
            entry = {"model": job.out.name, "steps": result["steps"], "seconds": round(result["seconds"], 1)}
            self.trained.append({**entry, "seconds_per_step": result["seconds_per_step"]})
            log(f"{job.out.name}: {result['steps']} steps in {result['seconds']:.0f} s", self.started)

        log(f"{len(todo)} models to build ({len(jobs) - len(todo)} reused)", self.started)
        run_all(todo, self.jobs, done)

    def score(self, jobs: Sequence[tuple[str, ScoreJob]]) -> None:
        log(f"{len(jobs)} scoring jobs", self.started)
        for (name, _), scored in zip(jobs, run_all([j for _, j in jobs], self.jobs, lambda _job, _result: None)):
            self.scored[name] = scored
        log("scoring done", self.started)

    def score_job(self, model: str, data: str, given: bool, arm: str, replicate: int = 0, **kw: Any) -> ScoreJob:
        mode = "given" if given else "auto"
        out = self.scores / f"{model}--{data}--{mode}{kw.pop('suffix', '')}.json"
        return ScoreJob(self.models / model, self.data[data], given, arm, replicate, out, device=self.device, **kw)


def joint_jobs(run: Run) -> list[Job]:
    """Every joint model of the claims (replicate r: its draw, its seed) and the separate per-site models."""
    s = run.settings
    jobs: list[Job] = []
    for r, seed in enumerate(PROTOCOL.replicate_seeds(s.replicates)):
        jobs += [
            run.train(f"instance-r{r}", f"train-r{r}", "instance", seed, s.steps),
            run.train(f"uharmony-r{r}", f"train-r{r}", "uharmony", seed, s.steps),
            run.train(f"linear-r{r}", f"train-r{r}", "uharmony", seed, s.steps, restore_degree=1),
            run.train(f"annotation-instance-r{r}", f"annotation-r{r}", "instance", seed, s.steps),
            run.train(f"annotation-uharmony-r{r}", f"annotation-r{r}", "uharmony", seed, s.steps),
        ]
    first = PROTOCOL.replicate_seeds(1)[0]
    for site in training_sites():
        jobs.append(run.train(f"separate-{site}", f"train-{site}", "instance", first, s.steps // 4))
    return jobs


def training_sites() -> list[str]:
    return [x.name for x in resolve_scenario("protocols").sites]


def addsite_jobs(run: Run) -> list[Job]:
    """The new site added three ways at equal steps, for every case count and draw: add-site on replicate 0's
    U-Harmony model (backbone frozen), every weight of replicate 0's InstanceNorm model fine-tuned, and an
    InstanceNorm model trained on the new cases alone."""
    s = run.settings
    jobs: list[Job] = []
    for d, seed in enumerate(PROTOCOL.replicate_seeds(s.addsite_draws)):
        for k in s.addsite_cases:
            data = run.data[f"new-site-d{d}-k{k}"]
            jobs.append(
                AddSiteConfig(
                    model=run.models / "uharmony-r0",
                    data=data,
                    site=NEW_SITE,
                    out=run.models / f"addsite-uharmony-k{k}-d{d}",
                    steps=s.addsite_steps,
                    lr=ADDSITE_LR,
                    batch_size=s.batch_size,
                    seed=seed,
                    val_fraction=0.0,  # every one of the site's few cases trains; its test cases score
                    device=run.device,
                )
            )
            jobs.append(
                FineTune(
                    run.models / "instance-r0",
                    data,
                    run.models / f"addsite-finetune-instance-k{k}-d{d}",
                    s.addsite_steps,
                    ADDSITE_LR,
                    s.batch_size,
                    seed,
                    run.device,
                    f"instance-r0 with every weight fine-tuned on {k} {NEW_SITE} case(s)",
                )
            )
            jobs.append(
                run.train(f"addsite-scratch-k{k}-d{d}", f"new-site-d{d}-k{k}", "instance", seed, s.addsite_steps)
            )
    return jobs


def score_jobs(run: Run) -> list[tuple[str, ScoreJob]]:
    """Every (model, evaluation set, site mode) the figures need, by name."""
    s = run.settings
    out: list[tuple[str, ScoreJob]] = []
    for r in range(s.replicates):
        for model, data, given, arm in (
            (f"instance-r{r}", "test", False, "joint_instance"),
            (f"uharmony-r{r}", "test", True, "uharmony_given"),
            (f"uharmony-r{r}", "test", False, "uharmony_gated"),
            (f"linear-r{r}", "test", True, "uharmony_linear_given"),
            (f"linear-r{r}", "test", False, "uharmony_linear_gated"),
            (f"annotation-instance-r{r}", "annotation-test", False, "annotation_joint_instance"),
            (f"annotation-uharmony-r{r}", "annotation-test", True, "annotation_uharmony_given"),
            (f"annotation-uharmony-r{r}", "annotation-test", False, "annotation_uharmony_gated"),
            (f"uharmony-r{r}", "calibration", False, "calibration"),
            (f"uharmony-r{r}", "ladder", False, "ladder"),
        ):
            if r < replicates(arm, s):
                out.append((f"{arm}/r{r}", run.score_job(model, data, given, arm, r)))
    for site in training_sites():
        out.append((f"separate/{site}", run.score_job(f"separate-{site}", "test", False, "separate", sites=(site,))))
    for model, arm in (("uharmony-r0", "zero_shot_uharmony"), ("instance-r0", "zero_shot_instance")):
        out.append((arm, run.score_job(model, "new-site-test", False, arm)))
    for d in range(s.addsite_draws):
        for k in s.addsite_cases:
            for method in ADDSITE_METHODS:
                model, extra = f"{method.replace('_', '-')}-k{k}-d{d}", {"cases": k, "draw": d}
                out.append((f"{method}/k{k}/d{d}", run.score_job(model, "new-site-test", False, method, extra=extra)))
                old = run.score_job(
                    model, "test", False, f"{method}_old_sites", per_site=s.old_site_check, extra=extra, suffix="-old"
                )
                out.append((f"{method}_old_sites/k{k}/d{d}", old))
    return out


# ---------------------------------------------------------------- figures


def replicates_of(run: Run, arm: str) -> list[Scored]:
    """An arm's scores, one per replicate in order (the separate models' sites merged into one replicate)."""
    if arm == "separate":
        merged = Scored("separate", 0)
        for site in training_sites():
            merged.records += run.scored[f"separate/{site}"].records
        return [merged]
    return [run.scored[f"{arm}/r{r}"] for r in range(replicates(arm, run.settings))]


def replicates(arm: str, s: Settings) -> int:
    """The gate on `annotation` is scored on replicate 0 alone: it has no protocol difference to find, and its
    accuracy there only shows that it does not pretend to."""
    return 1 if arm == "annotation_uharmony_gated" else s.replicates


def std(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return round(float(np.std(kept, ddof=1)), 4) if len(kept) > 1 else 0.0


def row(arm: str, scenario: str, runs: Sequence[Scored], steps: int) -> dict[str, Any]:
    """One table row from per-replicate case scores (whole-lesion Dice): means over a site's cases, then sites;
    spread over replicates."""
    per_rep = [{site: mean_defined(cases) for site, cases in r.by_site().items()} for r in runs]
    rep_means = [mean_defined(list(p.values())) for p in per_rep]
    sites = list(per_rep[0])
    out = {
        "method": arm,
        "scenario": scenario,
        "backbone": "dynunet",
        "dice_mean": mean_defined(rep_means),
        "dice_std": std(rep_means) if len(runs) > 1 else std(list(per_rep[0].values())),
        "spread": "replicates" if len(runs) > 1 else "sites",
        "replicates": len(runs),
        "seed_means": rep_means,
        "per_site": {site: mean_defined([p[site] for p in per_rep]) for site in sites},
        "lesion_dice_mean": mean_defined([mean_defined(list(r.by_case("lesion_dice").values())) for r in runs]),
        "lesion_dice_per_site": {
            site: mean_defined([mean_defined(r.by_site("lesion_dice").get(site, [])) for r in runs]) for site in sites
        },
        "steps": steps,
    }
    gates = [r.gate_accuracy for r in runs if r.gate_accuracy is not None]
    if gates:
        out["gate_accuracy"] = round(float(np.mean(gates)), 4)
    return out


def claims(run: Run) -> list[dict[str, Any]]:
    """The four pre-declared claims: b - a case by case within each replicate, its 95 % CI, and whether it holds."""
    out = []
    for name, a, b, margin in CLAIMS:
        c = compare(name, replicates_of(run, a), replicates_of(run, b))
        out.append({**c, "margin": margin, "holds": bool(c["ci95"][0] > margin)})
    return out


def comparisons(run: Run) -> list[dict[str, Any]]:
    out = []
    for b, a, meaning in COMPARISONS:
        runs_a, runs_b = replicates_of(run, a), replicates_of(run, b)
        shared = min(len(runs_a), len(runs_b))
        out.append({**compare(f"{b} - {a}", runs_a[:shared], runs_b[:shared]), "meaning": meaning})
    return out


def gate_figures(run: Run) -> dict[str, Any]:
    """Accuracy and expected calibration error of the gate on the test cases of both scenarios (every replicate)."""
    by: dict[str, Any] = {}
    for scenario, arm in (("protocols", "uharmony_gated"), ("annotation", "annotation_uharmony_gated")):
        records = [rec for r in replicates_of(run, arm) for rec in r.records]
        by[scenario] = {
            "accuracy": accuracy(records),
            "ece": expected_calibration_error(records),
            "cases": len(records),
        }
    return {**by["protocols"], "by_scenario": by}


def unfamiliar(run: Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per rung of the unseen-site ladder: AUROC of its cases against the seen sites' test cases, and risk-coverage
    at the threshold set on development cases to the declared false-positive rate (per replicate, then means)."""
    per_rung: dict[str, list[dict[str, Any]]] = {}
    thresholds = []
    for r in range(run.settings.replicates):
        threshold = threshold_at([x["distance"] for x in run.scored[f"calibration/r{r}"].records], FALSE_POSITIVE_RATE)
        thresholds.append(threshold)
        seen = run.scored[f"uharmony_gated/r{r}"].records
        ladder = run.scored[f"ladder/r{r}"].records
        for rung in dict.fromkeys(x["site"] for x in ladder):
            per_rung.setdefault(rung, []).append(
                flag_figures(seen, [x for x in ladder if x["site"] == rung], threshold)
            )
    rows = []
    for rung, figures in per_rung.items():
        means = {k: mean_defined([f[k] for f in figures]) for k in figures[0]}
        rows.append({"rung": rung, **means, "auroc_per_replicate": [f["auroc"] for f in figures]})
    calibration = {
        "false_positive_rate": FALSE_POSITIVE_RATE,
        "calibration_cases": len(run.scored["calibration/r0"].records),
        "thresholds": [round(t, 4) for t in thresholds],
        "seen_test_flagged": mean_defined(
            [
                float(np.mean([x["distance"] > t for x in run.scored[f"uharmony_gated/r{r}"].records]))
                for r, t in enumerate(thresholds)
            ]
        ),
    }
    return rows, calibration


def _old_site_mean(records: Sequence[dict[str, Any]], cases: set[str]) -> float | None:
    return mean_defined([r["dice"][WHOLE] for r in records if r["case"] in cases])


def addsite(run: Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """New-site Dice and old-site change (against the method's parent, replicate 0, on the same old-site cases)
    for every method and case count, over the draws; the declared objective's winner per case count."""
    s = run.settings
    parents = {  # whose old-site Dice a method is measured against
        "addsite_uharmony": run.scored["uharmony_gated/r0"].records,
        "addsite_finetune_instance": run.scored["joint_instance/r0"].records,
        "addsite_scratch": run.scored["joint_instance/r0"].records,
    }
    rows: list[dict[str, Any]] = []
    for method in ADDSITE_METHODS:
        for k in s.addsite_cases:
            new, change = [], []
            for d in range(s.addsite_draws):
                new.append(mean_defined(run.scored[f"{method}/k{k}/d{d}"].by_site().get(NEW_SITE, [])))
                old = run.scored[f"{method}_old_sites/k{k}/d{d}"].records
                cases = {r["case"] for r in old}
                after, before = _old_site_mean(old, cases), _old_site_mean(parents[method], cases)
                change.append(None if after is None or before is None else after - before)
            rows.append(
                {
                    "method": method,
                    "cases": k,
                    "new_site_dice": mean_defined(new),
                    "old_site_change": mean_defined(change),
                    "new_site_dice_draws": new,
                    "old_site_change_draws": [None if c is None else round(c, 4) for c in change],
                    "draws": s.addsite_draws,
                    "steps": s.addsite_steps,
                }
            )
    winners = {}
    for k in s.addsite_cases:
        allowed = [r for r in rows if r["cases"] == k and (r["old_site_change"] or 0.0) >= ADDSITE_OLD_SITE_LIMIT]
        best = max(allowed, key=lambda r: r["new_site_dice"] or 0.0) if allowed else None
        winners[str(k)] = None if best is None else best["method"]
    zero = {
        arm: mean_defined(run.scored[arm].by_site().get(NEW_SITE, []))
        for arm in ("zero_shot_uharmony", "zero_shot_instance")
    }
    objective = {"old_site_limit": ADDSITE_OLD_SITE_LIMIT, "best_per_case_count": winners, "zero_shot": zero}
    return rows, objective


def gate_map_png(run: Run, out: Path) -> None:
    """One test case of every site through replicate 0's U-Harmony model with the gate deciding: its FLAIR, and
    the gate map (the most likely site of the windows covering each voxel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    from UHarmonyLib.inference.engine import segment_volumes
    from UHarmonyLib.model.weights import load_bundle

    bundle = load_bundle(run.models / "uharmony-r0", resolve_device(run.device))
    tests = load_tests(run.data["test"])
    sites = bundle.site_names
    colours = ListedColormap(["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"][: len(sites)])
    firsts = [next(c for c in tests.cases if c.site == site) for site in sites]
    fig, axes = plt.subplots(2, len(firsts), figsize=(3.2 * len(firsts), 6.4))
    for col, case in enumerate(firsts):
        result = segment_volumes(bundle, case.images, want_gate_map=True, passes=1)
        assert result.gate_map is not None
        flair = sitk.GetArrayFromImage(case.images[0])
        gate = sitk.GetArrayFromImage(result.gate_map).astype(float)
        z = flair.shape[0] // 2
        axes[0, col].imshow(flair[z], cmap="gray")
        axes[0, col].set_title(f"{case.site}\n{case.case}", fontsize=8)
        axes[1, col].imshow(flair[z], cmap="gray")
        shown = np.where(flair[z] > 0, gate[z] - 1, np.nan)
        axes[1, col].imshow(shown, cmap=colours, vmin=-0.5, vmax=len(sites) - 0.5, alpha=0.6, interpolation="nearest")
        probs = ", ".join(f"{s.split('-', 1)[1]} {p:.2f}" for s, p in zip(sites, result.gate.probabilities))
        axes[1, col].set_title(f"gate: {result.gate.chosen}\n{probs}", fontsize=7)
        for ax in axes[:, col]:
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(len(sites))]
    fig.legend(handles, sites, loc="lower center", ncol=len(sites), fontsize=8)
    fig.suptitle("Gate map on one test case per protocols site (FLAIR, middle slice; colour = site)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=90)
    plt.close(fig)
    Path(tmp.name).chmod(0o644)  # NamedTemporaryFile makes it private
    Path(tmp.name).replace(out)


# ---------------------------------------------------------------- output


def notes(s: Settings, final: bool, jobs: int) -> list[str]:
    return [
        "Training sites: the four `protocols` hospitals (same channels FLAIR, T1w, t1gd, T2w and lesion statistics; "
        "field strength and sequence parameters differ). Claim 4 trains and tests on the four `annotation` sites "
        "(one 3 T protocol; annotators differ in edema margins, whole-lesion-only labels and the rim's label).",
        f"Every joint model: {s.steps} steps, patch {s.patch}, batch {s.batch_size}, filters "
        f"{'-'.join(map(str, s.filters))}, {s.spacing:g} mm grid, no validation split (last weights kept). Replicate r "
        "trains on its own draw of training cases (training_seeds[r]) with training seed training_seeds[r]; the test "
        "sets come from the protocol's " + ("test seeds (a final run)." if final else "development seeds (not final)."),
        "uharmony: cubic restore below full resolution, linear at full resolution, site rows trained as shared + "
        "offset. uharmony_linear: the same with a linear restore everywhere, i.e. a per-site affine after "
        "standardization with residual site rows: the residual DSBN baseline of claim 3 (_given), which with the gate "
        "deciding is U-Harmony linear (_gated). separate: one InstanceNorm model per site, the four sharing one joint "
        f"model's budget ({s.steps // 4} steps each).",
        "Figure: whole-lesion Dice of each test case through segment_volumes (one pass, no test-time mirroring, alike "
        "for every row), averaged over a site's cases, then sites; dice_mean and per_site average over replicates; "
        "lesion_dice: BraTS-style lesion-wise whole-lesion Dice. Claims and comparisons pair two arms case by case "
        "within each replicate (b - a) with a hierarchical bootstrap 95 % CI (replicates, then cases); a claim holds "
        "when the CI's lower bound is above its margin (0; -0.01 for claim 2).",
        "SwinUNETR rows are not run: at 3.3 s per step on this CPU, 120 steps (what the earlier 2-hour table could "
        "afford) reached whole-lesion Dice 0.2, and no budget that fits 150 minutes beside the claims trains it.",
        f"Gate: accuracy and expected calibration error (10 confidence bins) of the gated test cases of every "
        f"replicate on protocols, of replicate 0 on annotation (where no image tells the sites apart). "
        f"Unfamiliar flag: distance to the gate bank; threshold per replicate at the "
        f"{1 - FALSE_POSITIVE_RATE:.0%} quantile of {s.calibration_cases_per_site} development cases per known site "
        "(the last development seed, used by no evaluation set); AUROC of each unseen-ladder rung's cases against the "
        "seen sites' test cases; coverage and dice_kept: share and Dice of the seen and rung cases left unflagged.",
        f"Add-site: {NEW_SITE} (1.5 T, low-flip spoiled-gradient T1, long-echo T2, 4 mm slices) from "
        f"{', '.join(map(str, s.addsite_cases))} cases, {s.addsite_draws} draws (training_seeds[d]; the k-case set is "
        f"the first k of draw d), {s.addsite_steps} steps for every method: add-site on replicate 0's uharmony model "
        f"(backbone frozen), every weight of replicate 0's joint_instance model fine-tuned with add-site's optimizer "
        f"(AdamW, one-cycle lr {ADDSITE_LR:g}), and an InstanceNorm model trained on the new cases alone. All scored "
        f"with the gate deciding on {s.new_site_test} new-site test cases and the first {s.old_site_check} test cases "
        "of every old site; old_site_change is against the parent's Dice on the same cases (scratch: against "
        "joint_instance). Objective (declared): the best new-site Dice among methods whose old-site change is at "
        f"least {ADDSITE_OLD_SITE_LIMIT}.",
        f"Jobs ran in {jobs} single-threaded process(es).",
    ]


def document(run: Run, final: bool, seconds: float) -> dict[str, Any]:
    s = run.settings
    rows = [row(arm, scenario, replicates_of(run, arm), s.steps) for arm, scenario in ARMS]
    ladder, calibration = unfamiliar(run)
    added, objective = addsite(run)
    settings = {
        **asdict(s),
        "training_sites": training_sites(),
        "new_site": NEW_SITE_SPEC["sites"][0],
        "data_seeds": {name: job.seed for name, job in data_plan(s, final).items()},
        "addsite_lr": ADDSITE_LR,
        "device": str(resolve_device(run.device)),
        "jobs": run.jobs,
        "torch_threads_per_job": 1,
    }
    return {
        "rows": rows,
        "claims": claims(run),
        "comparisons": comparisons(run),
        "gate": gate_figures(run),
        "unfamiliar": ladder,
        "unfamiliar_threshold": calibration,
        "addsite": added,
        "addsite_objective": objective,
        "evaluation": "test" if final else "development",
        "figures_from": str(resolve_device(run.device)),
        "protocol": PROTOCOL.to_json(),
        "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1),
        "settings": settings,
        "notes": notes(s, final, run.jobs),
        "models": run.trained,
    }


def check_work(work: Path, settings: dict[str, Any]) -> None:
    """A reused work folder must have been made with the same settings (else its models would mislead)."""
    stamp = work / "settings.json"
    if stamp.is_file():
        if json.loads(stamp.read_text(encoding="utf-8")) != settings:
            raise SystemExit(f"{work}: made with other settings ({stamp}); choose another --work")
        return
    if work.is_dir() and any(work.iterdir()):
        raise SystemExit(f"{work}: not empty and not a benchmark work folder; choose another --work")
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, json.dumps(settings, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a miniature of the whole run (minutes)")
    parser.add_argument("--plan", action="store_true", help="print the plan and its estimated time, then stop")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "reproduce.json")
    parser.add_argument("--gate-map", type=Path, default=None, help="the gate-map PNG (default: docs/images/)")
    parser.add_argument("--work", type=Path, default=None, help="data and models (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--steps", type=int, default=None, help="steps per joint model")
    parser.add_argument("--jobs", type=int, default=1, help="single-threaded worker processes (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    args = parser.parse_args()
    if args.quick and args.final:
        parser.error("--quick never uses the test seeds: drop --final")
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    settings = QUICK if args.quick else FULL
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    work_plan = planned_work(settings)
    minutes = estimate_minutes(work_plan, COSTS[mode], args.jobs)
    log(
        f"{mode} plan: {work_plan}; estimated {minutes:.0f} min on the development CPU with {args.jobs} job(s)", started
    )
    if args.plan:
        return 0
    check_writable(args.out)
    gate_map = args.gate_map or (
        args.out.with_name("gate_map.png") if args.quick else ROOT / "docs" / "images" / "gate_map_protocols.png"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="uharmony-reproduce-"))
    check_work(work, {**json.loads(json.dumps(asdict(settings))), "final": args.final})
    try:
        run = Run(work, settings, args.device, args.jobs, started)
        run.data = make_data(work, settings, args.final)
        log("data ready", started)
        run.build(joint_jobs(run))
        run.build(addsite_jobs(run))
        run.score(score_jobs(run))
        gate_map_png(run, gate_map)
        doc = document(run, args.final, time.perf_counter() - started)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc["gate_map"] = str(gate_map.relative_to(ROOT)) if gate_map.is_relative_to(ROOT) else str(gate_map)
    doc["case_scores"] = write_case_scores(args.out, PROTOCOL, args.final, list(run.scored.values())).name
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for r in doc["rows"]:
        print(f"{r['scenario']:>10} {r['method']:<28} {r['dice_mean']} +/- {r['dice_std']}")
    for c in doc["claims"]:
        verdict = "holds" if c["holds"] else "does not hold"
        print(f"{c['name']}: {c['diff_mean']:+.4f}, 95 % CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] ({verdict})")
    log(f"wrote {args.out}", started)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as e:  # a bad --out, --work or data path: one line, nothing half-written
        sys.exit(f"reproduce.py: {e}")
