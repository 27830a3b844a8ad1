"""One hospital's side of the federation: local training, its private state, its bundle.

Every Flower message starts a fresh ClientApp process, so nothing lives in memory
between rounds: the site's own rows (harmony columns, head) are saved after each round
under STATE/<federation digest>/ (atomically; a site that dies loses at most the round
it was in), and the data is read again from the site's own dataset.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from UHarmonyLib.data.cases import LoadedCase, PlannedCase, load_case
from UHarmonyLib.data.plan import Plan, Site, plan_training
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.validation import evaluate
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.split import load_shared, load_site_rows, shared_state, site_rows
from UHarmonyLib.files.atomic import atomic_path, write_text_atomic
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
from UHarmonyLib.training.steps import segmentation_steps

ROWS_NAME = "local.safetensors"
RECORD_NAME = "site.json"


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
        self._loaded: list[LoadedCase] | None = None

    # ------------------------------------------------------------ data and state

    @property
    def loaded(self) -> list[LoadedCase]:
        if self._loaded is None:
            self._loaded = [load_case(c, len(self.plan.channels)) for c in self.plan.cases]
        return self._loaded

    @property
    def own(self) -> Site:
        return self.plan.sites[self.index]

    def prepared(self) -> list[Any]:
        pre = self.contract.preprocessing()
        return [
            prepare_case(self.loaded[i], pre, self.patch, self.plan.channels, self.plan.cases[i].entry.case)
            for i in self.own.train
        ]

    def record(self) -> dict[str, Any]:
        path = self.state / RECORD_NAME
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"site": self.site, "rounds": []}

    def _save(self, net: UHarmonyNet, server_round: int, figures: dict[str, float]) -> None:
        """Rows first, then the record that names them: a crash between leaves the previous round's record."""
        rows = {k: v.contiguous() for k, v in site_rows(net, self.index).items()}
        with atomic_path(self.state / ROWS_NAME) as tmp:
            save_file(rows, str(tmp))
        record = self.record()
        record["rounds"] = [r for r in record["rounds"] if r["round"] != server_round] + [
            {"round": server_round, **figures}
        ]
        record["contract"] = self.contract.to_run_config()
        write_text_atomic(self.state / RECORD_NAME, json.dumps(record, indent=2) + "\n")

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
        lr = c.lr * 0.5 * (1 + np.cos(np.pi * (server_round - 1) / c.rounds))  # cosine over the whole federation
        trainable = [p for n, p in params.items() if not n.startswith("gate.")]
        opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)  # no decay: other sites' rows stay untouched
        weights = one_hot_weights(self.index, len(c.site_names), c.batch)

        def proximal() -> torch.Tensor:
            drift = sum((((params[n] - a) ** 2).sum() for n, a in anchors.items() if n in params), torch.zeros(()))
            return proximal_mu / 2 * drift

        start = time.perf_counter()
        steps = range((server_round - 1) * c.local_steps + 1, server_round * c.local_steps + 1)
        cpu = torch.device("cpu")
        losses = segmentation_steps(net, sampler, opt, weights, steps, cpu, penalty=proximal if anchors else None)
        figures = {
            "train-loss": float(np.mean(losses)),
            "seconds": round(time.perf_counter() - start, 3),
            "num-examples": len(self.own.train),
        }
        self._save(net, server_round, {k: v for k, v in figures.items() if k != "num-examples"})
        return shared_state(net), figures

    def bank(self) -> SignatureBank:
        """Scanner signatures of this site's training windows: the only description of its images that leaves."""
        pre = self.contract.preprocessing()
        images = [prepare_case(self.loaded[i], pre, self.patch, self.plan.channels).image for i in self.own.train]
        gate = DomainGate(len(self.contract.channel_names), len(self.contract.site_names))  # signatures need no weights
        return build_bank(gate, images, [self.index] * len(images), self.patch, float(DEFAULT_INFERENCE["overlap"]))

    def published_rows(self) -> dict[str, torch.Tensor]:
        """This site's trained rows, for the other sites' bundles (only when the site chose to publish)."""
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
