"""The training run: data -> network -> steps with checkpoints and validation -> bundle.

Loss per batch: Dice + cross-entropy on the segmentation (marginalized per case over its
label groups) + `gate_weight` x cross-entropy of the domain gate against the true site.
The harmony layers and gated heads get one-hot weights of the true site (the instance
baseline has neither, so it ignores them). The best validated weights (mean whole-lesion
Dice over sites) become the bundle; without held-out cases the last weights do.

Where the cases live (`--data-mode`, case_stream.py), who cuts the patches (`--workers`,
batch_stream.py) and how many processes share each batch (torchrun, distributed.py) never
change the batches, the losses or the weights beyond float rounding.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from UHarmonyLib.data.cases import LoadedCase, load_case, model_spacing
from UHarmonyLib.data.harmonization_fit import fit_on_cases
from UHarmonyLib.data.plan import Plan, PlannedCase, plan_training
from UHarmonyLib.data.template import MNI_NOTICE
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.validation import evaluate
from UHarmonyLib.inference.device import autocast, resolve_device, resolve_precision
from UHarmonyLib.inference.signatures import build_bank
from UHarmonyLib.model.card import DEFAULT_INFERENCE
from UHarmonyLib.model.signature_bank import SignatureBank
from UHarmonyLib.model.weights import make_card, save_bundle, unique_state
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.progress import Reporter, SilentReporter
from UHarmonyLib.training.batch_stream import training_batches
from UHarmonyLib.training.case_stream import (
    CaseReader,
    Lazy,
    checked_spacings,
    draw_weights,
    scan_cases,
    streamed_cases,
)
from UHarmonyLib.training.checkpoint import (
    Checkpoint,
    checkpoints,
    load_checkpoint,
    newest_meta,
    remove_stale,
    save_checkpoint,
)
from UHarmonyLib.training.config import TrainConfig
from UHarmonyLib.training.distributed import World
from UHarmonyLib.training.losses import MarginalDiceCELoss
from UHarmonyLib.training.patches import PreparedCase, prepare_case
from UHarmonyLib.training.sampling import Batch, PatchSampler
from UHarmonyLib.training.site_sharing import fold_site_rows, share_site_rows

INTENSITY = {"method": "zscore", "nonzero": True}


def _check_paths(config: TrainConfig) -> None:
    """Refuse an unusable output or an unfinished run that would be silently thrown away."""
    out = config.out
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new bundle folder (bundles are never overwritten)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: parent folder {parent} is not writable")
    if checkpoints(config.work_dir) and not config.resume:
        raise InputError(
            f"{config.work_dir}: holds an unfinished run; add --resume to continue it, or delete the folder to restart"
        )


def _preprocessing(config: TrainConfig, spacings: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    """The model grid: the given spacing, or the cases' median one."""
    if config.spacing is not None:
        spacing = [float(s) for s in config.spacing]
    else:
        spacing = [round(float(s), 4) for s in np.median(np.array(spacings), axis=0)]
    return {"orientation": "RAS", "spacing": spacing, "intensity": dict(INTENSITY)}


def _network(config: TrainConfig, plan: Plan) -> UHarmonyNet:
    """The network to train; with residual site parameters, its site rows are shared + offset until saved."""
    torch.manual_seed(config.seed)
    net = UHarmonyNet(
        NetworkConfig(
            in_channels=len(plan.channels),
            out_channels=len(plan.labels) + 1,
            num_sites=len(plan.sites),
            backbone=config.backbone,
            norm=config.norm,
            filters=config.filters,
            feature_size=config.feature_size,
            degree=config.restore_degree,
            gated_heads=config.norm != "instance",  # the instance baseline is plain joint training
        )
    )
    if config.site_params == "residual":
        share_site_rows(net)
    return net


def _card(
    net: UHarmonyNet,
    config: TrainConfig,
    plan: Plan,
    preprocessing: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    name, version = config.bundle_name
    sites = ", ".join(s.name for s in plan.sites)
    description = (
        f"{config.norm} {config.backbone} trained by uharmony train on {len(plan.cases)} cases from "
        f"{len(plan.sites)} site(s) ({sites}); datasets: {', '.join(d['name'] for d in plan.datasets)}."
    )
    if any(d["mni_template"] for d in plan.datasets):
        description += " Trained on images derived from the " + MNI_NOTICE
    return make_card(
        net,
        name=name,
        version=version,
        title=f"{name} ({config.norm}, {len(plan.sites)} sites, {', '.join(plan.channels)})",
        description=description,
        channels=[{"name": c, "modality": m} for c, m in zip(plan.channels, plan.modalities)],
        labels=plan.labels,
        sites=plan.card_sites(),
        preprocessing=preprocessing,
        inference={**DEFAULT_INFERENCE, "patch_size": list(config.patch), "batch_size": config.batch_size},
        provenance=provenance,
        metrics=metrics,
    )


def segmentation_loss(loss_fn: MarginalDiceCELoss, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Marginal Dice+CE, one term per distinct label grouping in the batch, weighted by its samples."""
    chunks: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i, case_groups in enumerate(batch.groups):
        chunks.setdefault(tuple(tuple(g) for g in case_groups), []).append(i)
    total = logits.new_zeros((), dtype=torch.float32)
    for groups, idx in chunks.items():
        sel = torch.as_tensor(idx, device=logits.device)
        total = total + loss_fn(logits[sel], batch.target[sel], groups) * len(idx)
    return total / len(batch.groups)


def _load_state(net: UHarmonyNet, state: dict[str, torch.Tensor], where: Path) -> None:
    expected = unique_state(net)
    if set(expected) != set(state) or any(state[k].shape != expected[k].shape for k in expected):
        raise InputError(f"{where}: checkpoint weights do not fit this network")
    net.load_state_dict(state, strict=False)


class Trainer:
    """One training process (fresh or resumed): the network, its optimizer and the run's progress."""

    def __init__(self, config: TrainConfig, reporter: Reporter, world: World, device: torch.device) -> None:
        self.config = config
        self.reporter = reporter
        self.world = world
        self.plan = plan_training(config.data, config.val_fraction, config.seed)
        names = [s.name for s in self.plan.sites]
        unknown = next((k for k in config.site_weights if k not in names), None)
        if unknown is not None:
            raise InputError(f"--site-weight {unknown}: no such site in the data (sites: {', '.join(names)})")
        self.device = device
        self.dtype = resolve_precision(config.precision, self.device, config.backbone)
        self.precision = str(self.dtype).replace("torch.", "")
        train_ids, val_ids = self.plan.train_cases(), self.plan.val_cases()
        self.total = config.total_steps(len(train_ids))
        self.val_every = config.val_every or math.ceil(self.total / 5)
        t = time.perf_counter()
        stream = config.data_mode == "stream"
        if stream:  # every case read once (shared among ranks), then dropped
            mine = list(range(len(self.plan.cases)))[world.rank :: world.size]
            found = world.gather_objects(scan_cases(self.plan, mine, config.workers))
            spacings = checked_spacings({i: r for part in found for i, r in part.items()})
            read: Callable[[int], LoadedCase] = CaseReader(self.plan)
        else:  # every case read once and kept (silent: a bad file is still a one-line error)
            loaded = {i: load_case(case, len(self.plan.channels)) for i, case in enumerate(self.plan.cases)}
            spacings = [model_spacing(c.images, "RAS") for c in loaded.values()]
            read = loaded.__getitem__
        self.preprocessing = _preprocessing(config, spacings)
        reporter.log(
            f"{len(self.plan.sites)} site(s) ({', '.join(s.name for s in self.plan.sites)}), "
            f"channels {', '.join(self.plan.channels)}, labels {', '.join(self.plan.label_names)}; "
            f"{len(train_ids)} training and {len(val_ids)} validation cases, read in {time.perf_counter() - t:.1f} s"
        )
        if config.harmonize is not None:
            t, method = time.perf_counter(), config.harmonize
            self.preprocessing["harmonize"] = world.from_main(lambda: fit_on_cases(method, self.plan, train_ids, read))
            reporter.log(
                f"{config.harmonize} harmonization fitted on the training cases in {time.perf_counter() - t:.1f} s"
            )
        sites = [self.plan.cases[i].site for i in train_ids]
        site_weights = [config.site_weights.get(n, 1.0) for n in names]
        prepared: Sequence[PreparedCase]
        self.val_cases: Sequence[tuple[PlannedCase, LoadedCase]]
        if stream:
            weights = draw_weights(sites, site_weights)
            prepared = streamed_cases(
                self.plan, train_ids, weights, self.preprocessing, config.patch, config.cache_cases, config.workers
            )
            self.val_cases = Lazy(len(val_ids), lambda k: (self.plan.cases[val_ids[k]], read(val_ids[k])))
        else:
            channels = self.plan.channels
            prepared = [
                prepare_case(read(i), self.preprocessing, config.patch, channels, self.plan.cases[i].entry.case)
                for i in train_ids
            ]
            self.val_cases = [(self.plan.cases[i], read(i)) for i in val_ids]
        self.sampler = PatchSampler(
            prepared,
            groups=[self.plan.cases[i].groups for i in train_ids],
            sites=sites,
            num_sites=len(self.plan.sites),
            patch=config.patch,
            batch_size=config.batch_size,
            seed=config.seed,
            channel_dropout=config.channel_dropout,
            site_weights=site_weights,
            present=[sorted(self.plan.cases[i].channels) for i in train_ids],
        )
        self.net = _network(config, self.plan).to(self.device)
        self.model: torch.nn.Module = self.net  # what the steps call: DDP around it when distributed, compiled
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=config.lr, total_steps=self.total)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.loss_fn = MarginalDiceCELoss()
        self.step = 0
        self.saved_step = 0
        self.best: dict[str, Any] | None = None  # score, step, metrics
        self.best_state: dict[str, torch.Tensor] | None = None
        self.loss_curve: list[list[float]] = []
        self.pending: list[list[float]] = []  # (segmentation, gate, lr) of steps since the last loss log
        self.seconds = 0.0  # training compute, summed over resumes
        self.step_seconds: list[float] = []  # this process only
        self.stop_requested = False  # set by Ctrl-C: checkpoint after the current step, then stop
        self.resumed_from: list[int] = []

    # ------------------------------------------------------------ start

    def start(self) -> None:
        """Continue from the newest checkpoint when resuming, else fit the gate's scaler once (rank 0: DDP sends it)."""
        work = self.config.work_dir
        ckpt = load_checkpoint(work) if self.config.resume else None
        if work.is_dir() and self.world.main:
            remove_stale(work)
        if ckpt is not None:
            self.restore(ckpt)
            was = int(ckpt.meta.get("world_size", 1))
            size = f"; it ran in {was} processes, now {self.world.size}" if was != self.world.size else ""
            self.reporter.log(f"resumed from step {ckpt.step} of {self.total} ({ckpt.path}){size}")
        else:
            if self.config.resume:
                self.reporter.log(f"no checkpoint in {work}; starting from step 0")
            if self.world.main:
                patches = self.sampler.scaler_patches(self.config.scaler_patches)
                with torch.no_grad():
                    feats = torch.cat([self.net.gate.features(p.to(self.device)) for p in patches])
                self.net.gate.fit_scaler(feats)
        if self.world.active:
            self.model = self.world.wrap(self.net)
        if self.config.compile:  # the steps call the compiled wrapper; weights are read and written on self.net
            from UHarmonyLib.training.compiling import CompiledStep  # imports torch._dynamo (seconds)

            self.model = CompiledStep(self.model)

    def restore(self, ckpt: Checkpoint) -> None:
        stored = ckpt.meta.get("config", {})
        current = json.loads(json.dumps(self.config.training_fields()))
        diff = next((k for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)), None)
        if diff is not None:
            raise InputError(
                f"{ckpt.path}: made with different settings ({diff}: {stored.get(diff)!r}, now {current.get(diff)!r}); "
                "rerun the original command with --resume, or delete the folder to restart"
            )
        if [d["sha256"] for d in ckpt.meta.get("datasets", [])] != [d["sha256"] for d in self.plan.datasets]:
            raise InputError(f"{ckpt.path}: a dataset.json changed since the run started; delete the folder to restart")
        if ckpt.meta.get("total_steps") != self.total:
            raise InputError(f"{ckpt.path}: the run had {ckpt.meta.get('total_steps')} steps, now {self.total}")
        _load_state(self.net, {k: v.to(self.device) for k, v in ckpt.model.items()}, ckpt.path)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.meta["scheduler"])
        if ckpt.meta.get("grad_scaler"):
            self.scaler.load_state_dict(ckpt.meta["grad_scaler"])
        if ckpt.rng is not None:
            torch.set_rng_state(ckpt.rng)
        self.step = self.saved_step = ckpt.step
        self.best = ckpt.meta.get("best")
        self.best_state = ckpt.best_model
        self.loss_curve = ckpt.meta.get("loss_curve", [])
        self.pending = ckpt.meta.get("pending_losses", [])
        self.seconds = float(ckpt.meta.get("seconds", 0.0))
        self.resumed_from = [*ckpt.meta.get("resumed_from", []), ckpt.step]

    # ------------------------------------------------------------ steps

    def train_step(self, step: int, batch: Batch) -> tuple[float, float, float]:
        """One optimizer step on `batch` (this rank's share of the step's batch); returns (segmentation loss,
        gate loss, learning rate used), of the whole batch."""
        x = batch.image.to(self.device)
        batch.target = batch.target.to(self.device)
        sites = batch.sites.to(self.device)
        weights = F.one_hot(sites, len(self.plan.sites)).float()
        with autocast(self.device, self.dtype):
            logits, gate_logits = self.model(x, weights)
        if self.world.active:  # the whole batch's loss on every rank, this rank's slice in the graph
            draws = self.sampler.draws(step)
            sites = torch.as_tensor([self.sampler.case_sites[d.case] for d in draws], device=self.device)
            logits, gate_logits = self.world.gather_live(logits), self.world.gather_live(gate_logits)
            target = self.world.gather_live(batch.target)
            batch = Batch(x, target, sites, [self.sampler.groups[d.case] for d in draws])
        seg = segmentation_loss(self.loss_fn, logits.float(), batch)
        gate = F.cross_entropy(gate_logits.float(), sites)
        loss = seg + self.config.gate_weight * gate
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * self.world.size).backward()  # DDP averages over ranks (distributed.py)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(seg.detach()), float(gate.detach()), lr

    def card(self, provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return _card(self.net, self.config, self.plan, self.preprocessing, provenance, metrics)

    def validate(self, step: int) -> None:
        metrics = evaluate(self.net, self.card(), self.plan, self.val_cases, self.device, self.precision, self.reporter)
        score = metrics["mean_dice_whole_lesion"]
        value = -1.0 if score is None else float(score)
        self.reporter.log(
            f"validation at step {step}: mean whole-lesion Dice {score}, gate accuracy {metrics['gate_accuracy']}"
        )
        if self.best is None or value > self.best["score"]:
            self.best = {"score": value, "step": step, "metrics": metrics}
            self.best_state = {k: v.detach().cpu().clone() for k, v in unique_state(self.net).items()}

    def checkpoint(self, step: int) -> None:
        meta = {
            "total_steps": self.total,
            "config": json.loads(json.dumps(self.config.training_fields())),
            "runtime": self.config.runtime_fields(),
            "datasets": self.plan.datasets,
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "best": self.best,
            "loss_curve": self.loss_curve,
            "pending_losses": self.pending,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
            "world_size": self.world.size,
        }
        save_checkpoint(self.config.work_dir, step, self.net, self.optimizer, meta, self.best_state)
        self.saved_step = step

    def _on_interrupt(self, signum: int, _frame: Any) -> None:
        """First Ctrl-C (or SIGTERM): stop after the current step with a checkpoint; a second one stops at once.

        Under torchrun a signal comes twice (from the terminal or scheduler, then forwarded by torchrun), so
        only the first counts; torchrun kills a process that has not stopped after its grace period.
        """
        self.stop_requested = True
        if not self.world.active:
            signal.signal(signum, signal.default_int_handler)

    def run(self) -> None:
        """Steps from the current one to the end, logging, validating and checkpointing on schedule.

        Ctrl-C, and SIGTERM where the CLI turned it into one, stop after a checkpoint of the step
        reached; a signal left at its default (SIGTERM in library callers) or ignored (background
        jobs) keeps its usual effect.
        """
        cfg = self.config
        self.net.train()
        self.stop_requested = False
        main = threading.current_thread() is threading.main_thread()
        caught = [s for s in (signal.SIGINT, signal.SIGTERM) if main and callable(signal.getsignal(s))]
        previous = {s: signal.signal(s, self._on_interrupt) for s in caught}
        steps = range(self.step + 1, self.total + 1)
        batches = training_batches(self.sampler, steps, self.world.share(cfg.batch_size), cfg.workers, cfg.seed)
        try:
            for step in steps:
                t = time.perf_counter()
                self.pending.append(list(self.train_step(step, next(batches))))
                elapsed = time.perf_counter() - t
                self.seconds += elapsed
                self.step_seconds.append(elapsed)
                self.step = step
                self.reporter.progress("train", step, self.total)
                if step % cfg.log_every == 0 or step == self.total:
                    self.log_losses(step)
                # read once (a signal during the rest of the step counts at the next); ranks agree on it
                stop = self.world.any(self.stop_requested) if self.world.active else self.stop_requested
                if self.val_cases and self.world.main and (step % self.val_every == 0 or step == self.total):
                    self.validate(step)
                if (step % cfg.checkpoint_every == 0 or stop) and step < self.total and self.world.main:
                    self.checkpoint(step)
                if stop and step < self.total:
                    if self.world.active:
                        self.world.barrier()  # rank 0's checkpoint is written before any rank exits
                    raise KeyboardInterrupt(
                        f"interrupted at step {step} of {self.total}; saved a checkpoint in {cfg.work_dir}: "
                        "continue with --resume"
                    )
        finally:
            batches.close()  # stops the DataLoader's workers
            for s, handler in previous.items():
                signal.signal(s, handler)

    def log_losses(self, step: int) -> None:
        """Mean losses of the steps since the last log: reported and kept in the card's loss curve."""
        seg, gate, _ = (float(np.mean(v)) for v in zip(*self.pending))
        loss = seg + self.config.gate_weight * gate
        self.loss_curve.append([step, round(loss, 5)])
        pace = float(np.mean(self.step_seconds[-len(self.pending) :]))
        self.reporter.log(
            f"step {step}/{self.total} loss {loss:.4f} (segmentation {seg:.4f}, gate {gate:.4f}) "
            f"lr {self.pending[-1][2]:.2e}, {pace:.2f} s/step"
        )
        self.pending = []

    # ------------------------------------------------------------ finish

    def gate_bank(self) -> SignatureBank:
        """Signatures of every training case's inference windows, by site (the gate's memory)."""
        return build_bank(
            self.net.gate,
            (c.image for c in self.sampler.cases),  # one at a time: streamed cases are read as they come
            self.sampler.case_sites,
            self.config.patch,
            float(DEFAULT_INFERENCE["overlap"]),
        )

    def finish(self, started: float) -> dict[str, Any]:
        """Save the bundle (best validated weights), remove the work folder; returns the result payload."""
        cfg = self.config
        if self.best_state is not None:
            _load_state(self.net, {k: v.to(self.device) for k, v in self.best_state.items()}, cfg.work_dir)
        fold_site_rows(self.net)
        if self.best:
            metrics = {
                "selected_step": self.best["step"],
                "selection": "mean whole-lesion Dice over sites on held-out cases",
                **self.best["metrics"],
            }
        else:
            metrics = {"validation_cases": 0, "note": "no held-out cases (a site needs 3 or more): last weights"}
        seconds = time.perf_counter() - started
        per_step = float(np.mean(self.step_seconds)) if self.step_seconds else 0.0
        provenance = {
            "command": cfg.command or cfg.command_line(self.total),
            "seed": cfg.seed,
            "steps": self.total,
            "batch_size": cfg.batch_size,
            "patch_size": list(cfg.patch),
            "learning_rate": cfg.lr,
            "train_seconds": round(self.seconds, 1),
            "seconds": round(seconds, 1),
            "seconds_per_step": round(per_step, 4),
            "device": str(self.device),
            "precision": self.precision,
            "resumed_from": self.resumed_from,
            "data": self.plan.card_datasets(),
            "loss_curve": self.loss_curve,
        }
        self.net.eval()
        bank = self.gate_bank()
        metrics["familiar_distance"] = round(bank.calibrate(self.net.gate), 4)
        path = save_bundle(self.net, self.card(provenance, metrics), cfg.out, bank)
        shutil.rmtree(cfg.work_dir, ignore_errors=True)
        return {
            "bundle": str(path),
            "steps": self.total,
            "resumed_from": self.resumed_from,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(per_step, 4),
            "metrics": metrics,
            "sites": [s.name for s in self.plan.sites],
            "channels": self.plan.channels,
            "labels": self.plan.label_names,
        }


def resume_config(config: TrainConfig, given: Collection[str]) -> TrainConfig:
    """`train --resume`: the interrupted run's recorded settings, `given` options checked against them.

    Refuses (one line) an `--out` with no checkpoint, which a mistyped folder would otherwise
    turn into a fresh run with default settings; library callers' `resume=True` still means
    "continue if there is a checkpoint".
    """
    _check_paths(config)
    meta = newest_meta(config.work_dir)
    if meta is None:
        raise InputError(
            f"--out {config.out}: nothing to resume (no checkpoint in {config.work_dir}); "
            "check the folder, or leave out --resume to start a new run"
        )
    return config.resumed({**meta.get("config", {}), **meta.get("runtime", {})}, given, config.work_dir)


def train(config: TrainConfig, reporter: Reporter | None = None) -> Path:
    """Train a bundle as `config` says (resuming if asked); returns the bundle folder."""
    return Path(train_run(config, reporter)["bundle"])


def train_run(config: TrainConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """`train`, returning the result payload (bundle, steps, seconds per step, metrics, ...).

    Under torchrun every process calls this; rank 0 reports and writes, and every rank returns its payload.
    """
    world = World.from_env()
    reporter = reporter if reporter is not None and world.main else SilentReporter()
    started = time.perf_counter()
    config.check()
    _check_paths(config)
    device = resolve_device(config.device)
    if config.compile:
        from UHarmonyLib.training.compiling import check_compile

        check_compile()
    try:
        if world.active:
            device = world.join(device, config.batch_size)
        trainer = Trainer(config, reporter, world, device)
        trainer.start()
        processes = f", {world.size} processes" if world.active else ""
        reporter.log(
            f"{trainer.total} steps of batch {config.batch_size}, patch {'x'.join(map(str, config.patch))}, spacing "
            f"{'x'.join(f'{s:g}' for s in trainer.preprocessing['spacing'])} mm; {trainer.device} {trainer.precision}"
            f"{processes}"
        )
        trainer.run()
        payload = world.from_main(lambda: trainer.finish(started))
    finally:
        world.leave()
    reporter.result(payload)
    return payload
