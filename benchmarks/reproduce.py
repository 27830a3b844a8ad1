"""The reproduction table: U-Harmony joint training against its baselines, and adding a site, on synthetic data.

    .venv/bin/python benchmarks/reproduce.py [--quick] [--plan] [--out docs/results/reproduce.json]
        [--work DIR] [--keep] [--steps N] [--threads 1] [--device auto] [--final]

Training sites are the four `mixed` sites; a fifth, held-out site (hospital-e, an appearance no training site
has) gets a few training and test cases. Seeds follow the locked protocol (benchmarks/protocol.py): replicate r
trains on its own training-data draw with its own training seed, and the test cases come from the protocol's
test seeds only with `--final` (development seeds otherwise). Every model is trained by the library's own
`train`, the new site is added by its `add_site`, and every test case goes through `segment_volumes` as
`uharmony segment` runs it; every case's scores are saved beside the summary, the table's figure is whole-lesion
Dice (every site annotates it; hospital-c annotates nothing else), and arms are compared case by case with a
hierarchical bootstrap 95 % CI. The plan, with its estimated minutes, is printed first; `--plan` stops there.
Datasets and bundles finished in `--work` are reused by a rerun with the same settings,
and an interrupted training resumes from its checkpoint, so a killed run loses little.
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
import torch
from protocol import EvalSet, Scored, compare, load_protocol, load_tests, score_bundle, write_case_scores

from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.datasets import DATASET_JSON, write_dataset
from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.data.scenarios import REALISTIC
from UHarmonyLib.data.spec import SynthSpec, parse_spec, resolve_scenario
from UHarmonyLib.evaluation.scoring import mean_defined
from UHarmonyLib.files.atomic import atomic_dir, check_writable, write_text_atomic
from UHarmonyLib.inference.device import resolve_device, resolve_precision
from UHarmonyLib.model.card import read_card
from UHarmonyLib.model.weights import Bundle, load_bundle, make_card, save_bundle
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.add_site import AddSiteConfig, add_site
from UHarmonyLib.training.loop import train_run
from UHarmonyLib.training.patches import prepare_case
from UHarmonyLib.training.sampling import PatchSampler
from UHarmonyLib.training.steps import segmentation_steps

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
METHODS = (
    "separate",
    "joint_instance",
    "joint_dsbn_given",
    "uharmony_given",
    "uharmony_gated",
    "addsite_uharmony",
    "addsite_finetune_instance",
    "addsite_scratch",
)
BACKBONES = ("dynunet", "swinunetr")
HELDOUT = "hospital-e"
HELDOUT_SPEC = {  # an appearance none of the training sites has
    "name": "reproduce-heldout",
    "defaults": REALISTIC,
    "sites": [
        {
            "name": HELDOUT,
            "channels": ["T1", "T2", "FLAIR"],
            "gamma": 1.3,
            "bias": 0.25,
            "noise": 0.04,
            "scale": 700.0,
            "blur": 0.7,
        }
    ],
}
TEST_SETS = ("test", "heldout-test")  # evaluation set k is drawn from the protocol's k-th evaluation seed
ADDSITE_LR = 2e-3  # add-site's default; the fine-tuning alternative uses the same schedule


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (stored in the JSON; a reused --work folder must match it)."""

    spacing: float
    cases_per_site: int
    test_cases_per_site: int
    heldout_train: int
    heldout_test: int
    filters: tuple[int, ...]
    patch: int
    batch_size: int
    steps: int  # per joint model; the separate models share this budget (steps / sites each)
    addsite_steps: int  # add-site and the fine-tuning alternative
    replicates: int  # joint_instance and uharmony (dynunet); each its own training data and seed
    swin_patch: int
    swin_steps: int
    feature_size: int = 12


@dataclass(frozen=True)
class Cost:
    """Seconds on the development CPU (measured: full on 2 threads, quick on 1), for the plan's estimate only."""

    synth_case: float
    step: float
    swin_step: float
    test_case: float
    swin_test_case: float
    model: float  # per trained model: gate scaler, gate bank, saving


FULL = Settings(
    spacing=2.0,  # hospital-b's lesions (3-6 mm radius on 4 mm slices) vanish on a 3 mm grid
    cases_per_site=8,
    test_cases_per_site=PROTOCOL.test_cases_per_site,
    heldout_train=5,
    heldout_test=PROTOCOL.test_cases_per_site,
    filters=(8, 16, 32, 64),
    patch=48,
    batch_size=2,
    steps=1800,
    addsite_steps=900,
    replicates=PROTOCOL.replicates,
    swin_patch=64,
    swin_steps=120,
)
QUICK = Settings(
    spacing=4.0,
    cases_per_site=2,
    test_cases_per_site=1,
    heldout_train=3,
    heldout_test=1,
    filters=(4, 8, 16),
    patch=32,
    batch_size=2,
    steps=6,
    addsite_steps=6,
    replicates=2,
    swin_patch=64,
    swin_steps=2,
)
COSTS = {  # full: the 70-minute run of 2026-12-01 on 2 threads (swin in float32); quick: 1 thread
    "full": Cost(synth_case=0.35, step=0.15, swin_step=3.3, test_case=1.05, swin_test_case=12.6, model=4.0),
    "quick": Cost(synth_case=0.3, step=0.12, swin_step=12.0, test_case=0.3, swin_test_case=3.5, model=2.5),
}


def log(message: str, started: float) -> None:
    print(f"[{(time.perf_counter() - started) / 60:6.1f} min] {message}", flush=True)


# ---------------------------------------------------------------- the plan


def planned_work(s: Settings) -> dict[str, int]:
    """How many cases, optimizer steps and test-case inferences the run does."""
    sites, seeds = 4, s.replicates
    tests = sites * s.test_cases_per_site
    return {
        "synth_cases": sites * (seeds * s.cases_per_site + s.test_cases_per_site) + s.heldout_train + s.heldout_test,
        "models": sites + 2 * seeds + 1 + 3,
        "steps": (1 + 2 * seeds + 1 + 1) * s.steps + 2 * s.addsite_steps,
        "swin_steps": 2 * s.swin_steps,
        "test_cases": tests + seeds * tests + tests + 2 * seeds * tests + 3 * s.heldout_test,
        "swin_test_cases": 3 * tests,
    }


def estimate_minutes(work: dict[str, int], cost: Cost) -> float:
    seconds = (
        work["synth_cases"] * cost.synth_case
        + work["models"] * cost.model
        + work["steps"] * cost.step
        + work["swin_steps"] * cost.swin_step
        + work["test_cases"] * cost.test_case
        + work["swin_test_cases"] * cost.swin_test_case
    )
    return seconds / 60


# ---------------------------------------------------------------- data


def synthesize(folder: Path, spec: SynthSpec, seed: int, spacing: float, cases: int) -> Path:
    """An MSD dataset written as `uharmony synth` writes it (atomically; a finished one is reused)."""
    if not (folder / DATASET_JSON).is_file():
        with atomic_dir(folder) as tmp:
            write_dataset(tmp, spec, seed, spacing, cases)
    return folder


def one_site(dataset: Path, site: str, folder: Path) -> Path:
    """A dataset.json listing one site's cases of `dataset` (absolute paths: no files are copied)."""
    data = json.loads((dataset / DATASET_JSON).read_text(encoding="utf-8"))
    absolute = [
        {**e, "image": [str(dataset / p) for p in e["image"]], "label": str(dataset / e["label"])}
        for e in data["training"]
        if e["site"] == site
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / DATASET_JSON, json.dumps({**data, "training": absolute, "numTraining": len(absolute)}))
    return folder


def data_seeds(s: Settings, final: bool) -> dict[str, int]:
    """The synth seed of every dataset: replicate r's training data, the held-out site's, the test sets'."""
    replicates = PROTOCOL.replicate_seeds(s.replicates)
    evaluation = PROTOCOL.evaluation_seeds(final)
    return {
        **{f"train-r{r}": seed for r, seed in enumerate(replicates)},
        "heldout-train": replicates[0],  # added to replicate 0's models
        **{name: evaluation[k] for k, name in enumerate(TEST_SETS)},
    }


def make_data(work: Path, s: Settings, final: bool) -> dict[str, Path]:
    mixed, heldout = resolve_scenario("mixed"), parse_spec(HELDOUT_SPEC, "the held-out site")
    seeds = data_seeds(s, final)
    jobs = {
        **{name: (mixed, s.cases_per_site) for name in seeds if name.startswith("train-")},
        "test": (mixed, s.test_cases_per_site),
        "heldout-train": (heldout, s.heldout_train),
        "heldout-test": (heldout, s.heldout_test),
    }
    (work / "data").mkdir(parents=True, exist_ok=True)
    data = {
        name: synthesize(work / "data" / name, spec, seeds[name], s.spacing, count)
        for name, (spec, count) in jobs.items()
    }
    for site in (x.name for x in mixed.sites):
        data[site] = one_site(data["train-r0"], site, work / "data" / f"train-{site}")
    return data


# ---------------------------------------------------------------- models and scores


class Run:
    """The run's folders, settings and clock, and the record of every model trained."""

    def __init__(self, work: Path, settings: Settings, device: str, started: float) -> None:
        self.work = work
        self.models = work / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.device = device
        self.torch_device = resolve_device(device)
        self.started = started
        self.trained: list[dict[str, Any]] = []
        self.data: dict[str, Path] = {}
        self.tests: dict[str, EvalSet] = {}
        self.scored: list[Scored] = []

    def fit(
        self,
        name: str,
        data: Sequence[Path],
        norm: str,
        seed: int = 0,
        backbone: str = "dynunet",
        steps: int | None = None,
        restore_degree: int = 3,
        site_params: str = "residual",
    ) -> Path:
        """Train a bundle with the library's `train` (or reuse a finished one of that name)."""
        out = self.models / name
        if self.reused(out):
            return out
        s = self.settings
        swin = backbone == "swinunetr"
        config = TrainConfig(
            data=list(data),
            out=out,
            backbone=backbone,
            norm=norm,
            filters=s.filters,
            feature_size=s.feature_size,
            restore_degree=restore_degree,
            site_params=site_params,
            steps=steps or (s.swin_steps if swin else s.steps),
            patch=(s.swin_patch if swin else s.patch,),
            batch_size=s.batch_size,
            seed=seed,
            spacing=(s.spacing,),
            val_fraction=0.0,  # the test cases score the model; the last weights are kept
            device=self.device,
            resume=True,  # continues an interrupted run's checkpoint, else starts fresh
        )
        payload = train_run(config)
        self.record(name, payload["steps"], payload["seconds"], payload["seconds_per_step"])
        return out

    def reused(self, out: Path) -> bool:
        """A bundle finished by an earlier run in this work folder (bundles appear whole or not at all)."""
        if not out.is_dir():
            return False
        self.trained.append({"model": out.name, "reused": True})
        log(f"{out.name}: reusing {out}", self.started)
        return True

    def record(self, name: str, steps: int, seconds: float, per_step: float) -> None:
        self.trained.append({"model": name, "steps": steps, "seconds": round(seconds, 1), "seconds_per_step": per_step})
        log(f"{name}: {steps} steps in {seconds:.0f} s ({per_step:.2f} s/step)", self.started)

    def score(self, model: Path | Bundle, tests: EvalSet, given: bool, arm: str, replicate: int = 0) -> Scored:
        """One model scored on one test set; its case records join the run's case scores file."""
        scored = score_bundle(model, tests, given, self.torch_device, arm, replicate)
        self.scored.append(scored)
        return scored


def grow_site(run: Run, parent: Path, out: Path, train_backbone: bool = False) -> Path:
    """The held-out site added to a U-Harmony model by the library's `add_site` (or the bundle reused)."""
    if run.reused(out):
        return out
    s = run.settings
    config = AddSiteConfig(
        model=parent,
        data=run.data["heldout-train"],
        site=HELDOUT,
        out=out,
        steps=s.addsite_steps,
        train_backbone=train_backbone,
        lr=ADDSITE_LR,
        batch_size=s.batch_size,
        val_fraction=0.0,  # all of the site's few cases train; its test cases score
        device=run.device,
    )
    seconds = add_site(config)["seconds"]
    tuning = read_card(out)["provenance"]["train_seconds"]
    run.record(out.name, s.addsite_steps, seconds, round(tuning / s.addsite_steps, 4))
    return out


def fine_tune(run: Run, parent_path: Path, data: Path, out: Path) -> Path:
    """Every weight of a plain joint model fine-tuned on the new site's cases, as add-site trains its rows."""
    if run.reused(out):
        return out
    s = run.settings
    device = run.torch_device
    parent = load_bundle(parent_path, device)
    net = parent.net
    plan = plan_training([data], 0.0, 0, parent.card["channels"], parent.labels)
    patch = tuple(int(p) for p in parent.inference["patch_size"])
    prepared = [prepare_case(load_case(c, len(plan.channels)), parent.preprocessing, patch) for c in plan.cases]
    sampler = PatchSampler(
        prepared, [c.groups for c in plan.cases], [0] * len(prepared), 1, patch, s.batch_size, seed=0
    )
    opt = torch.optim.AdamW(net.parameters(), lr=ADDSITE_LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=ADDSITE_LR, total_steps=s.addsite_steps)
    weights = torch.zeros(s.batch_size, net.config.num_sites)  # the instance net has no site layers
    net.requires_grad_(True)
    started = time.perf_counter()
    steps = range(1, s.addsite_steps + 1)
    segmentation_steps(net, sampler, opt, weights, steps, device, resolve_precision("auto", device), sched)
    seconds = time.perf_counter() - started
    net.eval()
    card = make_card(
        net,
        name=out.name,
        version=1,
        description=f"{parent.card['name']} with every weight fine-tuned on {len(prepared)} {HELDOUT} cases",
        channels=parent.card["channels"],
        labels=parent.labels,
        sites=parent.card["sites"],
        preprocessing=parent.preprocessing,
        inference=parent.inference,
    )
    save_bundle(net, card, out, parent.bank)
    run.record(out.name, s.addsite_steps, seconds, round(seconds / s.addsite_steps, 4))
    return out


# ---------------------------------------------------------------- rows


def std(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return round(float(np.std(kept, ddof=1)), 4) if len(kept) > 1 else 0.0


def row(
    method: str,
    backbone: str,
    seeds: Sequence[int],
    runs: Sequence[Scored],
    steps: int,
) -> dict[str, Any]:
    """One table row from per-replicate case scores (whole-lesion Dice): means over cases, then sites; spread
    over replicates if any."""
    per_seed = [{site: mean_defined(cases) for site, cases in r.by_site().items()} for r in runs]
    seed_means = [mean_defined(list(p.values())) for p in per_seed]
    sites = list(per_seed[0])
    if len(runs) > 1:
        spread, dice_std = "seeds", std(seed_means)
    elif len(sites) > 1:
        spread, dice_std = "sites", std(list(per_seed[0].values()))
    else:
        spread, dice_std = "cases", std(runs[0].by_site()[sites[0]])
    out = {
        "method": method,
        "backbone": backbone,
        "dice_mean": mean_defined(seed_means),
        "dice_std": dice_std,
        "spread": spread,
        "seeds": list(seeds),
        "seed_means": seed_means,
        "per_site": {site: mean_defined([p[site] for p in per_seed]) for site in sites},
        "lesion_dice_mean": mean_defined([mean_defined(r.by_case("lesion_dice").values()) for r in runs]),
        "steps": steps,
    }
    gates = [r.gate_accuracy for r in runs if r.gate_accuracy is not None]
    if gates:
        out["gate_accuracy"] = round(float(np.mean(gates)), 4)
    return out


def arm_name(method: str, backbone: str) -> str:
    return method if backbone == "dynunet" else f"{backbone}_{method}"


def joint_rows(run: Run, backbone: str, replicates: int) -> tuple[list[dict[str, Any]], Path, Path]:
    """joint_instance, uharmony_given and uharmony_gated; returns them and replicate 0's two models."""
    steps = run.settings.swin_steps if backbone == "swinunetr" else run.settings.steps
    seeds = PROTOCOL.replicate_seeds(replicates)
    tests = run.tests["test"]
    plain, harmony = [], []
    for r, seed in enumerate(seeds):
        train = [run.data[f"train-r{r}"]]
        plain.append(run.fit(f"{backbone}-instance-r{r}", train, "instance", seed, backbone))
        harmony.append(run.fit(f"{backbone}-uharmony-r{r}", train, "uharmony", seed, backbone))
    arm = {m: arm_name(m, backbone) for m in ("joint_instance", "uharmony_given", "uharmony_gated")}
    instance = [run.score(m, tests, False, arm["joint_instance"], r) for r, m in enumerate(plain)]
    given = [run.score(m, tests, True, arm["uharmony_given"], r) for r, m in enumerate(harmony)]
    gated = [run.score(m, tests, False, arm["uharmony_gated"], r) for r, m in enumerate(harmony)]
    rows = [
        row("joint_instance", backbone, seeds, instance, steps),
        row("uharmony_given", backbone, seeds, given, steps),
        row("uharmony_gated", backbone, seeds, gated, steps),
    ]
    log(f"{backbone} joint rows done", run.started)
    return rows, plain[0], harmony[0]


def baseline_rows(run: Run) -> list[dict[str, Any]]:
    """separate (one model per site, sharing one joint model's budget) and joint_dsbn_given, replicate 0."""
    s, tests = run.settings, run.tests["test"]
    seed = PROTOCOL.replicate_seeds(1)
    sites = list(dict.fromkeys(c.site for c in tests.cases))
    separate = Scored("separate", 0)
    for site in sites:
        model = run.fit(f"separate-{site}", [run.data[site]], "instance", seed[0], steps=s.steps // len(sites))
        separate.records += score_bundle(model, tests.only(site), False, run.torch_device, "separate").records
    run.scored.append(separate)
    dsbn = run.fit("dynunet-dsbn-r0", [run.data["train-r0"]], "dsbn", seed[0], site_params="independent")
    rows = [
        row("separate", "dynunet", seed, [separate], s.steps),
        row("joint_dsbn_given", "dynunet", seed, [run.score(dsbn, tests, True, "joint_dsbn_given")], s.steps),
    ]
    log("baseline rows done", run.started)
    return rows


def addsite_rows(run: Run, plain: Path, harmony: Path) -> list[dict[str, Any]]:
    """The held-out site added three ways to replicate 0; each scored on its test cases with the gate deciding."""
    s, data, tests = run.settings, run.data["heldout-train"], run.tests["heldout-test"]
    seed = PROTOCOL.replicate_seeds(1)
    grown = grow_site(run, harmony, run.models / "addsite-uharmony")
    tuned = fine_tune(run, plain, data, run.models / "addsite-finetune-instance")
    scratch = run.fit("addsite-scratch", [data], "instance", seed[0])
    rows = [
        row("addsite_uharmony", "dynunet", seed, [run.score(grown, tests, False, "addsite_uharmony")], s.addsite_steps),
        row(
            "addsite_finetune_instance",
            "dynunet",
            seed,
            [run.score(tuned, tests, False, "addsite_finetune_instance")],
            s.addsite_steps,
        ),
        row("addsite_scratch", "dynunet", seed, [run.score(scratch, tests, False, "addsite_scratch")], s.steps),
    ]
    log("add-site rows done", run.started)
    return rows


COMPARISONS = (  # (b, a, what b - a measures); paired over the replicates both arms have
    ("uharmony_gated", "joint_instance", "U-Harmony, gate deciding, over plain joint training"),
    ("uharmony_gated", "uharmony_given", "what letting the gate decide costs (claim: within 0.01)"),
    ("uharmony_given", "joint_dsbn_given", "U-Harmony over DSBN-style site norms, site given"),
    ("joint_instance", "separate", "one joint model over one model per site"),
    ("addsite_uharmony", "addsite_finetune_instance", "add-site over fine-tuning every weight (new site)"),
    ("addsite_uharmony", "addsite_scratch", "add-site over a model trained on the new site alone"),
)


def comparisons(scored: Sequence[Scored], pairs: Sequence[tuple[str, str, str]] = COMPARISONS) -> list[dict[str, Any]]:
    """Every pair (b, a, meaning) whose arms were scored: b - a case by case in each shared replicate, 95 % CI."""
    arms: dict[str, list[Scored]] = {}
    for x in scored:
        arms.setdefault(x.arm, []).append(x)
    out = []
    for b, a, meaning in pairs:
        if a in arms and b in arms:
            shared = min(len(arms[a]), len(arms[b]))
            out.append({**compare(f"{b} - {a}", arms[a][:shared], arms[b][:shared]), "meaning": meaning})
    return out


def all_rows(run: Run, final: bool, backbones: Sequence[str] = BACKBONES) -> list[dict[str, Any]]:
    s = run.settings
    run.data = make_data(run.work, s, final)
    run.tests = {k: load_tests(run.data[k]) for k in TEST_SETS}
    log("data ready", run.started)
    rows = baseline_rows(run)
    joint, plain, harmony = joint_rows(run, "dynunet", s.replicates)
    rows += joint + addsite_rows(run, plain, harmony)
    if "swinunetr" in backbones:
        rows += joint_rows(run, "swinunetr", 1)[0]
    return sorted(rows, key=lambda r: (BACKBONES.index(r["backbone"]), METHODS.index(r["method"])))


# ---------------------------------------------------------------- output


def notes(s: Settings, backbones: Sequence[str], final: bool) -> list[str]:
    skipped = [] if "swinunetr" in backbones else ["swinunetr rows were not run by this invocation (--backbones)."]
    return [
        *skipped,
        f"separate: one instance-norm model per training site, trained on that site's cases only; together they "
        f"get one joint model's budget ({s.steps} steps, {s.steps // 4} per site): each sees as many patches of its "
        "site as the site-balanced joint models draw from it.",
        "Every model trains without a validation split (val_fraction 0) and keeps its last weights. Seeds follow "
        "benchmarks/protocol.json: replicate r trains on its own draw of training cases, synthesized from "
        "training_seeds[r], with training seed training_seeds[r]; the test sets are drawn from the protocol's "
        + ("test seeds (a final run)." if final else "development seeds (not a final run: development figures)."),
        "Per-case scores (voxel Dice per label and whole lesion, HD95, lesion-wise Dice) are in case_scores; "
        "comparisons pair two arms case by case within each replicate both have (b - a) and give the hierarchical "
        "bootstrap 95 % CI (replicates, then cases); a comparison holds when the CI's lower bound is above 0.",
        "Figure: whole-lesion Dice of each test case through segment_volumes (the real engine, one pass: no "
        "test-time mirroring, which would multiply the scoring time by four for every row alike), averaged over a "
        "site's cases, then over sites; per_site and dice_mean average over replicates ('seeds': their training "
        "seeds); lesion_dice_mean: BraTS-style lesion-wise whole-lesion Dice, mean over cases, then replicates.",
        "dice_std: sample standard deviation of the per-seed site means ('seeds'); with one seed, of the site means "
        "('sites'); with one seed and one site, of the case Dice values ('cases').",
        "uharmony: cubic restore below full resolution, site rows trained as shared + offset (--site-params "
        "residual); joint_dsbn_given: a per-site affine in every norm layer and per-site heads, each site's rows "
        "trained on their own (--site-params independent), as DSBN's per-domain branches are.",
        "*_given rows name each case's true site; uharmony_gated scores the same models with site 'auto' (the "
        "gate decides); joint_instance and separate have no site layers (site 'auto', the gate is unused).",
        f"add-site: held-out site {HELDOUT} with {s.heldout_train} training cases. addsite_uharmony: add_site on the "
        f"replicate-0 uharmony model (backbone frozen, {s.addsite_steps} steps); addsite_finetune_instance: every "
        f"weight of the replicate-0 joint_instance model, {s.addsite_steps} steps with add-site's optimizer (AdamW, "
        f"one-cycle lr {ADDSITE_LR:g}, no weight decay) and sampler; addsite_scratch: an instance model trained on the "
        f"{s.heldout_train} cases alone for {s.steps} steps. All three scored with site 'auto'.",
        f"swinunetr rows: feature_size {s.feature_size}, patch {s.swin_patch}, {s.swin_steps} steps, replicate 0.",
    ]


def document(
    run: Run, rows: list[dict[str, Any]], threads: int, seconds: float, backbones: Sequence[str], final: bool
) -> dict[str, Any]:
    s = run.settings
    precision = {b: str(resolve_precision("auto", run.torch_device, b)).replace("torch.", "") for b in BACKBONES}
    settings = {
        **asdict(s),
        "training_sites": list(dict.fromkeys(c.site for c in run.tests["test"].cases)),
        "heldout_site": HELDOUT_SPEC["sites"][0],
        "data_seeds": data_seeds(s, final),
        "addsite_lr": ADDSITE_LR,
        "device": str(run.torch_device),
        "precision": precision,
        "torch_threads": threads,
    }
    return {
        "rows": rows,
        "comparisons": comparisons(run.scored),
        "evaluation": "test" if final else "development",
        "protocol": PROTOCOL.to_json(),
        "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1),
        "settings": settings,
        "notes": notes(s, backbones, final),
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
    parser.add_argument("--quick", action="store_true", help="a miniature of the whole table (minutes)")
    parser.add_argument("--plan", action="store_true", help="print the plan and its estimated time, then stop")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "reproduce.json")
    parser.add_argument("--work", type=Path, default=None, help="data and models (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--steps", type=int, default=None, help="dynunet steps per model (add-site: half)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES), help="backbones to run (default both)"
    )
    parser.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    args = parser.parse_args()
    if args.quick and args.final:
        parser.error("--quick never uses the test seeds: drop --final")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    settings = QUICK if args.quick else FULL
    if args.steps is not None:
        settings = replace(settings, steps=args.steps, addsite_steps=max(1, args.steps // 2))
    work_plan = planned_work(settings)
    log(
        f"{mode} plan: {work_plan}; estimated {estimate_minutes(work_plan, COSTS[mode]):.0f} min "
        f"on the development CPU ({'1 thread' if args.quick else '2 threads'}; this run: {args.threads})",
        started,
    )
    if args.plan:
        return 0
    check_writable(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="uharmony-reproduce-"))
    check_work(work, {**json.loads(json.dumps(asdict(settings))), "final": args.final})
    try:
        run = Run(work, settings, args.device, started)
        rows = all_rows(run, args.final, args.backbones)
        doc = document(run, rows, args.threads, time.perf_counter() - started, args.backbones, args.final)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc["case_scores"] = write_case_scores(args.out, PROTOCOL, args.final, run.scored).name
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(f"{r['backbone']:>9} {r['method']:<26} {r['dice_mean']} +/- {r['dice_std']} ({r['spread']})")
    for c in doc["comparisons"]:
        verdict = "holds" if c["holds"] else "does not hold"
        print(f"{c['name']}: {c['diff_mean']:+.4f}, 95 % CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] ({verdict})")
    log(f"wrote {args.out}", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
