"""What one training run is: every choice in one dataclass, checked before any work.

The same object drives the CLI and library callers (benchmarks), and its training
fields are stored in each checkpoint so `--resume` can refuse a changed command.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization import METHODS
from UHarmonyLib.nn.config import BACKBONES, NORMS
from UHarmonyLib.training.site_sharing import SITE_PARAMS

# fields that may differ between an interrupted run and its --resume (they do not change the result)
RUNTIME_FIELDS = ("resume", "device", "command", "log_every", "checkpoint_every")
DEFAULT_STEPS = 1000


@dataclass
class TrainConfig:
    """A training run: `steps` (default 1000), or `epochs` of one patch per training case."""

    data: list[Path]
    out: Path
    backbone: str = "dynunet"
    norm: str = "uharmony"
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    feature_size: int = 12
    restore_degree: int = 3  # U-Harmony's restore polynomial below full resolution (full resolution: linear)
    site_params: str = "residual"  # site rows trained as shared + offset, or "independent" (site_sharing.py)
    steps: int | None = None
    epochs: int | None = None
    patch: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    spacing: tuple[float, float, float] | None = None  # None: the median spacing of the training cases
    val_every: int = 0  # 0: five validations per run (and one at the end)
    val_fraction: float = 0.2
    checkpoint_every: int = 50
    log_every: int = 10
    gate_weight: float = 0.5
    channel_dropout: float = 0.1
    site_weights: dict[str, float] = field(default_factory=dict)  # site -> relative sampling weight (default 1)
    scaler_patches: int = 90
    harmonize: str | None = None  # an image harmonization method fitted on the training cases
    resume: bool = False
    command: str = ""  # recorded in the card; default: an equivalent `uharmony train` line

    def __post_init__(self) -> None:
        self.data = [Path(p) for p in self.data]
        self.out = Path(self.out)
        self.filters = tuple(int(f) for f in self.filters)
        patch = tuple(int(p) for p in self.patch)
        self.patch = patch * 3 if len(patch) == 1 else patch  # type: ignore[assignment]
        if self.spacing is not None:
            sp = tuple(float(s) for s in self.spacing)
            self.spacing = sp * 3 if len(sp) == 1 else sp  # type: ignore[assignment]

    @property
    def work_dir(self) -> Path:
        """Checkpoints of an unfinished run live beside the bundle-to-be."""
        return self.out.parent / f"{self.out.name}.work"

    @property
    def bundle_name(self) -> tuple[str, int]:
        """(name, version) from the output folder: `my-model-v3` -> ("my-model", 3)."""
        m = re.fullmatch(r"(.+)-v(\d+)", self.out.name)
        return (m.group(1), int(m.group(2))) if m else (self.out.name, 1)

    def total_steps(self, train_cases: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            return DEFAULT_STEPS
        return self.epochs * max(1, math.ceil(train_cases / self.batch_size))

    def check(self) -> None:
        """One-line refusals of impossible settings, before any data is read."""
        if not self.data:
            raise InputError("train needs at least one --data DATASET_JSON")
        resolved = [p.resolve() / "dataset.json" if p.is_dir() else p.resolve() for p in self.data]
        twice = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
        if twice is not None:
            raise InputError(f"--data {twice}: given twice")
        if self.backbone not in BACKBONES:
            raise InputError(f"--backbone {self.backbone}: unknown (use {', '.join(BACKBONES)})")
        if self.norm not in NORMS:
            raise InputError(f"--norm {self.norm}: unknown (use {', '.join(NORMS)})")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise InputError(f"--patch needs one or three positive sizes, got {list(self.patch)}")
        if self.backbone == "dynunet":
            if len(self.filters) < 2 or min(self.filters) < 1:
                raise InputError(f"--filters needs at least two positive widths, got {list(self.filters)}")
            step, smallest = 2 ** (len(self.filters) - 1), 2 ** (len(self.filters) - 1)
        else:
            if self.feature_size < 12 or self.feature_size % 12:
                raise InputError(f"--feature-size must be a multiple of 12 for swinunetr, got {self.feature_size}")
            step, smallest = 32, 64
        if any(p % step or p < smallest for p in self.patch):
            raise InputError(
                f"--patch {' '.join(map(str, self.patch))}: each size must be a multiple of {step} "
                f"(2**(depth-1) for {len(self.filters)} levels)"
                if self.backbone == "dynunet"
                else f"--patch {' '.join(map(str, self.patch))}: swinunetr needs multiples of 32, at least 64"
            )
        if isinstance(self.restore_degree, bool) or self.restore_degree not in range(1, 6):
            raise InputError(f"--restore-degree must be a whole number from 1 to 5, got {self.restore_degree}")
        if self.site_params not in SITE_PARAMS:
            raise InputError(f"--site-params {self.site_params}: unknown (use {', '.join(SITE_PARAMS)})")
        if self.batch_size < 1:
            raise InputError(f"--batch must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise InputError(f"--spacing needs one or three positive sizes in mm, got {list(self.spacing)}")
        if self.val_every < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise InputError("--val-every must be >= 0, --checkpoint-every and --log-every >= 1")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.channel_dropout < 1:
            raise InputError(f"--channel-dropout must be in [0, 1), got {self.channel_dropout}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        bad = next((f"{k}={w}" for k, w in self.site_weights.items() if not (w > 0 and math.isfinite(w))), None)
        if bad is not None:
            raise InputError(f"--site-weight {bad}: the weight must be a positive number")
        if self.harmonize is not None and self.harmonize not in METHODS:
            raise InputError(f"--harmonize {self.harmonize}: unknown method (use {', '.join(METHODS)})")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = [str(p.resolve()) for p in self.data]
        d["out"] = str(self.out.resolve())
        for key in ("filters", "patch", "spacing"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    def training_fields(self) -> dict[str, Any]:
        """What must be equal for a checkpoint to continue this run."""
        return {k: v for k, v in self.to_json().items() if k not in RUNTIME_FIELDS}
