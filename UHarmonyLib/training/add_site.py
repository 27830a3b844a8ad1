"""Adding a site to a trained bundle from a few annotated cases (`uharmony add-site`).

The parent bundle is read, never written. The child network gets the new site's
harmony columns, head and gate row, started from the gate-weighted mix of the known
sites (the parent gate's average opinion of the new cases). With the backbone frozen
only the new site's rows learn: an old site's rows receive exactly zero gradient under
one-hot site weights and no weight decay, so its results with the site named stay
bit-identical. The gate is retrained on vectors alone: the parent's bank of old-site
signatures plus the new cases' windows, so old sites stay recognized without their
images.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from UHarmonyLib.data.cases import LoadedCase, PlannedCase, load_case
from UHarmonyLib.data.names import SITE_NAME, SITE_NAME_RULE
from UHarmonyLib.data.plan import PALETTE, Plan, Site, plan_training
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.validation import evaluate
from UHarmonyLib.inference.device import resolve_device, resolve_precision
from UHarmonyLib.inference.signatures import build_bank
from UHarmonyLib.model.card import DEFAULT_INFERENCE
from UHarmonyLib.model.signature_bank import SignatureBank, standardize
from UHarmonyLib.model.weights import Bundle, load_bundle, make_card, save_bundle
from UHarmonyLib.nn.gate_network import DomainGate
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.progress import Reporter, SilentReporter
from UHarmonyLib.training.growth import grow, site_parameters
from UHarmonyLib.training.patches import PreparedCase, prepare_case
from UHarmonyLib.training.sampling import PatchSampler
from UHarmonyLib.training.steps import segmentation_steps

GATE_STEPS = 400


@dataclass
class AddSiteConfig:
    model: Path
    data: Path
    site: str
    out: Path
    steps: int = 150
    train_backbone: bool = False
    new_labels: list[str] = field(default_factory=list)
    lr: float = 2e-3
    batch_size: int = 2
    seed: int = 0
    val_fraction: float = 0.2
    device: str = "auto"
    precision: str = "auto"
    command: str = ""


def _refuse_early(config: AddSiteConfig, parent: Bundle) -> None:
    """One-line refusals that need only the card and the paths."""
    if config.out.exists():
        raise InputError(f"{config.out}: already exists; choose a new bundle folder (bundles are never overwritten)")
    if not config.out.parent.is_dir():
        raise InputError(f"{config.out}: parent folder {config.out.parent} does not exist")
    if config.out.resolve() == parent.path.resolve():
        raise InputError(f"{config.out}: is the parent bundle; the parent is never modified")
    if not SITE_NAME.fullmatch(config.site):
        raise InputError(f"--site {config.site!r}: {SITE_NAME_RULE}")
    if config.site in parent.site_names:
        raise InputError(f"--site {config.site!r}: {parent.path} already has a site of that name")
    if config.steps < 1:
        raise InputError(f"--steps must be at least 1, got {config.steps}")
    if not parent.config.gated_heads or parent.config.norm == "instance":
        raise InputError(f"{parent.path}: a {parent.config.norm} model without site layers cannot take a new site")
    if parent.bank is None:
        raise InputError(f"{parent.path}: has no gate bank (written by an older version); retrain it to add sites")
    known = {lab["name"] for lab in parent.labels}
    clash = [n for n in config.new_labels if n in known]
    if clash:
        raise InputError(f"--new-label {clash[0]!r}: {parent.path} already has that label")


def _plan(config: AddSiteConfig, parent: Bundle) -> Plan:
    """The local cases in the parent's channel and label spaces, all belonging to the new site."""
    plan = plan_training([config.data], config.val_fraction, config.seed, parent.card["channels"], parent.labels)
    extra_channels = plan.channels[len(parent.channel_names) :]
    if extra_channels:
        raise InputError(
            f"{config.data}: channel '{extra_channels[0]}' is not a channel of the model "
            f"({', '.join(parent.channel_names)})"
        )
    extra = plan.label_names[len(parent.labels) :]
    unexpected = [n for n in extra if n not in config.new_labels]
    if unexpected:
        raise InputError(
            f"{config.data}: label '{unexpected[0]}' is not a label of the model "
            f"({', '.join(lab['name'] for lab in parent.labels)}); add it with --new-label"
        )
    unused = [n for n in config.new_labels if n not in extra]
    if unused:
        raise InputError(f"--new-label {unused[0]!r}: no case of {config.data} annotates it")
    site_index = len(parent.site_names)
    cases = list(range(len(plan.cases)))
    for c in plan.cases:
        c.site = site_index
    held = [i for s in plan.sites for i in s.val]
    new = Site(config.site, plan.datasets[0]["path"], cases, [i for i in cases if i not in held], held)
    plan.sites = [Site(n, "(parent bundle)") for n in parent.site_names] + [new]
    for k, lab in enumerate(plan.labels[len(parent.labels) :], start=len(parent.labels)):
        lab["color"] = lab.get("color") or PALETTE[k % len(PALETTE)]
    return plan


def _mix(parent: Bundle, images: list[torch.Tensor], patch: tuple[int, ...]) -> torch.Tensor:
    """The parent gate's average site probabilities over the new cases' windows (foreground-weighted)."""
    bank = build_bank(parent.net.gate, images, [0] * len(images), patch, float(DEFAULT_INFERENCE["overlap"]))
    with torch.no_grad():
        probs = torch.softmax(parent.net.gate.classify(bank.vectors), dim=1)
    w = bank.weights + 1e-3
    return (probs * w[:, None]).sum(0) / w.sum()


def fit_gate(gate: DomainGate, bank: SignatureBank, seed: int) -> dict[str, float]:
    """Retrain the gate's classifier on bank vectors only (site-balanced); returns accuracy per site."""
    torch.manual_seed(seed)
    x = torch.as_tensor(standardize(gate, bank.vectors), dtype=torch.float32)
    y = bank.sites.long()
    gate.classifier.requires_grad_(True)
    counts = torch.bincount(y, minlength=gate.num_sites).clamp(min=1).float()
    weight = (1.0 / counts)[y] * (bank.weights + 1e-3)
    opt = torch.optim.Adam(gate.classifier.parameters(), lr=3e-3)
    gate.train()
    for _ in range(GATE_STEPS):
        loss = (F.cross_entropy(gate.classifier(x), y, reduction="none") * weight).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gate.eval()
    gate.classifier.requires_grad_(False)
    with torch.no_grad():
        hit = (gate.classifier(x).argmax(1) == y).float()
    return {str(s): round(float(hit[y == s].mean()), 4) for s in range(gate.num_sites) if (y == s).any()}


def add_site(config: AddSiteConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Grow, fine-tune and write the child bundle; returns the result payload."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    parent = load_bundle(config.model)
    _refuse_early(config, parent)
    plan = _plan(config, parent)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device, parent.config.backbone)
    precision = str(dtype).replace("torch.", "")
    patch = tuple(int(p) for p in parent.inference["patch_size"])
    loaded = {i: load_case(c, len(parent.channel_names)) for i, c in enumerate(plan.cases)}
    new_site = plan.sites[-1]
    new_index = len(parent.site_names)
    prepared = [
        prepare_case(loaded[i], parent.preprocessing, patch, parent.channel_names, plan.cases[i].entry.case)
        for i in new_site.train
    ]
    val = [(plan.cases[i], loaded[i]) for i in new_site.val]
    reporter.log(
        f"new site {config.site}: {len(new_site.train)} training and {len(new_site.val)} held-out case(s) "
        f"from {config.data}; channels {', '.join(plan.channels)}"
    )

    mix = _mix(parent, [p.image for p in prepared], patch)
    reporter.log(
        "starting point (parent gate's view of the new cases): "
        + ", ".join(f"{n} {float(p):.2f}" for n, p in zip(parent.site_names, mix))
    )
    net = grow(parent.net, mix, len(config.new_labels)).to(device)
    before = _parent_figures(parent, plan, val, device, precision, reporter)
    seconds = _fine_tune(net, config, plan, prepared, patch, device, dtype, reporter)
    new_vectors = build_bank(
        net.gate, [p.image for p in prepared], [new_index] * len(prepared), patch, float(DEFAULT_INFERENCE["overlap"])
    )
    assert parent.bank is not None  # _refuse_early refused a parent without one
    bank = parent.bank.extended(new_vectors)
    gate_accuracy = fit_gate(net.gate, bank, config.seed)
    bank.calibrate(net.gate)
    net.eval()
    child = _child_card(parent, net, plan, config)
    after = evaluate(net, child, plan, val, device, precision, reporter) if val else None
    child["metrics"] = {
        "site_added": config.site,
        "selection": "held-out cases of the new site" if val else "no held-out case (a site needs 3 or more)",
        "before": before,
        "after": after,
        "gate_bank_accuracy": {n: gate_accuracy.get(str(i)) for i, n in enumerate([*parent.site_names, config.site])},
        "familiar_distance": round(bank.threshold, 4),
    }
    elapsed = time.perf_counter() - started
    child["provenance"] = {**child["provenance"], **_provenance(parent, plan, config, mix, seconds, elapsed)}
    card = child
    path = save_bundle(net, card, config.out, bank)
    payload = {
        "bundle": str(path),
        "parent": str(parent.path),
        "site": config.site,
        "steps": config.steps,
        "seconds": round(time.perf_counter() - started, 3),
        "metrics": card["metrics"],
    }
    reporter.result(payload)
    return payload


def _fine_tune(
    net: UHarmonyNet,
    config: AddSiteConfig,
    plan: Plan,
    prepared: list[PreparedCase],
    patch: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    reporter: Reporter,
) -> float:
    """Train the new site's rows (and the backbone if asked) on patches of the new cases."""
    site = len(plan.sites) - 1
    train_ids = plan.sites[-1].train
    sampler = PatchSampler(
        prepared,
        groups=[plan.cases[i].groups for i in train_ids],
        sites=[site] * len(train_ids),
        num_sites=len(plan.sites),
        patch=patch,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    net.backbone.requires_grad_(config.train_backbone)
    params = site_parameters(net)
    for p in params:
        p.requires_grad_(True)
    trainable = list(net.backbone.parameters()) if config.train_backbone else params
    opt = torch.optim.AdamW([p for p in trainable if p.requires_grad], lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
    weights = F.one_hot(torch.tensor([site] * config.batch_size), len(plan.sites)).float()
    start = time.perf_counter()
    pending: list[float] = []

    def report(step: int, loss: float) -> None:
        pending.append(loss)
        reporter.progress("add-site", step, config.steps)
        if step % 10 == 0 or step == config.steps:
            reporter.log(f"step {step}/{config.steps} segmentation loss {np.mean(pending):.4f}")
            pending.clear()

    segmentation_steps(net, sampler, opt, weights, range(1, config.steps + 1), device, dtype, sched, on_step=report)
    net.requires_grad_(False)
    return time.perf_counter() - start


def _parent_figures(
    parent: Bundle,
    plan: Plan,
    val: list[tuple[PlannedCase, LoadedCase]],
    device: torch.device,
    precision: str,
    reporter: Reporter,
) -> dict[str, Any] | None:
    """The parent model on the held-out new-site cases, its gate deciding: what the hospital had before."""
    if not val or parent.config.site_required:
        return None  # a DSBN parent cannot segment an unnamed site
    figures = evaluate(parent.net, parent.card, plan, val, device, precision, reporter)
    figures.pop("gate_accuracy", None)  # the parent cannot name a site it does not know
    for site in figures["sites"].values():
        site.pop("gate_accuracy", None)
    return figures


def _child_name(config: AddSiteConfig, parent: Bundle) -> tuple[str, int]:
    """The parent's name with a later version: the output folder's `<name>-vN` when it names a later one (the
    Slicer panel picks N above every version it can see), else the parent's version + 1. The name never comes from
    the folder, so a family of versions keeps one name."""
    name, version = str(parent.card["name"]), int(parent.card["version"])
    m = re.fullmatch(rf"{re.escape(name)}-v(\d+)", config.out.name)
    return name, int(m.group(1)) if m and int(m.group(1)) > version else version + 1


def _child_title(parent: Bundle, site: str) -> str:
    """The parent's title with its site count brought up to date, or `+ site` when it has none to update."""
    title = str(parent.card.get("title") or parent.card["name"])
    count = len(parent.card["sites"])
    updated = re.sub(rf"\b{count} sites\b", f"{count + 1} sites", title, count=1)
    return updated if updated != title else f"{title} + {site}"


def _child_card(parent: Bundle, net: UHarmonyNet, plan: Plan, config: AddSiteConfig) -> dict[str, Any]:
    name, version = _child_name(config, parent)
    sites = [
        *parent.card["sites"],
        {**plan.card_sites()[-1], "added_to": f"{parent.card['name']} v{parent.card['version']}"},
    ]
    new_labels = f" and label(s) {', '.join(config.new_labels)}" if config.new_labels else ""
    return make_card(
        net,
        name=name,
        version=version,
        title=_child_title(parent, config.site),
        description=(
            f"{parent.card['name']} v{parent.card['version']} with site '{config.site}'{new_labels} added by "
            f"uharmony add-site from {len(plan.cases)} case(s); "
            + ("backbone fine-tuned too. " if config.train_backbone else "backbone frozen: old sites unchanged. ")
            + parent.card.get("description", "")
        ),
        channels=parent.card["channels"],
        labels=plan.labels,
        sites=sites,
        preprocessing=parent.preprocessing,
        inference={k: v for k, v in parent.inference.items() if k != "familiar_distance"},
    )


def _provenance(
    parent: Bundle, plan: Plan, config: AddSiteConfig, mix: torch.Tensor, train_seconds: float, seconds: float
) -> dict[str, Any]:
    new_site = plan.sites[-1]
    return {
        "command": config.command,
        "parent": {
            "name": parent.card["name"],
            "version": parent.card["version"],
            "card_sha256": parent.card["card_sha256"],
        },
        "site": config.site,
        "data": plan.card_datasets(),
        "train_cases": [plan.cases[i].entry.case for i in new_site.train],
        "validation_cases": [plan.cases[i].entry.case for i in new_site.val],
        "initial_site_mix": {n: round(float(p), 4) for n, p in zip(parent.site_names, mix)},
        "train_backbone": config.train_backbone,
        "new_labels": config.new_labels,
        "seed": config.seed,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "learning_rate": config.lr,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(seconds, 1),
    }
