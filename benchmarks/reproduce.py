"""The reproduction table: U-Harmony joint training against its baselines, and adding a site, on synthetic data.

    .venv/bin/python benchmarks/reproduce.py [--quick] [--plan] [--out docs/results/reproduce.json]
        [--work DIR] [--keep] [--steps N] [--threads 1] [--device auto]

Training sites are the four `mixed` sites (training cases from one seed, test cases from another); a fifth,
held-out site (hospital-e, an appearance no training site has) gets a few training and test cases. Every model
is trained by the library's own `train`, the new site is added by its `add_site`, and every test case goes
through `segment_volumes` as `uharmony segment` runs it; the figure is whole-lesion Dice, which every site
annotates (hospital-c annotates nothing else). The plan, with its estimated minutes, is printed first;
`--plan` stops there. Datasets and bundles finished in `--work` are reused by a rerun with the same settings,
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
import SimpleITK as sitk
import torch

from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.datasets import DATASET_JSON, write_dataset
from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.data.scenarios import REALISTIC
from UHarmonyLib.data.spec import SynthSpec, parse_spec, resolve_scenario
from UHarmonyLib.evaluation.scoring import mean_defined, score_masks
from UHarmonyLib.files.atomic import atomic_dir, check_writable, write_text_atomic
from UHarmonyLib.inference.device import resolve_device, resolve_precision
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.card import read_card
from UHarmonyLib.model.weights import Bundle, load_bundle, make_card, save_bundle
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.add_site import AddSiteConfig, add_site
from UHarmonyLib.training.loop import train_run
from UHarmonyLib.training.patches import prepare_case
from UHarmonyLib.training.sampling import PatchSampler
from UHarmonyLib.training.steps import segmentation_steps

ROOT = Path(__file__).resolve().parent.parent
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
DATA_SEEDS = {"train": 11, "test": 12, "heldout-train": 13, "heldout-test": 14}
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
    seeds: tuple[int, ...]  # joint_instance and uharmony (dynunet)
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
    test_cases_per_site=4,
    heldout_train=5,
    heldout_test=4,
    filters=(8, 16, 32, 64),
    patch=48,
    batch_size=2,
    steps=1800,
    addsite_steps=900,
    seeds=(0, 1, 2),
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
    seeds=(0, 1),
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
    sites, seeds = 4, len(s.seeds)
    tests = sites * s.test_cases_per_site
    return {
        "synth_cases": sites * (s.cases_per_site + s.test_cases_per_site) + s.heldout_train + s.heldout_test,
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


def make_data(work: Path, s: Settings) -> dict[str, Path]:
    mixed, heldout = resolve_scenario("mixed"), parse_spec(HELDOUT_SPEC, "the held-out site")
    jobs = {
        "train": (mixed, s.cases_per_site),
        "test": (mixed, s.test_cases_per_site),
        "heldout-train": (heldout, s.heldout_train),
        "heldout-test": (heldout, s.heldout_test),
    }
    (work / "data").mkdir(parents=True, exist_ok=True)
    data = {
        name: synthesize(work / "data" / name, spec, DATA_SEEDS[name], s.spacing, count)
        for name, (spec, count) in jobs.items()
    }
    for site in (x.name for x in mixed.sites):
        data[site] = one_site(data["train"], site, work / "data" / f"train-{site}")
    return data


@dataclass
class EvalCase:
    site: str
    images: list[sitk.Image]
    truth: np.ndarray  # whole lesion, (z, y, x)
    background: list[int]  # label values that are not lesion for this case's site


@dataclass
class EvalSet:
    channels: list[str]
    labels: list[str]
    cases: list[EvalCase]

    def only(self, site: str) -> EvalSet:
        return replace(self, cases=[c for c in self.cases if c.site == site])


def load_tests(dataset: Path) -> EvalSet:
    """Test cases read once, as training reads cases (missing channels as zero images)."""
    plan = plan_training([dataset], 0.0, 0)
    cases = []
    for case in plan.cases:
        loaded = load_case(case, len(plan.channels))
        cases.append(EvalCase(plan.sites[case.site].name, loaded.images, loaded.groups_zyx > 0, case.groups[0]))
    return EvalSet(plan.channels, plan.label_names, cases)


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

    def score(self, model: Path | Bundle, tests: EvalSet, given: bool) -> tuple[dict[str, list[float]], float | None]:
        return score_bundle(model, tests, given, self.torch_device)


def score_bundle(
    model: Path | Bundle, tests: EvalSet, given: bool, device: torch.device
) -> tuple[dict[str, list[float]], float | None]:
    """Whole-lesion Dice per test case by site (site named, or the gate deciding), and the gate's accuracy."""
    bundle = model if isinstance(model, Bundle) else load_bundle(model, device)
    if bundle.channel_names != tests.channels or [lab["name"] for lab in bundle.labels] != tests.labels:
        raise SystemExit(f"{bundle.path}: channels or labels differ from the test cases'")
    dice: dict[str, list[float]] = {}
    hits = []
    for case in tests.cases:
        site = case.site if given else "auto"
        result = segment_volumes(bundle, case.images, site=site, device=device, mirror=False)
        pred = ~np.isin(sitk.GetArrayViewFromImage(result.labels), case.background)
        d, _ = score_masks(pred, case.truth, result.labels.GetSpacing()[::-1])
        dice.setdefault(case.site, []).extend([] if d is None else [d])
        hits.append(float(result.gate.chosen == case.site))
    gated = not given and bundle.config.norm == "uharmony"
    return dice, (round(float(np.mean(hits)), 4) if gated else None)


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
    runs: Sequence[dict[str, list[float]]],
    steps: int,
    gate_accuracy: Sequence[float | None] = (),
) -> dict[str, Any]:
    """One table row from per-seed {site: case Dice}: means over cases, then sites; spread over seeds if any."""
    per_seed = [{site: mean_defined(cases) for site, cases in r.items()} for r in runs]
    seed_means = [mean_defined(list(p.values())) for p in per_seed]
    sites = list(per_seed[0])
    if len(runs) > 1:
        spread, dice_std = "seeds", std(seed_means)
    elif len(sites) > 1:
        spread, dice_std = "sites", std(list(per_seed[0].values()))
    else:
        spread, dice_std = "cases", std(runs[0][sites[0]])
    out = {
        "method": method,
        "backbone": backbone,
        "dice_mean": mean_defined(seed_means),
        "dice_std": dice_std,
        "spread": spread,
        "seeds": list(seeds),
        "seed_means": seed_means,
        "per_site": {site: mean_defined([p[site] for p in per_seed]) for site in sites},
        "steps": steps,
    }
    gates = [g for g in gate_accuracy if g is not None]
    if gates:
        out["gate_accuracy"] = round(float(np.mean(gates)), 4)
    return out


def joint_rows(run: Run, backbone: str, seeds: Sequence[int]) -> tuple[list[dict[str, Any]], Path, Path]:
    """joint_instance, uharmony_given and uharmony_gated; returns them and the first seed's two models."""
    steps = run.settings.swin_steps if backbone == "swinunetr" else run.settings.steps
    train, tests = run.data["train"], run.tests["test"]
    plain = [run.fit(f"{backbone}-instance-s{k}", [train], "instance", k, backbone) for k in seeds]
    harmony = [run.fit(f"{backbone}-uharmony-s{k}", [train], "uharmony", k, backbone) for k in seeds]
    instance = [run.score(m, tests, given=False)[0] for m in plain]
    given = [run.score(m, tests, given=True)[0] for m in harmony]
    gated = [run.score(m, tests, given=False) for m in harmony]
    rows = [
        row("joint_instance", backbone, seeds, instance, steps),
        row("uharmony_given", backbone, seeds, given, steps),
        row("uharmony_gated", backbone, seeds, [g[0] for g in gated], steps, [g[1] for g in gated]),
    ]
    log(f"{backbone} joint rows done", run.started)
    return rows, plain[0], harmony[0]


def baseline_rows(run: Run) -> list[dict[str, Any]]:
    """separate (one model per site, sharing one joint model's budget) and joint_dsbn_given."""
    s, tests = run.settings, run.tests["test"]
    sites = list(dict.fromkeys(c.site for c in tests.cases))
    separate: dict[str, list[float]] = {}
    for site in sites:
        model = run.fit(f"separate-{site}", [run.data[site]], "instance", steps=s.steps // len(sites))
        separate.update(run.score(model, tests.only(site), given=False)[0])
    dsbn = run.fit("dynunet-dsbn-s0", [run.data["train"]], "dsbn", site_params="independent")  # as DSBN has it
    rows = [
        row("separate", "dynunet", [0], [separate], s.steps),
        row("joint_dsbn_given", "dynunet", [0], [run.score(dsbn, tests, given=True)[0]], s.steps),
    ]
    log("baseline rows done", run.started)
    return rows


def addsite_rows(run: Run, plain: Path, harmony: Path) -> list[dict[str, Any]]:
    """The held-out site added three ways; each scored on its test cases with the gate deciding."""
    s, data, tests = run.settings, run.data["heldout-train"], run.tests["heldout-test"]
    grown = grow_site(run, harmony, run.models / "addsite-uharmony")
    tuned = fine_tune(run, plain, data, run.models / "addsite-finetune-instance")
    scratch = run.fit("addsite-scratch", [data], "instance")
    added, gate = run.score(grown, tests, given=False)
    rows = [
        row("addsite_uharmony", "dynunet", [0], [added], s.addsite_steps, [gate]),
        row("addsite_finetune_instance", "dynunet", [0], [run.score(tuned, tests, given=False)[0]], s.addsite_steps),
        row("addsite_scratch", "dynunet", [0], [run.score(scratch, tests, given=False)[0]], s.steps),
    ]
    log("add-site rows done", run.started)
    return rows


def all_rows(run: Run, backbones: Sequence[str] = BACKBONES) -> list[dict[str, Any]]:
    s = run.settings
    run.data = make_data(run.work, s)
    run.tests = {k: load_tests(run.data[k]) for k in ("test", "heldout-test")}
    log("data ready", run.started)
    rows = baseline_rows(run)
    joint, plain, harmony = joint_rows(run, "dynunet", s.seeds)
    rows += joint + addsite_rows(run, plain, harmony)
    if "swinunetr" in backbones:
        rows += joint_rows(run, "swinunetr", (0,))[0]
    return sorted(rows, key=lambda r: (BACKBONES.index(r["backbone"]), METHODS.index(r["method"])))


# ---------------------------------------------------------------- output


def notes(s: Settings, backbones: Sequence[str]) -> list[str]:
    skipped = [] if "swinunetr" in backbones else ["swinunetr rows were not run by this invocation (--backbones)."]
    return [
        *skipped,
        f"separate: one instance-norm model per training site, trained on that site's cases only; together they "
        f"get one joint model's budget ({s.steps} steps, {s.steps // 4} per site): each sees as many patches of its "
        "site as the site-balanced joint models draw from it.",
        "Every model trains without a validation split (val_fraction 0) and keeps its last weights; test cases "
        f"are fresh ones from other seeds (data seeds {json.dumps(DATA_SEEDS)}).",
        "Figure: whole-lesion Dice of each test case through segment_volumes (the real engine, one pass: no "
        "test-time mirroring, which would multiply the scoring time by four for every row alike), averaged over a "
        "site's cases, then over sites; per_site and dice_mean average over seeds.",
        "dice_std: sample standard deviation of the per-seed site means ('seeds'); with one seed, of the site means "
        "('sites'); with one seed and one site, of the case Dice values ('cases').",
        "uharmony: cubic restore below full resolution, site rows trained as shared + offset (--site-params "
        "residual); joint_dsbn_given: a per-site affine in every norm layer and per-site heads, each site's rows "
        "trained on their own (--site-params independent), as DSBN's per-domain branches are.",
        "*_given rows name each case's true site; uharmony_gated scores the same models with site 'auto' (the "
        "gate decides); joint_instance and separate have no site layers (site 'auto', the gate is unused).",
        f"add-site: held-out site {HELDOUT} with {s.heldout_train} training cases. addsite_uharmony: add_site on the "
        f"seed-0 uharmony model (backbone frozen, {s.addsite_steps} steps); addsite_finetune_instance: every weight "
        f"of the seed-0 joint_instance model, {s.addsite_steps} steps with add-site's optimizer (AdamW, one-cycle "
        f"lr {ADDSITE_LR:g}, no weight decay) and sampler; addsite_scratch: an instance model trained on the "
        f"{s.heldout_train} cases alone for {s.steps} steps. All three scored with site 'auto'.",
        f"swinunetr rows: feature_size {s.feature_size}, patch {s.swin_patch}, {s.swin_steps} steps, seed 0.",
    ]


def document(
    run: Run, rows: list[dict[str, Any]], threads: int, seconds: float, backbones: Sequence[str]
) -> dict[str, Any]:
    s = run.settings
    precision = {b: str(resolve_precision("auto", run.torch_device, b)).replace("torch.", "") for b in BACKBONES}
    settings = {
        **asdict(s),
        "training_sites": list(dict.fromkeys(c.site for c in run.tests["test"].cases)),
        "heldout_site": HELDOUT_SPEC["sites"][0],
        "data_seeds": DATA_SEEDS,
        "addsite_lr": ADDSITE_LR,
        "device": str(run.torch_device),
        "precision": precision,
        "torch_threads": threads,
    }
    return {
        "rows": rows,
        "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1),
        "settings": settings,
        "notes": notes(s, backbones),
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
    args = parser.parse_args()
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
    check_work(work, json.loads(json.dumps(asdict(settings))))
    try:
        run = Run(work, settings, args.device, started)
        rows = all_rows(run, args.backbones)
        doc = document(run, rows, args.threads, time.perf_counter() - started, args.backbones)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(f"{r['backbone']:>9} {r['method']:<26} {r['dice_mean']} +/- {r['dice_std']} ({r['spread']})")
    log(f"wrote {args.out}", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
