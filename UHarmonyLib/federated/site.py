"""One hospital's side of the federation: local training, its private state, its bundle.

Every Flower message starts a fresh ClientApp process, so nothing lives in memory
between rounds: the site's own rows (harmony columns, head) and its AdamW state are saved
after each round under STATE/<federation digest>/ (atomically; a site that dies loses at
most the round it was in), and the data is read again from the site's own dataset.json.

Training continues across rounds as one run would: the optimizer's moments and step
counts come back from disk for every parameter the site trains, the received shared
tensors included (a "stateful client": a fresh AdamW would take full-size sign steps at
the start of every round), and the learning rate follows centralized training's
one-cycle schedule over all rounds' local steps, never restarted per round.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import OneCycleLR

from UHarmonyLib.data.cases import LoadedCase, PlannedCase, load_case
from UHarmonyLib.data.plan import Plan, Site, plan_training
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.validation import evaluate
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.split import load_shared, load_site_rows, shared_state, site_rows
from UHarmonyLib.files.atomic import atomic_path, write_text_atomic
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.inference.signatures import build_bank
from UHarmonyLib.model.card import DEFAULT_INFERENCE
from UHarmonyLib.model.signature_bank import SignatureBank
from UHarmonyLib.model.weights import make_card, save_bundle
from UHarmonyLib.nn.gate_network import DomainGate
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import one_hot_weights
from UHarmonyLib.progress import Reporter
from UHarmonyLib.training.add_site import fit_gate
from UHarmonyLib.training.patches import prepare_case
from UHarmonyLib.training.sampling import PatchSampler
from UHarmonyLib.training.site_sharing import fold_site_rows
from UHarmonyLib.training.steps import segmentation_steps

ROWS_NAME = "local.safetensors"
RECORD_NAME = "site.json"
MOMENTS_NAME = "optimizer.safetensors"  # AdamW's exp_avg and exp_avg_sq per parameter name
OPTIMIZER_NAME = "optimizer.json"  # step count per parameter name, the round, the moments file's sha256
MOMENTS = ("exp_avg", "exp_avg_sq")
# A process's cases across messages, by the files' paths, sizes and times: a simulation's actors (and a
# SuperNode run without process isolation) answer many rounds, and reading and resampling every case
# again each round cost about as much as the round's training.
_CASES: dict[tuple[Any, ...], tuple[list[LoadedCase], list[Any]]] = {}
CACHED_SITES = 4  # a simulation's actor answers for several sites in turn


def federation_schedule(optimizer: torch.optim.Optimizer, contract: Federation, start: int) -> OneCycleLR:
    """Centralized training's one-cycle schedule over the site's local steps of every round, at 0-based step `start`.

    Each round is a fresh process: positioning the one schedule at the round's first step
    continues it where the previous round left it (learning rate and AdamW's beta1 alike).
    """
    schedule = OneCycleLR(optimizer, max_lr=contract.lr, total_steps=contract.total_steps)
    if start:
        schedule.last_epoch = start - 1
        with warnings.catch_warnings():  # stepping the schedule, not the optimizer, is the point here
            warnings.filterwarnings("ignore", "Detected call of", UserWarning)
            schedule.step()
    return schedule


def _site_cases(contract: Federation, data: Path, site: str) -> Plan:
    """The site's cases from its own dataset, in the federation's channel, label and site spaces."""
    plan = plan_training([data], contract.val_fraction, contract.seed, contract.card_channels(), contract.card_labels())
    extra = plan.channels[len(contract.channel_names) :] or plan.label_names[len(contract.label_names) :]
    if extra:
        raise InputError(f"{data}: '{extra[0]}' is not one of the federation's channels or labels")
    own = next((s for s in plan.sites if s.name == site), None)
    if own is None:
        if len(plan.sites) != 1:
            raise InputError(
                f"{data}: no cases of site '{site}' (the dataset has {', '.join(s.name for s in plan.sites)})"
            )
        own = plan.sites[0]
    if not own.cases:
        raise InputError(f"{data}: site '{site}' has no cases")
    return plan_for(plan, own, site, contract.site_names)


def plan_for(plan: Plan, own: Site, site: str, names: list[str]) -> Plan:
    """`plan` reduced to one site's cases, renumbered into the site list `names`."""
    index = names.index(site)
    keep = own.cases
    renumber = {old: new for new, old in enumerate(keep)}
    cases = [dataclasses.replace(plan.cases[i], site=index) for i in keep]
    sites = [Site(n, "(federation)") for n in names]
    sites[index] = Site(
        site,
        own.dataset,
        [renumber[i] for i in own.cases],
        [renumber[i] for i in own.train],
        [renumber[i] for i in own.val],
    )
    return Plan(plan.channels, plan.modalities, plan.labels, sites, cases, plan.datasets)


class SiteNode:
    """A site's data, its saved rows and what it does for each kind of message."""

    def __init__(self, contract: Federation, data: Path, site: str, state: Path) -> None:
        if site not in contract.site_names:
            raise InputError(f"--site {site}: not a site of this federation ({contract.sites})")
        self.contract = contract
        self.site = site
        self.index = contract.site_names.index(site)
        self.plan = _site_cases(contract, Path(data), site)
        self.state = Path(state) / contract.digest()
        self.state.mkdir(parents=True, exist_ok=True)
        self.patch = (contract.patch,) * 3

    # ------------------------------------------------------------ data and state

    def _cached(self) -> tuple[list[LoadedCase], list[Any]]:
        """The site's cases as read, and its training cases as prepared on the federation's grid."""
        files = [p for c in self.plan.cases for p in (*c.entry.images, c.entry.label)]
        stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        key = (self.contract.digest(), self.site, tuple(self.own.train), stats)
        if key not in _CASES:
            while len(_CASES) >= CACHED_SITES:
                _CASES.pop(next(iter(_CASES)))  # the oldest
            loaded = [load_case(c, len(self.plan.channels)) for c in self.plan.cases]
            pre = self.contract.preprocessing()
            prepared = [
                prepare_case(loaded[i], pre, self.patch, self.plan.channels, self.plan.cases[i].entry.case)
                for i in self.own.train
            ]
            _CASES[key] = (loaded, prepared)
        return _CASES[key]

    @property
    def loaded(self) -> list[LoadedCase]:
        return self._cached()[0]

    @property
    def own(self) -> Site:
        return self.plan.sites[self.index]

    def prepared(self) -> list[Any]:
        return self._cached()[1]

    def record(self) -> dict[str, Any]:
        path = self.state / RECORD_NAME
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"site": self.site, "rounds": []}

    def _save(
        self, net: UHarmonyNet, optimizer: torch.optim.Optimizer, server_round: int, figures: dict[str, Any]
    ) -> None:
        """Rows, then the optimizer, then the record that names the round: a crash between leaves the last record."""
        rows = {k: v.contiguous() for k, v in site_rows(net, self.index).items()}
        with atomic_path(self.state / ROWS_NAME) as tmp:
            save_file(rows, str(tmp))
        self._save_optimizer(net, optimizer, server_round)
        record = self.record()
        record["rounds"] = [r for r in record["rounds"] if r["round"] != server_round] + [
            {"round": server_round, **figures}
        ]
        record["contract"] = self.contract.to_run_config()
        write_text_atomic(self.state / RECORD_NAME, json.dumps(record, indent=2) + "\n")

    def _save_optimizer(self, net: UHarmonyNet, optimizer: torch.optim.Optimizer, server_round: int) -> None:
        """AdamW's moments (safetensors) and steps (JSON) per parameter name; the JSON keeps the moments' sha256."""
        names = {id(p): n for n, p in net.named_parameters()}
        moments, steps = {}, {}
        for param, state in optimizer.state.items():
            name = names[id(param)]
            moments.update({f"{name}/{m}": state[m].detach().contiguous() for m in MOMENTS})
            steps[name] = int(state["step"])
        with atomic_path(self.state / MOMENTS_NAME) as tmp:
            save_file(moments, str(tmp))
        record = {"round": server_round, "steps": steps, "sha256": sha256_file(self.state / MOMENTS_NAME)}
        write_text_atomic(self.state / OPTIMIZER_NAME, json.dumps(record, indent=1) + "\n")

    def restore_optimizer(self, net: UHarmonyNet, optimizer: torch.optim.Optimizer) -> int:
        """The previous round's AdamW state for the parameters trained here; returns its largest step count (0: none).

        Moments whose file does not match the JSON (the site died between the two writes)
        are not used: the round then starts them afresh, as the first round does.
        """
        moments_path, record_path = self.state / MOMENTS_NAME, self.state / OPTIMIZER_NAME
        if not (moments_path.is_file() and record_path.is_file()):
            return 0
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("sha256") != sha256_file(moments_path):
            return 0
        moments = load_file(str(moments_path))
        params = dict(net.named_parameters())
        for name, step in record["steps"].items():
            param = params.get(name)
            saved = [moments.get(f"{name}/{m}") for m in MOMENTS]
            if param is None or any(t is None or t.shape != param.shape for t in saved):
                raise ValueError(f"{record_path}: saved optimizer state does not fit this network ({name})")
            optimizer.state[param] = {"step": torch.tensor(float(step)), **dict(zip(MOMENTS, saved))}
        return max(record["steps"].values(), default=0)

    def network(self, shared: dict[str, torch.Tensor]) -> UHarmonyNet:
        """The federation's network with the received shared tensors and this site's saved rows."""
        net = self.contract.network()
        load_shared(net, shared)
        rows = self.state / ROWS_NAME
        if rows.is_file():
            load_site_rows(net, self.index, load_file(str(rows)))
        return net

    # ------------------------------------------------------------ messages

    def train_round(
        self, shared: dict[str, torch.Tensor], server_round: int, proximal_mu: float = 0.0
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Local steps from the received backbone; returns the shared tensors to send and the round's figures."""
        c = self.contract
        net = self.network(shared)
        sampler = PatchSampler(
            self.prepared(),
            groups=[self.plan.cases[i].groups for i in self.own.train],
            sites=[self.index] * len(self.own.train),
            num_sites=len(c.site_names),
            patch=self.patch,
            batch_size=c.batch,
            seed=c.seed + self.index,
        )
        anchors = {k: v.clone() for k, v in shared.items()} if proximal_mu > 0 else {}
        params = dict(net.named_parameters())
        trainable = [p for n, p in params.items() if not n.startswith("gate.")]
        opt = torch.optim.AdamW(trainable, lr=c.lr, weight_decay=0.0)  # no decay: other sites' rows stay untouched
        restored = self.restore_optimizer(net, opt)
        first = (server_round - 1) * c.local_steps
        schedule = federation_schedule(opt, c, first)
        weights = one_hot_weights(self.index, len(c.site_names), c.batch)
        rates = [float(opt.param_groups[0]["lr"])]  # the rate of each step, then the next round's first

        def proximal() -> torch.Tensor:
            drift = sum((((params[n] - a) ** 2).sum() for n, a in anchors.items() if n in params), torch.zeros(()))
            return proximal_mu / 2 * drift

        start = time.perf_counter()
        steps = range(first + 1, first + c.local_steps + 1)
        cpu = torch.device("cpu")
        losses = segmentation_steps(
            net,
            sampler,
            opt,
            weights,
            steps,
            cpu,
            scheduler=schedule,
            penalty=proximal if anchors else None,
            on_step=lambda _k, _loss: rates.append(float(opt.param_groups[0]["lr"])),
        )
        figures = {
            "train-loss": float(np.mean(losses)),
            "seconds": round(time.perf_counter() - start, 3),
            "num-examples": len(self.own.train),
        }
        record = {
            **{k: v for k, v in figures.items() if k != "num-examples"},
            "optimizer-steps-restored": restored,
            "lr-first": rates[0],
            "lr-last": rates[-2],
        }
        self._save(net, opt, server_round, record)
        return shared_state(net), figures

    def evaluate_round(self, shared: dict[str, torch.Tensor]) -> dict[str, float]:
        """Whole-lesion Dice of the round's model on this site's validation cases, the site named (its gate is
        fitted only at the end); -1 when it has no validation case or no defined Dice."""
        net = self.network(shared)
        cases = [(self.plan.cases[i], self.loaded[i]) for i in self.own.val]
        if not cases:
            return {"dice-whole-lesion": -1.0, "num-examples": 0}
        card = self._card(net, self.plan, self.contract.site_names, {})
        figures = evaluate(net, card, self.plan, cases, torch.device("cpu"), "float32", site_given=True)
        dice = figures["mean_dice_whole_lesion"]
        return {"dice-whole-lesion": -1.0 if dice is None else float(dice), "num-examples": len(cases)}

    def bank(self) -> SignatureBank:
        """Scanner signatures of this site's training windows: the only description of its images that leaves."""
        pre = self.contract.preprocessing()
        images = [prepare_case(self.loaded[i], pre, self.patch, self.plan.channels).image for i in self.own.train]
        gate = DomainGate(len(self.contract.channel_names), len(self.contract.site_names))  # signatures need no weights
        return build_bank(gate, images, [self.index] * len(images), self.patch, float(DEFAULT_INFERENCE["overlap"]))

    def published_rows(self) -> dict[str, torch.Tensor]:
        """This site's trained rows (offsets, when residual), for the others' bundles (only if the site publishes)."""
        path = self.state / ROWS_NAME
        if not path.is_file():
            raise InputError(f"{path}: no trained rows yet; this site took part in no round")
        return load_file(str(path))

    def write_bundle(
        self,
        shared: dict[str, torch.Tensor],
        published: dict[str, dict[str, torch.Tensor]],
        bank: SignatureBank,
        reporter: Reporter | None = None,
    ) -> tuple[Path, dict[str, Any]]:
        """A full bundle: shared backbone, this site's rows and every published site's rows, a refitted gate."""
        c = self.contract
        names = [n for n in c.site_names if n == self.site or n in published]
        net = c.network(len(names))
        load_shared(net, shared)
        for k, name in enumerate(names):
            rows = self.published_rows() if name == self.site else published[name]
            load_site_rows(net, k, rows)
        fold_site_rows(net)  # residual rows: each site's row is now the final shared value plus its offset
        keep = torch.as_tensor([c.site_names[int(s)] in names for s in bank.sites])
        remap = torch.as_tensor([names.index(n) if n in names else -1 for n in c.site_names])
        sub = SignatureBank(bank.vectors[keep], remap[bank.sites[keep]], bank.cases[keep], bank.weights[keep])
        net.gate.fit_scaler(sub.vectors)
        fit_gate(net.gate, sub, c.seed)
        sub.threshold = sub.calibrate(net.gate)
        net.eval()
        plan = plan_for(self.plan, self.own, self.site, names)
        cases: list[tuple[PlannedCase, LoadedCase]] = [(plan.cases[i], self.loaded[i]) for i in self.own.val]
        figures = evaluate(net, self._card(net, plan, names, {}), plan, cases, torch.device("cpu"), "float32", reporter)
        figures["familiar_distance"] = round(sub.threshold, 4)
        out = self._next_bundle_path()
        save_bundle(net, self._card(net, plan, names, figures), out, sub)
        return out, figures

    def _next_bundle_path(self) -> Path:
        base = self.state.parent
        version = 1
        while (base / f"{self.contract.name}-{self.site}-v{version}").exists():
            version += 1
        return base / f"{self.contract.name}-{self.site}-v{version}"

    def _card(self, net: UHarmonyNet, plan: Plan, names: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
        c = self.contract
        own = plan.card_sites()[names.index(self.site)]
        sites = [own if n == self.site else {"name": n, "dataset": "(federated: published by the site)"} for n in names]
        rounds = self.record()["rounds"]
        return make_card(
            net,
            name=f"{c.name}-{self.site}",
            version=int(self._next_bundle_path().name.rsplit("-v", 1)[1]),
            title=f"{c.name} at {self.site} ({c.method}, {c.strategy}, {len(names)} sites)",
            description=(
                f"Federated {c.method} model ({c.strategy}, {c.rounds} rounds of {c.local_steps} local steps) "
                f"written by site {self.site}; its own cases never left the site. Sites: {', '.join(names)}."
            ),
            channels=c.card_channels(),
            labels=c.card_labels(),
            sites=sites,
            preprocessing=c.preprocessing(),
            inference={**DEFAULT_INFERENCE, "patch_size": list(self.patch), "batch_size": c.batch},
            provenance={
                "federated": {"contract": c.to_run_config(), "site": self.site, "rounds": rounds},
                "data": self.plan.card_datasets(),
            },
            metrics=metrics,
        )
