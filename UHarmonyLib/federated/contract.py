"""The federation's contract: what every node must agree on before a round can be averaged.

It travels as Flower's run config (flat str/int/float values), so the server app, every
site's ClientApp process and the simulation read the same settings from one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from UHarmonyLib.data.labels import KNOWN_COLORS
from UHarmonyLib.data.plan import PALETTE
from UHarmonyLib.errors import InputError
from UHarmonyLib.federated.names import check_name
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.training.site_sharing import SITE_PARAMS, share_site_rows

# federated method -> network normalization: U-Harmony columns, plain FedAvg, FedBN-style local affine norms
METHODS = {"uharmony": "uharmony", "fedavg": "instance", "fedbn": "dsbn"}
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedavgm")


@dataclass(frozen=True)
class Federation:
    """Settings every node reads from the run config (Flower's `context.run_config`)."""

    sites: str  # comma-separated site names; a site's index is its position
    channels: str = "T1,T2,FLAIR"
    labels: str = "lesion core,edema"
    method: str = "uharmony"
    strategy: str = "fedavg"
    rounds: int = 3
    local_steps: int = 20
    lr: float = 2e-3
    proximal_mu: float = 0.01
    server_momentum: float = 0.9  # fedavgm: momentum of the server's step along the averaged update
    batch: int = 2
    patch: int = 48
    spacing: float = 3.0
    filters: str = "16,32,64,128"
    site_params: str = "residual"  # uharmony's site rows as shared + offset (site_sharing.py); others: independent
    seed: int = 0
    val_fraction: float = 0.2
    eval_every: int = 0  # every N rounds each site scores the round's model on its validation cases; 0: never
    min_sites: int = 0  # sites needed per round; 0: all of them
    round_timeout: float = 900.0
    name: str = "uharmony-federated"

    def __post_init__(self) -> None:
        if len(self.site_names) < 2 or len(set(self.site_names)) != len(self.site_names):
            raise InputError(f"--sites {self.sites}: a federation needs two or more distinct site names")
        for site in self.site_names:  # each becomes a folder and a bundle name
            check_name("--sites", site)
        check_name("--name", self.name)
        widths = [w.strip() for w in self.filters.split(",")]
        if len(widths) < 2 or not all(w.isdigit() and int(w) > 0 for w in widths):
            raise InputError(f"--filters {self.filters}: needs at least two positive whole-number widths")
        if self.method not in METHODS:
            raise InputError(f"--method {self.method}: unknown (use {', '.join(METHODS)})")
        if self.site_params not in SITE_PARAMS:
            raise InputError(f"--site-params {self.site_params}: unknown (use {', '.join(SITE_PARAMS)})")
        if self.method != "uharmony":  # FedBN keeps its norms whole at the site; FedAvg has no site rows
            object.__setattr__(self, "site_params", "independent")
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy {self.strategy}: unknown (use {', '.join(STRATEGIES)})")
        if self.eval_every < 0:
            raise InputError(f"--eval-every {self.eval_every}: must be 0 (never) or a number of rounds")
        if self.eval_every and self.val_fraction <= 0:
            raise InputError(f"--eval-every {self.eval_every}: the sites hold out no validation cases to score")
        if min(self.rounds, self.local_steps, self.batch) < 1:
            raise InputError("--rounds, --local-steps and --batch must be at least 1")
        depth = len(self.filter_widths)
        if self.patch % 2 ** (depth - 1) or self.patch < 2 ** (depth - 1):
            raise InputError(f"--patch {self.patch}: must be a multiple of {2 ** (depth - 1)} for {depth} levels")
        if not 0 <= self.min_sites <= len(self.site_names):
            raise InputError(f"--min-sites {self.min_sites}: must be between 0 and {len(self.site_names)}")
        if not 0 <= self.server_momentum < 1:
            raise InputError(f"--server-momentum {self.server_momentum}: must be in [0, 1)")
        if not self.lr > 0 or self.spacing <= 0:
            raise InputError("--lr and --spacing must be positive")

    @property
    def site_names(self) -> list[str]:
        return [s.strip() for s in self.sites.split(",") if s.strip()]

    @property
    def channel_names(self) -> list[str]:
        return [c.strip() for c in self.channels.split(",") if c.strip()]

    @property
    def label_names(self) -> list[str]:
        return [c.strip() for c in self.labels.split(",") if c.strip()]

    @property
    def filter_widths(self) -> tuple[int, ...]:
        return tuple(int(f) for f in self.filters.split(","))

    @property
    def required_sites(self) -> int:
        return self.min_sites or len(self.site_names)

    def card_channels(self) -> list[dict[str, str]]:
        return [{"name": c, "modality": "MR"} for c in self.channel_names]

    def card_labels(self) -> list[dict[str, Any]]:
        return [
            {"value": k, "name": n, "color": KNOWN_COLORS.get(n, PALETTE[(k - 1) % len(PALETTE)])}
            for k, n in enumerate(self.label_names, start=1)
        ]

    def preprocessing(self) -> dict[str, Any]:
        return {"orientation": "RAS", "spacing": [self.spacing] * 3, "intensity": {"method": "zscore", "nonzero": True}}

    def evaluates(self, server_round: int) -> bool:
        """Whether the sites score the model after `server_round`: every `eval_every` rounds and the last."""
        return self.eval_every > 0 and (server_round % self.eval_every == 0 or server_round == self.rounds)

    @property
    def total_steps(self) -> int:
        """Local steps of one site over the whole federation: the length of its one learning-rate schedule."""
        return self.rounds * self.local_steps

    def network(self, num_sites: int | None = None) -> UHarmonyNet:
        """The federation's network as every node trains it (seeded), optionally for a subset of sites.

        With residual site parameters each site row is a shared value (averaged like the backbone)
        plus the site's own offset (kept at the site), as centralized training's default;
        `fold_site_rows` turns them into the plain rows a bundle stores.
        """
        torch.manual_seed(self.seed)
        norm = METHODS[self.method]
        net = UHarmonyNet(
            NetworkConfig(
                in_channels=len(self.channel_names),
                out_channels=len(self.label_names) + 1,
                num_sites=num_sites or len(self.site_names),
                norm=norm,
                filters=self.filter_widths,
                gated_heads=norm != "instance",
            )
        )
        if self.site_params == "residual":
            share_site_rows(net)
        return net

    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> Federation:
        """Read Flower's run config; unknown keys are ignored (Flower adds its own)."""
        kinds: dict[str, type] = {f.name: str if f.name == "sites" else type(f.default) for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in kinds:
                try:
                    values[name] = kinds[name](value)
                except (TypeError, ValueError) as e:
                    raise InputError(f"run config {key}={value!r}: not a {kinds[name].__name__}") from e
        if "sites" not in values:
            raise InputError("run config has no 'sites': the server must name the federation's sites")
        return cls(**values)

    def digest(self) -> str:
        """Identifies the contract in a site's saved state, so a changed federation is not mixed up."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
