"""Outcome trials: train each candidate strategy briefly on the user's own data and advise from measured Dice.

The screens (decide.py) say whether sites differ; they cannot say whether harmonizing or
personalizing would pay off on this dataset. So `--trials` trains the four candidates, as
benchmarks/adapt_or_harmonize.py does (plain = instance norm; harmonized = instance norm on
harmonized data; uharmony = site-conditioned U-Harmony; both = U-Harmony on harmonized data),
cross-validated: per seed, every site's cases are dealt into folds, each fold's cases are held
out (never trained on) and scored by a model trained on the other folds, so every case is
scored once per seed and strategy, and the strategies are paired case by case within a seed.
Advice comes from the paired whole-lesion Dice differences against plain training and their
hierarchical bootstrap interval (evaluation/bootstrap.py: seeds resampled, then cases).

The number of steps is bought with a time budget: a short calibration run (the costliest
strategy, both) measures seconds per step and the fixed cost of a trial (reading, harmonizing,
saving, scoring), and the steps per trial follow from what is left of the budget.

Trials shorter than the training the advice is for (`max_steps`, train's default) can rank
the strategies by how fast they start rather than where they end: at 100 of 300 steps every
strategy scored about 0.11 Dice on the validation datasets (docs/diagnose.md). So when the
budget buys fewer steps, plain training is also trained at half the steps in every fold (the
learning check), and if its held-out Dice still rose by more than the margin (95 % CI lower
bound) the advice is inconclusive and says what budget would buy trials of full length.

The harmonized strategies' method is the caller's, or with `AUTO` (the command's default) the
one method_screen.py finds leaves the sites looking most alike; the screen's time is spent
from the budget before the calibration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from UHarmonyLib.data.datasets import read_dataset_json
from UHarmonyLib.data.plan import Plan, plan_training
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.bootstrap import hierarchical_ci, paired_differences
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined
from UHarmonyLib.progress import Reporter, SilentReporter
from UHarmonyLib.training.config import DEFAULT_STEPS

BASELINE = "plain"
STRATEGIES = {  # name: (norm, harmonized); benchmarks/adapt_or_harmonize.py trains the same four
    "plain": ("instance", False),
    "harmonized": ("instance", True),
    "uharmony": ("uharmony", False),
    "both": ("uharmony", True),
}
LABELS = {
    "plain": "plain joint training",
    "harmonized": "harmonized data",
    "uharmony": "site-conditioned U-Harmony",
    "both": "U-Harmony on harmonized data",
}
ADVICE = {
    "harmonized": "harmonize the data, then train jointly",
    "uharmony": "train site-conditioned U-Harmony",
    "both": "harmonize the data and train U-Harmony",
}
PLAIN_ENOUGH = "plain joint training is enough"
INCONCLUSIVE = "inconclusive at this budget"
DEFAULT_METHOD = "nyul"  # the library's default: callers that train the strategies themselves need a method
AUTO = "auto"  # screen the methods on the data (method_screen.py); the command's default
MIN_STEPS = 20  # fewer steps per trial measure initialization, not the strategies
CALIBRATION_STEPS = 5
MAX_STEPS = DEFAULT_STEPS  # by default a trial never trains longer than `uharmony train` would
MAX_FACTOR = 100.0  # beyond this many times the cases, "more cases" is no practical answer
HALF = "plain-half"  # the learning check's rows: plain training at half the trials' steps


@dataclass(frozen=True)
class TrialSettings:
    """What the trials train and how long: checked before any work (`check`)."""

    seeds: int = 2
    folds: int = 2
    budget_minutes: float = 20.0
    margin: float = 0.01
    max_steps: int = MAX_STEPS  # the budget buys steps up to this many (a trial need not outlast real training)
    method: str = DEFAULT_METHOD  # or AUTO
    patch: tuple[int, ...] = (64,)
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    batch_size: int = 2
    spacing: tuple[float, ...] | None = None
    device: str = "auto"

    def check(self) -> None:
        """One-line refusals of settings the trials cannot run with (the network's own via TrainConfig)."""
        from UHarmonyLib.image_harmonization import METHODS

        if self.seeds < 2:
            raise InputError(f"--trial-seeds must be at least 2 (the interval needs seeds to vary), got {self.seeds}")
        if self.folds < 2:
            raise InputError(f"--trial-folds must be at least 2, got {self.folds}")
        if not (self.budget_minutes > 0 and math.isfinite(self.budget_minutes)):
            raise InputError(f"--budget-minutes must be a positive number, got {self.budget_minutes}")
        if not (0 <= self.margin < 1):
            raise InputError(f"--margin must be in [0, 1) (whole-lesion Dice), got {self.margin}")
        if self.max_steps < MIN_STEPS:
            raise InputError(f"--trial-max-steps must be at least {MIN_STEPS}, got {self.max_steps}")
        if self.method not in (AUTO, *METHODS):
            raise InputError(f"--harmonize-method {self.method}: unknown method (use {', '.join((AUTO, *METHODS))})")
        self.config(Path("dataset.json"), Path("trial"), BASELINE, 0, MIN_STEPS).check()

    def config(self, data: Path, out: Path, strategy: str, seed: int, steps: int) -> Any:
        """The TrainConfig of one trial: no validation split (the held-out fold scores it), no checkpoints."""
        from UHarmonyLib.training import TrainConfig

        norm, harmonized = STRATEGIES[strategy]
        return TrainConfig(
            data=[data],
            out=out,
            norm=norm,
            steps=steps,
            patch=self.patch,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            seed=seed,
            spacing=self.spacing,  # type: ignore[arg-type]
            filters=self.filters,
            val_fraction=0.0,
            checkpoint_every=steps,
            harmonize=self.method if harmonized else None,
            device=self.device,
        )


# ---------------------------------------------------------------- advice (pure)


def _pairs(plain: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]]) -> dict[int, tuple[dict, dict]]:
    """Per seed: (plain, other) whole-lesion Dice by case."""
    out: dict[int, tuple[dict, dict]] = {}
    for rows, side in ((plain, 0), (other, 1)):
        for r in rows:
            out.setdefault(int(r["seed"]), ({}, {}))[side][str(r["case"])] = r["dice"]
    return out


def compare_to_plain(
    plain: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]], strategy: str
) -> dict[str, Any]:
    """`strategy` - plain, paired by (seed, case): mean, hierarchical 95 % CI and per-site mean difference.

    Cases without a defined Dice on either side (empty references) are left out; a comparison
    with no defined pair has None figures (it cannot decide anything).
    """
    per_seed = [paired_differences(a, b) for _, (a, b) in sorted(_pairs(plain, other).items())]
    per_seed = [d for d in per_seed if d]
    sites = {str(r["case"]): str(r["site"]) for r in plain}
    by_site: dict[str, list[float]] = {}
    plain_dice = {(int(r["seed"]), str(r["case"])): r["dice"] for r in plain}
    for r in other:
        a = plain_dice.get((int(r["seed"]), str(r["case"])))
        if a is not None and r["dice"] is not None:
            by_site.setdefault(sites[str(r["case"])], []).append(float(r["dice"]) - float(a))
    figures: dict[str, Any] = {"mean": None, "low": None, "high": None, "cases": 0, "replicates": 0}
    if per_seed:
        figures = {k: v for k, v in hierarchical_ci(per_seed).to_json().items() if k not in ("level", "holds")}
    return {
        "strategy": strategy,
        "name": f"{strategy} - {BASELINE}",
        **figures,
        "sites": {s: round(float(np.mean(v)), 4) for s, v in sorted(by_site.items())},
    }


def _ci(c: Mapping[str, Any]) -> str:
    return f"{LABELS[c['strategy']]} {c['mean']:+.3f} Dice over plain (95 % CI {c['low']:+.3f} to {c['high']:+.3f})"


def _factor(c: Mapping[str, Any], margin: float) -> float:
    """How many times the cases would settle comparison `c`: CI width ~ 1/sqrt(n), so width w needs (w / 2d)^2
    times the cases, d being the mean's distance from the margin."""
    gap, width = abs(c["mean"] - margin), c["high"] - c["low"]
    return (width / (2 * gap)) ** 2 if gap > 0 else math.inf


def _deciding(open_: Sequence[Mapping[str, Any]], margin: float) -> Mapping[str, Any]:
    """The undecided comparison whose settling ends the question: the leader when its mean is above the margin
    (settled, it is advised), else the one that needs the most cases (all must fall below for plain to do)."""
    leader = max(open_, key=lambda c: c["mean"])
    return leader if leader["mean"] > margin else max(open_, key=lambda c: _factor(c, margin))


def _resolve(c: Mapping[str, Any], margin: float) -> str:
    """What would settle comparison `c`, in held-out cases and in seeds and budget."""
    factor = _factor(c, margin)
    if factor > MAX_FACTOR:
        return (
            f"{LABELS[c['strategy']]}'s mean lies too close to the margin for more cases to settle it: "
            "the strategies are about equal here"
        )
    factor = max(factor, 1.0)
    cases = math.ceil(c["cases"] * factor)
    return (
        f"its interval would exclude the margin with about {cases} paired held-out cases instead of {c['cases']} "
        f"(more cases per site), or about {factor:.1f} times the seeds (--trial-seeds) and the budget"
    )


def learning_check(
    full: Sequence[Mapping[str, Any]], half: Sequence[Mapping[str, Any]], steps: int, margin: float
) -> dict[str, Any]:
    """Plain training's held-out Dice gain from half the trials' steps to all of them, paired by (seed, case).

    `still_learning` when the gain's 95 % CI lower bound is above `margin`: the models were
    still improving by more than a difference worth advising, so the strategies' order at
    `steps` need not be their order after the full training.
    """
    per_seed = [paired_differences(h, f) for _, (h, f) in sorted(_pairs(half, full).items())]
    per_seed = [d for d in per_seed if d]
    out: dict[str, Any] = {"steps": steps, "half_steps": steps // 2, "mean": None, "low": None, "high": None}
    if per_seed:
        out.update({k: v for k, v in hierarchical_ci(per_seed).to_json().items() if k not in ("level", "holds")})
    out["still_learning"] = out["low"] is not None and out["low"] > margin
    return out


def advise(
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    margin: float,
    labels: Mapping[str, str] | None = None,
    learning: Mapping[str, Any] | None = None,
    full_length: str = "",
) -> dict[str, Any]:
    """Advice from per-case whole-lesion Dice rows (strategy -> rows of seed, case, site, dice).

    A strategy is advised when its paired difference over plain has a 95 % CI lower bound above
    `margin` (the highest mean among those); plain is enough when every upper bound is below the
    margin; anything else is inconclusive, with what would settle the undecided comparison that decides.
    `labels` names the strategies in the advice (e.g. with the harmonization method).
    """
    names = {**LABELS, **(labels or {})}
    comparisons = [compare_to_plain(rows[BASELINE], rows[s], s) for s in rows if s != BASELINE]
    defined = [c for c in comparisons if c["mean"] is not None]
    winners = [c for c in defined if c["low"] > margin]
    best = max(winners or defined, key=lambda c: c["mean"], default=None)
    choice: str | None = None
    if best is None:
        advice, reason = INCONCLUSIVE, "no held-out case has a defined whole-lesion Dice (every reference is empty)"
    elif winners:
        choice = best["strategy"]
        advice = f"{ADVICE[best['strategy']]} ({names[best['strategy']]})"
        others = [LABELS[c["strategy"]] for c in winners if c is not best]
        reason = f"{_ci(best)}: its lower bound is above the margin {margin:g}" + (
            f"; {', '.join(others)} also clear the margin with a lower mean" if others else ""
        )
    elif len(defined) == len(comparisons) and all(c["high"] < margin for c in defined):
        choice, advice = BASELINE, PLAIN_ENOUGH
        reason = f"no strategy's 95 % CI reaches the margin {margin:g} above plain; the best: {_ci(best)}"
    else:
        advice = INCONCLUSIVE
        open_ = [c for c in defined if c["high"] >= margin]
        missing = [LABELS[c["strategy"]] for c in comparisons if c["mean"] is None]
        if open_:
            deciding = _deciding(open_, margin)
            reason = (
                f"no strategy's 95 % CI lies wholly above the margin {margin:g}, and {len(open_)} reach it; "
                f"the one that decides: {_ci(deciding)}; {_resolve(deciding, margin)}"
            )
        else:
            reason = f"{', '.join(missing)}: no held-out case with a defined whole-lesion Dice"
    if learning is not None and learning["still_learning"]:
        choice, advice = None, INCONCLUSIVE
        reason = (
            f"the trials of {learning['steps']} steps are too short to stand for the full training: plain joint "
            f"training's held-out Dice still rose {learning['mean']:+.3f} (95 % CI {learning['low']:+.3f} to "
            f"{learning['high']:+.3f}) from {learning['half_steps']} to {learning['steps']} steps, so the strategies' "
            f"order may still change{full_length}; at this length: {reason}"
        )
    gains = [c for c in defined if c["mean"] > 0]
    leaning = max(gains, key=lambda c: c["mean"])["strategy"] if gains else BASELINE
    if choice is None and best is not None:  # the bolder reading, measured in docs/harmonization.md
        bet = f"the highest mean gain is {names[leaning]}'s" if gains else "no strategy gains over plain on average"
        reason += f"; if you must choose now, {bet}"
    return {
        "choice": choice,
        "leaning": leaning,
        "advice": advice,
        "reason": reason,
        "margin": margin,
        "learning": None if learning is None else dict(learning),
        "comparisons": comparisons,
        "drivers": {
            "strategy": None if best is None else best["strategy"],
            "sites": dict(sorted(best["sites"].items(), key=lambda kv: -kv[1])) if best is not None else {},
        },
    }


# ---------------------------------------------------------------- budget (pure)


def steps_for_budget(
    budget_s: float, spent_s: float, trials: int, fixed_s: float, step_s: float, halves: int = 0
) -> int:
    """Steps per trial the rest of the budget buys: trials x (fixed + steps x seconds per step), plus
    `halves` learning-check trainings of half the steps."""
    left = budget_s - spent_s - (trials + halves) * fixed_s
    return max(0, math.floor(left / ((trials + halves / 2) * max(step_s, 1e-6))))


def minutes_for_steps(steps: int, spent_s: float, trials: int, fixed_s: float, step_s: float, halves: int = 0) -> float:
    """The budget (minutes, rounded up to a tenth) that buys `steps` per trial (and `halves` half-length ones)."""
    seconds = spent_s + (trials + halves) * fixed_s + (trials + halves / 2) * steps * step_s
    return math.ceil(seconds / 6) / 10


def bought_steps(
    budget_s: float, spent_s: float, trials: int, fixed_s: float, step_s: float, max_steps: int, halves: int
) -> tuple[int, bool]:
    """Steps per trial and whether the learning check runs: not when the budget buys full-length trials
    (`max_steps`), else its `halves` trainings are paid for out of the same budget."""
    if steps_for_budget(budget_s, spent_s, trials, fixed_s, step_s) >= max_steps:
        return max_steps, False
    return steps_for_budget(budget_s, spent_s, trials, fixed_s, step_s, halves), True


# ---------------------------------------------------------------- running


def fold_split(plan: Plan, seed: int, folds: int) -> list[list[int]]:
    """Held-out case indices per fold: each site's cases shuffled by `seed` and dealt round-robin from a fold
    that moves with the site, so every fold holds out at least one case of every site (sites need `folds`
    cases or more) and the folds' sizes stay even."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    for j, site in enumerate(plan.sites):
        for k, i in enumerate(rng.permutation(site.cases)):
            out[(j + k) % folds].append(int(i))
    return [sorted(f) for f in out]


def write_fold(file: Path, data: Mapping[str, Any], name: str, held: set[int], folder: Path) -> Path:
    """The dataset without the held-out cases, as a dataset.json in `folder` pointing at the original files."""
    root = file.parent
    training = []
    for i, item in enumerate(data["training"]):
        if i in held:
            continue
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        training.append(
            {
                **item,
                "image": [os.path.abspath(root / p) for p in images],
                "label": os.path.abspath(root / item["label"]),
            }
        )
    folder.mkdir(parents=True)
    path = folder / "dataset.json"
    doc = {**data, "name": name, "training": training, "numTraining": len(training)}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


@dataclass
class _Fold:
    seed: int
    index: int
    held: list[int]
    data: Path


def _trial(
    s: TrialSettings, data: Path, plan: Plan, fold: _Fold, strategy: str, steps: int, work: Path, device: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train one strategy on a fold's training cases and score its held-out cases (one pass, the site given)."""
    from UHarmonyLib.evaluation.report import map_dataset, score_cases
    from UHarmonyLib.model.weights import load_bundle
    from UHarmonyLib.training.loop import train_run

    out = work / f"{strategy}-s{fold.seed}-f{fold.index}"
    work.mkdir(exist_ok=True)
    payload = train_run(s.config(fold.data, out, strategy, fold.seed, steps))
    bundle = load_bundle(out)
    mapped = map_dataset(bundle, data, "given")
    held = dataclasses.replace(
        mapped, cases=[mapped.cases[i] for i in fold.held], groups=[mapped.groups[i] for i in fold.held]
    )
    scored, _ = score_cases(bundle, held, "given", device, SilentReporter(), passes=1)
    shutil.rmtree(out)
    rows = [
        {
            "strategy": strategy,
            "seed": fold.seed,
            "fold": fold.index,
            "case": r["case"],
            "site": r["site"],
            "dice": r["dice"].get(WHOLE),
        }
        for r in scored
    ]
    return rows, payload


def site_means(rows: Mapping[str, Sequence[Mapping[str, Any]]], sites: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per strategy: mean whole-lesion Dice per site (over seeds and cases) and the mean over sites."""
    out = {}
    for strategy, mine in rows.items():
        per = {site: mean_defined([r["dice"] for r in mine if r["site"] == site]) for site in sites}
        out[strategy] = {"sites": per, "mean": mean_defined(list(per.values()))}
    return out


def trial_plan(data: Path, s: TrialSettings) -> Plan:
    """The dataset as the trials split it, refused (one line) before any work if a site cannot fill the folds."""
    plan = plan_training([data], val_fraction=0.0, seed=0)
    small = next((site for site in plan.sites if len(site.cases) < s.folds), None)
    if small is not None:
        raise InputError(
            f"{plan.datasets[0]['path']}: --trials holds out cases of every site in each of {s.folds} folds, and "
            f"site {small.name} has {len(small.cases)} case(s); give it more cases or lower --trial-folds (at least 2)"
        )
    return plan


def harmonize_method(plan: Plan, s: TrialSettings, reporter: Reporter) -> tuple[TrialSettings, dict[str, Any]]:
    """The settings with the harmonized strategies' method, and how it was chosen: given, or screened (AUTO)."""
    if s.method != AUTO:
        reporter.log(f"trials: harmonization {s.method}, as given (not screened)")
        return s, {"method": s.method, "chosen_by": "--harmonize-method", "screen": None}
    from UHarmonyLib.diagnose.method_screen import CANDIDATES, CASES_PER_SITE, screen_methods

    reporter.log(
        f"trials: screening harmonization methods (none, {', '.join(CANDIDATES)}) on at most {CASES_PER_SITE} "
        "cases per site"
    )
    screen = screen_methods(plan, reporter)
    reporter.log(f"trials: harmonization {screen['chosen']}: {screen['verdict']}")
    record = {"method": screen["chosen"], "chosen_by": "screened (--harmonize-method auto)", "screen": screen}
    return dataclasses.replace(s, method=screen["chosen"]), record


def run_trials(data: Path, plan: Plan, s: TrialSettings, reporter: Reporter) -> dict[str, Any]:
    """Screen the harmonization methods (AUTO), calibrate, check the budget (refused in one line if too small),
    run every trial, advise.

    Progress: stage "screen" per method (AUTO), then "trials", one step per finished trial; the estimate
    (the screen's time included) is logged before the first.
    """
    from UHarmonyLib.inference.device import resolve_device

    started = time.perf_counter()
    file, raw = read_dataset_json(Path(plan.datasets[0]["path"]))
    sites = [site.name for site in plan.sites]
    device = resolve_device(s.device)
    trials = len(STRATEGIES) * s.seeds * s.folds
    with tempfile.TemporaryDirectory(prefix="uharmony-trials-") as tmp:
        work = Path(tmp)
        splits = [(seed, k, held) for seed in range(s.seeds) for k, held in enumerate(fold_split(plan, seed, s.folds))]
        if any(max(len(set(site.cases) - set(held)) for site in plan.sites) < 2 for _, _, held in splits):
            raise InputError(
                f"{file}: with {s.folds} folds every site keeps one training case per fold, and training needs a "
                "site with two (the gate calibrates on them); give one site more cases or lower --trial-folds"
            )
        folds = [
            _Fold(seed, k, held, write_fold(file, raw, plan.datasets[0]["name"], set(held), work / f"s{seed}-f{k}"))
            for seed, k, held in splits
        ]
        s, method = harmonize_method(plan, s, reporter)
        screen_s = float(method["screen"]["seconds"]) if method["screen"] else 0.0
        reporter.log(f"trials: calibrating ({CALIBRATION_STEPS} steps of the costliest strategy, both)")
        t = time.perf_counter()
        _, cal = _trial(s, data, plan, folds[0], "both", CALIBRATION_STEPS, work / "calibration", device)
        trial_s = time.perf_counter() - t
        step_s = float(cal["seconds_per_step"])
        fixed_s = max(0.0, trial_s - CALIBRATION_STEPS * step_s)
        spent_s = time.perf_counter() - started
        budget_s = s.budget_minutes * 60
        steps, check = bought_steps(budget_s, spent_s, trials, fixed_s, step_s, s.max_steps, len(folds))
        halves = len(folds) if check else 0
        if steps < MIN_STEPS:
            need = minutes_for_steps(MIN_STEPS, spent_s, trials, fixed_s, step_s, len(folds))
            raise InputError(
                f"--budget-minutes {s.budget_minutes:g} buys {steps} steps per trial ({trials} trials at "
                f"{step_s:.3g} s/step + {fixed_s:.3g} s each); {MIN_STEPS} steps need about --budget-minutes {need:g}"
            )
        full_minutes = minutes_for_steps(s.max_steps, spent_s, trials, fixed_s, step_s)
        estimate = (spent_s + (trials + halves) * fixed_s + (trials + halves / 2) * steps * step_s) / 60
        capped = " (--trial-max-steps)" if steps == s.max_steps else ""
        checked = (
            f", and {halves} of plain training at {steps // 2} steps (the learning check: fewer steps than "
            f"--trial-max-steps {s.max_steps}, which about --budget-minutes {full_minutes:g} buys)"
            if check
            else ""
        )
        screened = f", the harmonization screen's {screen_s:.0f} s included" if method["screen"] else ""
        reporter.log(
            f"trials: {trials} trials ({len(STRATEGIES)} strategies x {s.seeds} seeds x {s.folds} folds) of {steps} "
            f"steps{capped}{checked} at {step_s:.3g} s/step + {fixed_s:.3g} s each; about {estimate:.1f} of "
            f"{s.budget_minutes:g} minutes{screened}"
        )
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in STRATEGIES}
        half: list[dict[str, Any]] = []
        done, total = 0, trials + halves
        for fold in folds:
            for strategy in STRATEGIES:
                scored, _ = _trial(s, data, plan, fold, strategy, steps, work / "models", device)
                rows[strategy] += scored
                done += 1
                reporter.progress("trials", done, total)
            if check:
                scored, _ = _trial(s, data, plan, fold, BASELINE, steps // 2, work / "models", device)
                half += [{**r, "strategy": HALF} for r in scored]
                done += 1
                reporter.progress("trials", done, total)
    labels = {n: f"{LABELS[n]}, {s.method}" for n in ("harmonized", "both")}
    learning = learning_check(rows[BASELINE], half, steps, s.margin) if check else None
    full_length = f": about --budget-minutes {full_minutes:g} buys trials of {s.max_steps} steps"
    advice = advise(rows, s.margin, labels, learning, full_length)
    return {
        "strategies": {
            n: {"label": LABELS[n], "norm": norm, "harmonize": s.method if h else None}
            for n, (norm, h) in STRATEGIES.items()
        },
        "harmonize_method": method,
        "steps": steps,
        "seeds": list(range(s.seeds)),
        "folds": s.folds,
        "held_out": {"per_seed": len(plan.cases), "mirror": False, "site": "given"},
        "training": {
            "patch": list(s.patch),
            "filters": list(s.filters),
            "batch_size": s.batch_size,
            "spacing": None if s.spacing is None else list(s.spacing),
            "device": str(device),
        },
        "rows": [r for mine in rows.values() for r in mine] + half,
        "site_means": site_means(rows, sites),
        **advice,
        "budget": {
            "minutes": s.budget_minutes,
            "trials": trials,
            "seconds_per_step": round(step_s, 4),
            "fixed_seconds_per_trial": round(fixed_s, 2),
            "screen_seconds": round(screen_s, 2),
            "calibration_seconds": round(trial_s, 2),
            "estimated_minutes": round(estimate, 2),
            "min_steps": MIN_STEPS,
            "max_steps": s.max_steps,
            "learning_check_trials": halves,
            "full_length_minutes": full_minutes,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
