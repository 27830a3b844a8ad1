"""Federated U-Harmony against FedAvg, FedProx, FedBN, local-only and centralized training, at matched steps.

    .venv/bin/python benchmarks/federated.py [--quick] [--final] [--scenarios protocols annotation]
        [--replicates 3 [2 ...]] [--local-steps-sweep 5 25 100] [--server-momentum-sweep 0.6 0.9]
        [--lr-sweep 0.002 0.004 0.008] [--federated-lr 0.002] [--central-lr 0.002] [--jobs 2]
        [--out docs/results/federated.json] [--work DIR]

Sites differ as scanner protocols (`protocols`) or annotators (`annotation`) do. In each
replicate every site trains on its own cases in Flower's simulation runtime (the same
ServerApp and ClientApp a deployment runs) and scores the bundle it wrote on fresh test
cases of its own site (the gate deciding, as a hospital would run it; FedBN's local norms
need the site named, and a site knows itself). Every `eval_every` rounds each site also
scores the round's model on its held-out validation cases: the Dice-per-round curves.
All arms see the same training cases (the same validation split) and the same number of
optimizer steps of one batch size: rounds x local steps per site, x sites for the
centralized model on the pooled cases; a local-only model trains rounds x local steps on
its own site's cases alone and scores on that site. Every model is trained on one grid:
the cases' own spacing, which is `uharmony train`'s default.

Replicate r follows the locked protocol (benchmarks/protocol.py): training cases and
every training seed from training_seeds[r], test cases from the r-th development seed
(the r-th test seed only with `--final`). Every case is scored by protocol.score_bundle
and saved beside the summary; federated U-Harmony is compared case by case with every
other arm, pooled and per site, with the hierarchical bootstrap (replicates, then cases).
`--local-steps-sweep` repeats federated U-Harmony on the first scenario's first
replicate at other local steps, rounds x local steps kept (client drift against
communication). `--server-momentum-sweep` repeats it there with Flower's FedAvgM: the server
steps along a momentum of the averaged updates (server-side optimization, against the stateful
clients alone; momentum 0 is plain averaging, the main row). `--lr-sweep` repeats federated and
centralized U-Harmony there at other peak learning rates, so that each arm's rate is chosen on
development replicates; `--federated-lr` and `--central-lr` then run every replicate at the chosen
rates (a replicate of its own, with `--final` on the test seeds). A killed run keeps its finished
models and scores: run it again with the same --work to go on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import replicate_store
import torch
from jobs import ScoreJob, run_all
from protocol import Scored, compare, load_protocol, write_case_scores
from reproduce import check_work, listing, synthesize

from UHarmonyLib.data.plan import Plan, plan_training
from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.evaluation.scoring import mean_defined
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.simulate import simulate
from UHarmonyLib.federated.site import RECORD_NAME
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
OURS = "federated_uharmony"
FEDERATIONS = {  # arm -> (federated method, Flower strategy)
    OURS: ("uharmony", "fedavg"),
    "federated_fedavg": ("fedavg", "fedavg"),
    "federated_fedprox": ("fedavg", "fedprox"),
    "federated_fedbn": ("fedbn", "fedavg"),
}
CENTRAL, WIDE, LOCAL = "centralized_uharmony", "centralized_uharmony_wide", "local_only"
ARMS = (CENTRAL, WIDE, *FEDERATIONS, LOCAL)
MEANING = {  # what `federated_uharmony - arm` measures
    CENTRAL: "what federating costs against pooled training with as many optimizer steps in all (goal: within 0.03)",
    WIDE: "what federating costs against pooled training with a round's sequential steps and patches (goal: 0.03)",
    "federated_fedavg": "U-Harmony's site layers over plain FedAvg (InstanceNorm)",
    "federated_fedprox": "U-Harmony's site layers over FedProx (InstanceNorm, proximal term)",
    "federated_fedbn": "U-Harmony (gate deciding) over FedBN's local norms (site given)",
    LOCAL: "what joining the federation gives a site over training alone",
}
GOAL_GAP = 0.03
BATCH = Federation.batch  # patches per step: the federation contract's default, every arm's unless wide


@dataclass(frozen=True)
class Rates:
    """Peak learning rates of the one-cycle schedule: every federation's (`--federated-lr`) and every `uharmony
    train` arm's, centralized and local-only (`--central-lr`). Each arm's rate is chosen on development replicates
    (`--lr-sweep`); the defaults are the contract's and `uharmony train`'s."""

    federated: float = Federation.lr
    central: float = TrainConfig.lr

    @property
    def tag(self) -> str:
        return "" if self == Rates() else f"-lr{self.federated:g}-{self.central:g}"

    def key(self) -> dict[str, float]:
        """Empty at the defaults, so replicates stored before the rates were options still match."""
        return {} if self == Rates() else {"federated_lr": self.federated, "central_lr": self.central}


@dataclass(frozen=True)
class Settings:
    spacing: float
    cases_per_site: int
    val_fraction: float
    test_cases_per_site: int
    filters: str
    patch: int
    rounds: int
    local_steps: int
    eval_every: int


# 2 mm: on a 3 mm grid small lesions vanish. Patch 32 keeps 3 scenarios x replicates x 6 arms within hours.
FULL = Settings(2.0, 10, 0.2, 5, "8,16,32,64", 32, 12, 25, 2)
QUICK = Settings(4.0, 3, 0.34, 1, "4,8,16", 32, 2, 2, 1)


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)


class Replicate:
    """One scenario's replicate r: its data, its seeds and its folders."""

    def __init__(self, work: Path, scenario: str, r: int, s: Settings, final: bool, rates: Rates | None = None) -> None:
        self.scenario, self.r, self.s, self.final = scenario, r, s, final
        self.rates = rates or Rates()
        self.seed = PROTOCOL.replicate_seeds(r + 1)[r]
        self.test_seed = PROTOCOL.evaluation_seeds(final)[r]
        self.folder = work / scenario / f"r{r}{self.rates.tag}"  # models of other rates are never resumed
        self.data = work / "data"
        self.spec = resolve_scenario(scenario)
        self.sites = [x.name for x in self.spec.sites]

    @property
    def name(self) -> str:
        """Named by evaluation and rates too, so a final run or one at chosen rates never meets another's file."""
        return f"{self.scenario}-r{self.r}{'-test' if self.final else ''}{self.rates.tag}"

    def key(self) -> dict[str, Any]:
        """What a stored copy of this replicate must have run under (benchmarks/replicate_store.py)."""
        evaluation = "test" if self.final else "development"
        return {"scenario": self.scenario, "settings": asdict(self.s), "evaluation": evaluation,
                "training_seed": self.seed, "test_seed": self.test_seed, **self.rates.key()}  # fmt: skip

    # The cases are drawn when first needed (a stored replicate needs none). Folders are named by seed: a dataset
    # of another replicate or of the other evaluation is never reused.
    @cached_property
    def train(self) -> Path:
        return synthesize(self.data / f"{self.scenario}-train-{self.seed}", self.spec, self.seed, self.s.spacing,
                          self.s.cases_per_site)  # fmt: skip

    @cached_property
    def test(self) -> Path:
        return synthesize(self.data / f"{self.scenario}-test-{self.test_seed}", self.spec, self.test_seed,
                          self.s.spacing, self.s.test_cases_per_site)  # fmt: skip

    @cached_property
    def plan(self) -> Plan:
        return plan_training([self.train], 0.0, 0)

    @property
    def channels(self) -> str:
        return ",".join(self.plan.channels)

    @property
    def labels(self) -> str:
        return ",".join(self.plan.label_names)

    @property
    def site_steps(self) -> int:
        return self.s.rounds * self.s.local_steps

    def training(
        self, name: str, norm: str, data: Path, steps: int, batch: int = BATCH, lr: float | None = None
    ) -> TrainConfig:
        s = self.s
        return TrainConfig(
            data=[data],
            out=self.folder / name,
            norm=norm,
            filters=tuple(int(f) for f in s.filters.split(",")),
            steps=steps,
            batch_size=batch,
            patch=(s.patch,) * 3,
            spacing=(s.spacing,) * 3,
            val_fraction=s.val_fraction,  # the federation's split: the same training cases
            seed=self.seed,
            lr=lr or self.rates.central,
            resume=True,  # continues a killed run's checkpoint, else starts fresh
        )

    def trainings(self) -> list[TrainConfig]:
        """Centralized U-Harmony on the pooled cases (as many steps as all sites together; or a round's sequential
        steps with every site's patches in one batch), and one local-only model (InstanceNorm) per site."""
        jobs = [
            self.training(CENTRAL, "uharmony", self.train, self.site_steps * len(self.sites)),
            self.training(WIDE, "uharmony", self.train, self.site_steps, BATCH * len(self.sites)),
        ]
        for k, site in enumerate(self.sites):
            own = listing(self.train, self.folder / "data" / f"site-{k}", site)
            jobs.append(self.training(f"{LOCAL}-{k}", "instance", own, self.site_steps))
        return jobs

    def contract(self, arm: str, s: Settings, server_momentum: float = 0.0, lr: float | None = None) -> Federation:
        """The arm's federation; with `server_momentum`, Flower's FedAvgM instead of its strategy; `lr` replaces the
        contract's peak learning rate."""
        method, strategy = FEDERATIONS[arm]
        return Federation(
            sites=",".join(self.sites),
            channels=self.channels,
            labels=self.labels,
            method=method,
            strategy="fedavgm" if server_momentum else strategy,
            server_momentum=server_momentum,
            rounds=s.rounds,
            local_steps=s.local_steps,
            patch=s.patch,
            spacing=s.spacing,
            filters=s.filters,
            val_fraction=s.val_fraction,
            eval_every=s.eval_every,
            seed=self.seed,
            name=arm.replace("_", "-"),
            lr=lr or self.rates.federated,
        )


def federate(
    rep: Replicate,
    arm: str,
    s: Settings,
    folder: Path,
    started: float,
    server_momentum: float = 0.0,
    lr: float | None = None,
) -> dict[str, Any]:
    """One federation in the simulation runtime (a finished one is read back); its record and curves."""
    contract = rep.contract(arm, s, server_momentum, lr)
    record_path = folder / "server" / "server.json"
    done = record_path.is_file() and json.loads(record_path.read_text(encoding="utf-8")).get("status") == "finished"
    if folder.exists() and not done:  # a killed federation's site states would resume mid-way: start it afresh
        shutil.rmtree(folder)
    t = time.perf_counter()
    record = json.loads(record_path.read_text(encoding="utf-8")) if done else simulate(contract, [rep.train], folder)
    rounds = record["rounds"]
    log(
        f"{rep.scenario} r{rep.r} {arm}: {len(rounds)} rounds of {s.local_steps} ({time.perf_counter() - t:.0f} s)",
        started,
    )
    return {
        "record": record,
        "given": contract.network().config.site_required,  # FedBN's local norms need the site named
        "seconds_per_round": round(float(np.mean([x["seconds"] for x in rounds])), 2),
        "dice_per_round": [
            {"round": e["round"], "dice": mean_defined(list(e["dice_whole_lesion"].values()))}
            for e in record.get("evaluations", [])
        ],
        "train_loss_per_round": loss_per_round(folder, contract),
    }


def loss_per_round(folder: Path, contract: Federation) -> list[float]:
    """Mean training loss over the sites in each round, from the records the sites kept."""
    records = [folder / "sites" / site / contract.digest() / RECORD_NAME for site in contract.site_names]
    by_round: dict[int, list[float]] = {}
    for path in records:
        for r in json.loads(path.read_text(encoding="utf-8"))["rounds"]:
            by_round.setdefault(r["round"], []).append(r["train-loss"])
    return [round(float(np.mean(by_round[k])), 4) for k in sorted(by_round)]


def score_jobs(rep: Replicate, federations: dict[str, dict[str, Any]]) -> list[ScoreJob]:
    """Every arm's models on the replicate's test cases: each site's model on that site's cases."""
    scores = rep.folder / "scores"
    scores.mkdir(parents=True, exist_ok=True)

    def job(model: Path, arm: str, given: bool, sites: tuple[str, ...], tag: str) -> ScoreJob:
        return ScoreJob(model, rep.test, given, arm, rep.r, scores / f"{tag}.json", sites=sites)

    jobs = [job(rep.folder / arm, arm, False, (), arm) for arm in (CENTRAL, WIDE)]
    for arm, fed in federations.items():
        bundles = fed["record"]["bundles"]
        jobs += [job(Path(bundles[x]), arm, fed["given"], (x,), f"{arm}-{k}") for k, x in enumerate(rep.sites)]
    jobs += [job(rep.folder / f"{LOCAL}-{k}", LOCAL, False, (x,), f"{LOCAL}-{k}") for k, x in enumerate(rep.sites)]
    return jobs


def merged(results: list[Scored], arm: str, r: int) -> Scored:
    out = Scored(arm, r)
    mine = [x for x in results if x.arm == arm]
    out.records = [rec for x in mine for rec in x.records]
    gates = [x.gate_accuracy for x in mine if x.gate_accuracy is not None]
    out.gate_accuracy = round(float(np.mean(gates)), 4) if gates else None
    return out


def only_site(scored: Scored, site: str) -> Scored:
    return Scored(scored.arm, scored.replicate, [x for x in scored.records if x["site"] == site])


def site_means(scored: Scored, sites: list[str]) -> dict[str, float | None]:
    by_site = scored.by_site()
    return {x: mean_defined(by_site.get(x, [])) for x in sites}


def slim(federation: dict[str, Any]) -> dict[str, Any]:
    """A federation's curves and contract without its bundles' paths (which a stored replicate does not keep)."""
    return {**federation, "record": {"contract": federation["record"]["contract"]}}


def run_replicate(rep: Replicate, s: Settings, jobs: int, started: float, store: Path | None) -> dict[str, Any]:
    """Every arm of one replicate: trainings (in a pool), federations (Ray runs two sites at a time), scores.

    A replicate finished before (in `store`, under the same key) is loaded instead; a new one is stored.
    """
    kept = replicate_store.load(store, rep.name, rep.key())
    if kept is not None:
        log(f"{rep.name}: loaded from {store}", started)
        return {
            "scored": {a: replicate_store.scored_from_json(x) for a, x in kept["scored"].items()},
            "federations": kept["feds"],
        }
    todo = [j for j in rep.trainings() if not j.out.is_dir()]
    run_all(todo, jobs, lambda j, _r: log(f"{rep.scenario} r{rep.r} {j.out.name} trained", started))
    federations = {arm: federate(rep, arm, s, rep.folder / arm, started) for arm in FEDERATIONS}
    results = run_all(score_jobs(rep, federations), jobs, lambda _j, _r: None)
    scored = {arm: merged(results, arm, rep.r) for arm in ARMS}
    log(f"{rep.scenario} r{rep.r}: " + ", ".join(f"{a} {mean_defined(list(site_means(x, rep.sites).values()))}"
                                                  for a, x in scored.items()), started)  # fmt: skip
    feds = {arm: slim(f) for arm, f in federations.items()}
    payload = {"scored": {a: replicate_store.scored_to_json(x) for a, x in scored.items()}, "feds": feds}
    replicate_store.save(store, rep.name, rep.key(), payload)
    return {"scored": scored, "federations": feds}


def mean_of(values: list[float | None]) -> float | None:
    m = mean_defined(values)
    return None if m is None else round(m, 4)


def arm_row(arm: str, reps: list[dict[str, Any]], sites: list[str]) -> dict[str, Any]:
    """One arm of a scenario, averaged over replicates (each replicate: the mean over sites of per-site Dice)."""
    scored = [r["scored"][arm] for r in reps]
    per_rep = [mean_defined(list(site_means(x, sites).values())) for x in scored]
    row: dict[str, Any] = {
        "method": arm,
        "dice_mean": mean_of(per_rep),
        "dice_per_replicate": [None if d is None else round(d, 4) for d in per_rep],
        "per_site": {x: mean_of([site_means(sc, sites)[x] for sc in scored]) for x in sites},
        "lesion_dice_mean": mean_of([mean_defined(list(sc.by_case("lesion_dice").values())) for sc in scored]),
        "gate_accuracy": mean_of([sc.gate_accuracy for sc in scored]),
    }
    if arm in FEDERATIONS:
        feds = [r["federations"][arm] for r in reps]
        curves = [f["dice_per_round"] for f in feds]
        row["site_params"] = feds[0]["record"]["contract"]["site-params"]
        row["strategy"] = FEDERATIONS[arm][1]
        row["seconds_per_round"] = mean_of([f["seconds_per_round"] for f in feds])
        row["dice_per_round"] = [
            {"round": point["round"], "dice": mean_of([c[k]["dice"] for c in curves])}
            for k, point in enumerate(curves[0])
        ]
        losses = [f["train_loss_per_round"] for f in feds]
        row["train_loss_per_round"] = [mean_of(list(x)) for x in zip(*losses)]
    return row


def comparisons(reps: list[dict[str, Any]], sites: list[str]) -> list[dict[str, Any]]:
    """Federated U-Harmony minus each arm, case by case within replicates: pooled, then per site."""
    out = []
    for arm in ARMS:
        if arm == OURS:
            continue
        a, b = [r["scored"][arm] for r in reps], [r["scored"][OURS] for r in reps]
        entry = {**compare(f"{OURS} - {arm}", a, b), "meaning": MEANING[arm]}
        entry["per_site"] = {
            x: {k: v for k, v in compare(x, [only_site(y, x) for y in a], [only_site(y, x) for y in b]).items()
                if k in ("diff_mean", "ci95", "holds", "cases")}
            for x in sites
        }  # fmt: skip
        out.append(entry)
    return out


def scenario_figures(scenario: str, reps: list[dict[str, Any]], sites: list[str]) -> dict[str, Any]:
    rows = [arm_row(arm, reps, sites) for arm in ARMS]
    central = rows[0]["dice_mean"]
    for row in rows:
        d = row["dice_mean"]
        row["gap_to_centralized"] = None if d is None or central is None else round(d - central, 4)
    compared = comparisons(reps, sites)
    return {
        "scenario": scenario,
        "sites": sites,
        "rows": rows,
        "comparisons": compared,
        "goal": [goal(next(c for c in compared if c["a"] == arm)) for arm in (CENTRAL, WIDE)],
    }


def goal(versus: dict[str, Any]) -> dict[str, Any]:
    """Federated U-Harmony within GOAL_GAP of a centralized arm: by its mean (met) and by its CI (shown)."""
    return {
        "against": versus["a"],
        "federated_uharmony_within": GOAL_GAP,
        "gap": versus["diff_mean"],
        "ci95": versus["ci95"],
        "met": versus["diff_mean"] >= -GOAL_GAP,
        "shown": versus["ci95"][0] >= -GOAL_GAP,  # the CI excludes a larger loss
    }


def variant(
    rep: Replicate,
    s: Settings,
    tag: str,
    key: dict[str, Any],
    started: float,
    store: Path | None,
    momentum: float = 0.0,
    lr: float | None = None,
) -> tuple[dict[str, Any], Scored]:
    """Federated U-Harmony once more under settings `s` (and server momentum, or another peak learning rate), stored
    as `{replicate}-{tag}` and reused as a replicate is: its federation's record and curves, and its scored test
    cases."""
    name = f"{rep.name}-{tag}"
    kept = replicate_store.load(store, name, key)
    if kept is not None:
        return kept["fed"], replicate_store.scored_from_json(kept["scored"])
    fed = federate(rep, OURS, s, rep.folder / f"{OURS}-{tag}", started, momentum, lr)
    jobs = [
        ScoreJob(Path(fed["record"]["bundles"][site]), rep.test, False, OURS, rep.r,
                 rep.folder / "scores" / f"{OURS}-{tag}-{k}.json", sites=(site,))
        for k, site in enumerate(rep.sites)
    ]  # fmt: skip
    scored = merged(run_all(jobs, 1, lambda _j, _r: None), OURS, rep.r)
    replicate_store.save(store, name, key, {"fed": slim(fed), "scored": replicate_store.scored_to_json(scored)})
    return fed, scored


def variant_row(fed: dict[str, Any], scored: Scored, sites: list[str]) -> dict[str, Any]:
    per_site = site_means(scored, sites)
    return {
        "dice_mean": mean_of(list(per_site.values())),
        "per_site": {k: mean_of([v]) for k, v in per_site.items()},
        "dice_per_round": fed["dice_per_round"],
        "train_loss_per_round": fed["train_loss_per_round"],
        "seconds_per_round": fed["seconds_per_round"],
    }


def sweep_rows(
    rep: Replicate, s: Settings, sweep: list[int], main: dict[str, Any], started: float, store: Path | None
) -> list[dict]:
    """Federated U-Harmony at each number of local steps, rounds x local steps kept at the main rows' budget."""
    budget = s.rounds * s.local_steps
    rows = []
    for steps in sweep:
        x = replace(s, rounds=max(1, round(budget / steps)), local_steps=steps, eval_every=0)
        if steps == s.local_steps:
            fed, scored = main["federations"][OURS], main["scored"][OURS]
        else:
            fed, scored = variant(rep, x, f"local{steps}", {**rep.key(), "settings": asdict(x)}, started, store)
        rows.append({"local_steps": steps, "rounds": x.rounds, **variant_row(fed, scored, rep.sites)})
    return rows


def momentum_rows(
    rep: Replicate, s: Settings, momenta: list[float], main: dict[str, Any], started: float, store: Path | None
) -> list[dict]:
    """Federated U-Harmony with server momentum (FedAvgM) at each value, everything else the main row's (momentum 0
    is that row: FedAvgM without momentum is plain averaging)."""
    rows = []
    for m in momenta:
        if m == 0:
            fed, scored = main["federations"][OURS], main["scored"][OURS]
        else:
            key = {**rep.key(), "server_momentum": m}
            fed, scored = variant(rep, s, f"momentum{m:g}", key, started, store, m)
        rows.append({"server_momentum": m, **variant_row(fed, scored, rep.sites)})
    return rows


def central_variant(rep: Replicate, lr: float, started: float, store: Path | None, jobs: int) -> Scored:
    """Centralized U-Harmony (as many optimizer steps as all sites together) at peak rate `lr`, stored as
    `{replicate}-central-lr{lr}`: its scored test cases."""
    name = f"{rep.name}-central-lr{lr:g}"
    key = {**rep.key(), "central_lr": lr}
    kept = replicate_store.load(store, name, key)
    if kept is not None:
        return replicate_store.scored_from_json(kept["scored"])
    config = rep.training(f"{CENTRAL}-lr{lr:g}", "uharmony", rep.train, rep.site_steps * len(rep.sites), lr=lr)
    run_all([config], jobs, lambda j, _r: log(f"{rep.name} {j.out.name} trained", started))
    job = ScoreJob(config.out, rep.test, False, CENTRAL, rep.r, rep.folder / "scores" / f"{config.out.name}.json")
    scored = merged(run_all([job], 1, lambda _j, _r: None), CENTRAL, rep.r)
    replicate_store.save(store, name, key, {"scored": replicate_store.scored_to_json(scored)})
    return scored


def lr_rows(
    rep: Replicate, s: Settings, rates: list[float], main: dict[str, Any], started: float, store: Path | None, jobs: int
) -> list[dict]:
    """Federated U-Harmony and centralized U-Harmony at each peak learning rate, everything else the main rows' (the
    replicate's own rates are those rows), so that each arm's rate is chosen on development data and the goal's gap
    is read between arms at their best. Averaging the sites' displacements advances the model about as far as one
    site's sequential steps, a fraction (1 / sites) of what pooled training covers in as many optimizer steps; a
    larger rate may make up part."""
    rows = []
    for lr in rates:
        if lr == rep.rates.federated:
            fed, scored = main["federations"][OURS], main["scored"][OURS]
        else:
            fed, scored = variant(rep, s, f"lr{lr:g}", {**rep.key(), "lr": lr}, started, store, lr=lr)
        central = main["scored"][CENTRAL] if lr == rep.rates.central else central_variant(rep, lr, started, store, jobs)
        row = {"lr": lr, **variant_row(fed, scored, rep.sites)}
        per_site = site_means(central, rep.sites)
        pooled = mean_of(list(per_site.values()))
        row["centralized"] = {"dice_mean": pooled, "per_site": {k: mean_of([v]) for k, v in per_site.items()}}
        row["gap_to_centralized"] = None if None in (row["dice_mean"], pooled) else round(row["dice_mean"] - pooled, 4)
        rows.append(row)
    return rows


def notes(final: bool, replicates: dict[str, int]) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in replicates.items())
    return [
        f"Replicates per scenario: {counts} (the protocol lists {PROTOCOL.replicates}): replicate r trains on a "
        "fresh draw from training_seeds[r], which also seeds every training and federation, and is scored on a "
        f"fresh draw from the r-th {'test' if final else 'development'} seed"
        + ("" if final else " (not a final run: development figures)")
        + ".",
        "Comparisons pair federated_uharmony with another arm case by case within each replicate (b - a) with a "
        "hierarchical bootstrap 95 % CI (replicates, then cases); per_site repeats it on each site's cases. "
        "goal.met: the mean gap to a centralized U-Harmony arm is within 0.03 Dice; goal.shown: the CI's lower bound "
        "is. centralized_uharmony trains rounds x local steps x sites steps of the federation's batch (as many "
        "optimizer steps as all sites together, 4x a site's sequential steps); centralized_uharmony_wide trains "
        "rounds x local steps steps of sites x that batch (a federation's sequential steps and patches).",
        "dice_per_round: every eval_every rounds each site scores the round's model (received backbone and its own "
        "rows, the site named, one pass) on its own validation cases (val_fraction of its cases, held out of every "
        "arm's training); the mean over sites, then over replicates. A site's model exists only at the site, so "
        "there is no server-side curve. Each site keeps its AdamW state between rounds and follows one one-cycle "
        "schedule; federated U-Harmony trains residual site rows. FedProx's proximal weight is the CLI default.",
    ]


def plot_rounds(figures: list[dict[str, Any]], out: Path) -> None:
    """Dice on the sites' validation cases against rounds, one panel per scenario; centralized test Dice as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(5.2 * len(figures), 3.6), squeeze=False)
    for ax, scenario in zip(axes[0], figures):
        for row in scenario["rows"]:
            curve = row.get("dice_per_round")
            if curve:
                ax.plot([p["round"] for p in curve], [p["dice"] for p in curve], marker="o", label=row["method"])
        for row, style in zip(scenario["rows"][:2], ("--", ":")):  # the two centralized arms
            if row["dice_mean"] is not None:
                ax.axhline(row["dice_mean"], color="k", ls=style, lw=1, label=f"{row['method']} (test)")
        ax.set(title=scenario["scenario"], xlabel="round", ylabel="whole-lesion Dice (validation)", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a miniature run (one scenario, one replicate)")
    ap.add_argument("--out", type=Path, help="JSON figures (default docs/results/federated.json; quick: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/uharmony-federated-bench"), help="data and models")
    ap.add_argument(
        "--store",
        type=Path,
        help="finished replicates kept here and reused by the next run (default docs/results/federated_replicates; "
        "quick: none)",
    )
    ap.add_argument("--scenarios", nargs="+", default=None, help="(protocols annotation; quick: protocols)")
    ap.add_argument(
        "--replicates",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="replicates of each scenario, in --scenarios order; one number: every scenario's (3; quick: 1)",
    )
    ap.add_argument(
        "--local-steps-sweep",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="federated U-Harmony again at each N local steps, rounds x local steps kept (e.g. 5 25 100)",
    )
    ap.add_argument(
        "--server-momentum-sweep",
        type=float,
        nargs="+",
        default=[],
        metavar="M",
        help="federated U-Harmony again with FedAvgM at each server momentum M in [0, 1) (e.g. 0.6 0.9)",
    )
    ap.add_argument(
        "--lr-sweep",
        type=float,
        nargs="+",
        default=[],
        metavar="LR",
        help="federated and centralized U-Harmony again at each peak learning rate LR (first replicate)",
    )
    ap.add_argument(
        "--federated-lr",
        type=float,
        default=Federation.lr,
        metavar="LR",
        help=f"every federation's peak learning rate (the contract's {Federation.lr:g})",
    )
    ap.add_argument(
        "--central-lr",
        type=float,
        default=TrainConfig.lr,
        metavar="LR",
        help=f"the centralized and local-only models' peak learning rate (uharmony train's {TrainConfig.lr:g})",
    )
    ap.add_argument("--jobs", type=int, default=2, help="single-threaded trainings and scorings side by side (2)")
    ap.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    args = ap.parse_args()
    if args.quick and args.final:
        ap.error("--quick never uses the test seeds: drop --final")
    if any(n < 1 for n in args.local_steps_sweep):
        ap.error("--local-steps-sweep: each number of local steps must be at least 1")
    if any(not 0 <= m < 1 for m in args.server_momentum_sweep):
        ap.error("--server-momentum-sweep: each momentum must be in [0, 1)")
    for flag, values in (("--lr-sweep", args.lr_sweep), ("--federated-lr", [args.federated_lr]),
                         ("--central-lr", [args.central_lr])):  # fmt: skip
        if any(not 0 < lr <= 1 for lr in values):
            ap.error(f"{flag}: each learning rate must be in (0, 1]")
    s = QUICK if args.quick else FULL
    scenarios = args.scenarios or (["protocols"] if args.quick else ["protocols", "annotation"])
    counts = args.replicates or [1 if args.quick else 3]
    if len(counts) not in (1, len(scenarios)) or min(counts) < 1:
        ap.error(f"--replicates: one count, or one per scenario ({len(scenarios)}), each at least 1")
    replicates = dict(zip(scenarios, counts * len(scenarios) if len(counts) == 1 else counts))
    for scenario in scenarios:
        resolve_scenario(scenario)  # an unknown name fails before any work
    out = args.out or (None if args.quick else ROOT / "docs" / "results" / "federated.json")
    store = args.store or (None if args.quick else ROOT / "docs" / "results" / "federated_replicates")
    if out is not None:
        check_writable(out)
    torch.set_num_threads(1)
    work = args.work / ("quick" if args.quick else "full")
    check_work(work, {**asdict(s), "final": args.final})
    chosen = Rates(args.federated_lr, args.central_lr)
    started = time.perf_counter()
    figures: list[dict[str, Any]] = []
    scored: list[Scored] = []
    first: tuple[Replicate, dict[str, Any]] | None = None
    for scenario in scenarios:
        reps_info = [Replicate(work, scenario, r, s, args.final, chosen) for r in range(replicates[scenario])]
        reps = [run_replicate(rep, s, args.jobs, started, store) for rep in reps_info]
        figures.append(scenario_figures(scenario, reps, reps_info[0].sites))
        scored += [replace(x, arm=f"{scenario}/{x.arm}") for r in reps for x in r["scored"].values()]
        first = first or (reps_info[0], reps[0])
    sweep = []  # last: every scenario's main figures come first
    if args.local_steps_sweep and first is not None:
        sweep = sweep_rows(first[0], s, args.local_steps_sweep, first[1], started, store)
    momentum = []
    if args.server_momentum_sweep and first is not None:
        momentum = momentum_rows(first[0], s, args.server_momentum_sweep, first[1], started, store)
    rates = lr_rows(first[0], s, args.lr_sweep, first[1], started, store, args.jobs) if args.lr_sweep and first else []
    cases = None if out is None else write_case_scores(out, PROTOCOL, args.final, scored)
    plot = None
    if out is not None:
        plot = out.with_name(out.stem + "_rounds.png")
        plot_rounds(figures, plot)
    doc = {
        "scenarios": figures,
        "evaluation": "test" if args.final else "development",
        "protocol": PROTOCOL.to_json(),
        "replicates": replicates,
        "case_scores": None if cases is None else cases.name,
        "rounds_plot": None if plot is None else plot.name,
        "local_steps_sweep": sweep,
        "server_momentum_sweep": momentum,
        "lr_sweep": rates,
        "settings": asdict(s),
        "rates": asdict(chosen),
        "runtime": "Flower simulation (Ray, two sites at a time), one torch thread per process",
        "store": None if store is None else store.as_posix().replace(ROOT.as_posix() + "/", ""),
        "command": " ".join(["python", "benchmarks/federated.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - started, 1),
        "notes": notes(args.final, replicates),
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if out is not None:
        write_text_atomic(out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
