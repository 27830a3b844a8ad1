"""The benchmark's units of work (train a bundle, add a site, fine-tune, score a model), run one by one or in a
pool of single-threaded worker processes.

Small 3-D U-Nets use two CPU threads poorly (1.45x one thread's speed, measured on this project's 2-core
machine), so two independent jobs side by side on one thread each finish sooner than the same jobs one after
another on two threads. Every job reads its inputs from files and writes its result as a file that appears
whole or not at all (a bundle, a scores JSON), so a killed run keeps what it finished and a rerun reuses it.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from protocol import EvalCase, EvalSet, Scored, load_tests, score_bundle

from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.inference.device import resolve_device, resolve_precision
from UHarmonyLib.model.card import read_card
from UHarmonyLib.model.weights import load_bundle, make_card, save_bundle
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.add_site import AddSiteConfig, add_site
from UHarmonyLib.training.loop import train_run
from UHarmonyLib.training.patches import prepare_case
from UHarmonyLib.training.sampling import PatchSampler
from UHarmonyLib.training.steps import segmentation_steps


@dataclass(frozen=True)
class FineTune:
    """Every weight of a plain joint model fine-tuned on a new site's cases with add-site's optimizer and sampler."""

    model: Path
    data: Path
    out: Path
    steps: int
    lr: float
    batch_size: int
    seed: int
    device: str
    description: str


@dataclass(frozen=True)
class ScoreJob:
    """One model on one evaluation set (optionally some sites, or the first cases of each site)."""

    model: Path
    data: Path
    given: bool
    arm: str
    replicate: int
    out: Path  # the records, as JSON
    sites: tuple[str, ...] = ()
    per_site: int = 0  # 0: every case
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into every record (add-site: cases, draw)


Job = TrainConfig | AddSiteConfig | FineTune | ScoreJob


def fine_tune(job: FineTune) -> dict[str, Any]:
    """The fine-tuning alternative to add-site: a new bundle whose every weight trained on the new cases."""
    device = resolve_device(job.device)
    parent = load_bundle(job.model, device)
    net = parent.net
    plan = plan_training([job.data], 0.0, 0, parent.card["channels"], parent.labels)
    patch = tuple(int(p) for p in parent.inference["patch_size"])
    prepared = [prepare_case(load_case(c, len(plan.channels)), parent.preprocessing, patch) for c in plan.cases]
    sampler = PatchSampler(
        prepared, [c.groups for c in plan.cases], [0] * len(prepared), 1, patch, job.batch_size, seed=job.seed
    )
    opt = torch.optim.AdamW(net.parameters(), lr=job.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=job.lr, total_steps=job.steps)
    weights = torch.zeros(job.batch_size, net.config.num_sites)  # the instance net has no site layers
    net.requires_grad_(True)
    started = time.perf_counter()
    steps = range(1, job.steps + 1)
    segmentation_steps(net, sampler, opt, weights, steps, device, resolve_precision("auto", device), sched)
    seconds = time.perf_counter() - started
    net.eval()
    card = make_card(
        net,
        name=job.out.name,
        version=1,
        description=job.description,
        channels=parent.card["channels"],
        labels=parent.labels,
        sites=parent.card["sites"],
        preprocessing=parent.preprocessing,
        inference=parent.inference,
    )
    save_bundle(net, card, job.out, parent.bank)
    return {"steps": job.steps, "seconds": seconds, "seconds_per_step": round(seconds / job.steps, 4)}


@lru_cache(maxsize=8)
def _tests(data: Path) -> EvalSet:
    return load_tests(data)


def _subset(tests: EvalSet, sites: tuple[str, ...], per_site: int) -> EvalSet:
    cases: list[EvalCase] = []
    seen: dict[str, int] = {}
    for c in tests.cases:
        if sites and c.site not in sites:
            continue
        seen[c.site] = seen.get(c.site, 0) + 1
        if not per_site or seen[c.site] <= per_site:
            cases.append(c)
    return EvalSet(tests.channels, tests.labels, cases)


def score(job: ScoreJob) -> Scored:
    """A scoring job's records (read back when an earlier run wrote them)."""
    if job.out.is_file():
        doc = json.loads(job.out.read_text(encoding="utf-8"))
        return Scored(doc["arm"], doc["replicate"], doc["records"], doc["gate_accuracy"])
    tests = _subset(_tests(job.data), job.sites, job.per_site)
    scored = score_bundle(job.model, tests, job.given, resolve_device(job.device), job.arm, job.replicate)
    scored.records = [{**r, **job.extra} for r in scored.records]
    doc = {"arm": scored.arm, "replicate": scored.replicate, "records": scored.records}
    write_text_atomic(job.out, json.dumps({**doc, "gate_accuracy": scored.gate_accuracy}))
    return scored


def do(job: Job) -> Any:
    """Run one job; bundle jobs return their timing (steps, seconds, seconds_per_step)."""
    if isinstance(job, ScoreJob):
        return score(job)
    if isinstance(job, FineTune):
        return fine_tune(job)
    if isinstance(job, AddSiteConfig):
        seconds = add_site(job)["seconds"]
        tuning = read_card(job.out)["provenance"]["train_seconds"]
        return {"steps": job.steps, "seconds": seconds, "seconds_per_step": round(tuning / job.steps, 4)}
    return train_run(job)


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_all(jobs: Sequence[Job], workers: int, done: Callable[[Job, Any], None]) -> list[Any]:
    """Every job, in `workers` single-threaded processes (in this process when 1); `done` hears each as it ends,
    in submission order. Results come back in submission order."""
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(do(job))
            done(job, out[-1])
        return out
    context = multiprocessing.get_context("spawn")  # forked torch thread pools can deadlock
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(do, job) for job in jobs]
        results = []
        for job, future in zip(jobs, futures):
            results.append(future.result())
            done(job, results[-1])
    return results
