"""The network's description: everything needed to rebuild it, stored as the card's `architecture`.

Torch-free, so the model card can be checked (and the Slicer panel can list models)
without importing torch or MONAI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

BACKBONES = ("dynunet", "swinunetr")
NORMS = ("uharmony", "instance", "dsbn")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the network; stored as `architecture` in the model card."""

    in_channels: int
    out_channels: int
    num_sites: int
    backbone: str = "dynunet"
    norm: str = "uharmony"
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    feature_size: int = 12
    degree: int = 3
    full_res_degree: int = 1
    harmony_layers: int = -1
    gated_heads: bool = True
    gate_hidden: int = 64
    spatial_dims: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone '{self.backbone}' (known: {', '.join(BACKBONES)})")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm '{self.norm}' (known: {', '.join(NORMS)})")
        if min(self.in_channels, self.out_channels, self.num_sites) < 1:
            raise ValueError("in_channels, out_channels and num_sites must be positive")

    @property
    def site_required(self) -> bool:
        """DSBN has no gate-driven path: the site must be named."""
        return self.norm == "dsbn"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = list(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown architecture keys: {', '.join(unknown)}")
        d = dict(d)
        # cards written before full_res_degree existed used `degree` at every resolution
        d.setdefault("full_res_degree", d.get("degree", 3))
        if "filters" in d:
            d["filters"] = tuple(d["filters"])
        return cls(**d)
