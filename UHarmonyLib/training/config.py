"""What one training run is: every choice in one dataclass, checked before any work.

The same object drives the CLI and library callers (benchmarks), and its training
fields are stored in each checkpoint so `train --resume` continues with them (and
refuses an option that contradicts them). A field with an `Option` in its metadata is
that `uharmony train` option (parser, parsing and the card's recorded command all read
it from here); the others are library-only settings. Torch-free, so building the
parser stays cheap.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.nn.config import BACKBONES, NORMS
from UHarmonyLib.options import (
    DEVICE,
    PRECISION,
    Option,
    cli,
    field_options,
    option,
    shareable_command,
    text,
    to_argv,
)

# fields that may differ between an interrupted run and its --resume (they do not change the result)
# how the batches are made (data_mode, workers, cache_cases) never changes them: see case_stream.py, batch_stream.py;
# compile runs the same network on the same batches (compiling.py), equal up to float rounding as torchrun's steps are
RUNTIME_FIELDS = (
    "resume", "device", "command", "log_every", "checkpoint_every", "data_mode", "workers", "cache_cases", "compile"
)  # fmt: skip
RECORDED_RUNTIME = (  # kept in checkpoints as the resume's defaults (not compile: a flag a resume could not turn off)
    "device", "log_every", "checkpoint_every", "data_mode", "workers", "cache_cases"
)  # fmt: skip
DEFAULT_STEPS = 1000
DATA_MODES = ("memory", "stream")


def site_weight_words(weights: Mapping[str, float]) -> list[str]:
    """`--site-weight`'s SITE=W values for a weights mapping."""
    return [f"{name}={text(float(w))}" for name, w in weights.items()]


def parse_site_weights(items: Sequence[str]) -> dict[str, float]:
    """The weights mapping from `--site-weight` SITE=W values; a malformed one is refused in one line."""
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(f"--site-weight {item}: expected SITE=WEIGHT, for example hospital-b=2")
    return weights


@dataclass
class TrainConfig:
    """A training run: `steps` (default 1000), or `epochs` of one patch per training case."""

    data: list[Path] = field(
        metadata=cli(
            Option("--data", required=True, action="append", type=Path, metavar="DATASET_JSON", help="or its folder")
        )
    )
    out: Path = field(
        metadata=cli(
            Option("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="new bundle folder, e.g. my-model-v1")
        )
    )
    backbone: str = option("dynunet", Option("--backbone", choices=BACKBONES))
    norm: str = option("uharmony", Option("--norm", choices=NORMS))
    steps: int | None = option(
        None, Option("--steps", type=int, metavar="N", group="length", help="optimizer steps (default 1000)")
    )
    epochs: int | None = option(
        None, Option("--epochs", type=int, metavar="N", group="length", help="epochs of one patch per training case")
    )
    patch: tuple[int, int, int] = option(
        (64, 64, 64), Option("--patch", type=int, nargs="+", metavar="D", help="patch size: D or D H W (64)")
    )
    batch_size: int = option(2, Option("--batch", type=int, metavar="N", help="patches per step (default 2)"))
    lr: float = option(2e-3, Option("--lr", type=float, help="peak learning rate of the one-cycle schedule (2e-3)"))
    weight_decay: float = 1e-4
    seed: int = option(0, Option("--seed", type=int))
    device: str = option("auto", DEVICE)
    precision: str = option("auto", PRECISION)
    spacing: tuple[float, float, float] | None = option(  # None: the median spacing of the training cases
        None, Option("--spacing", type=float, nargs="+", metavar="MM", help="model grid in mm (default: cases' median)")
    )
    filters: tuple[int, ...] = option(
        (16, 32, 64, 128, 256),
        Option("--filters", type=int, nargs="+", metavar="F", help="DynUNet widths (16 32 64 128 256)"),
    )
    feature_size: int = option(12, Option("--feature-size", type=int, help="SwinUNETR feature size (12)"))
    restore_degree: int = option(  # U-Harmony's restore polynomial below full resolution (full resolution: linear)
        3,
        Option(
            "--restore-degree",
            type=int,
            metavar="N",
            help="uharmony: degree of the site-specific restore polynomial below full resolution (1-5; 3)",
        ),
    )
    site_params: str = option(  # site rows trained as shared + offset, or "independent" (site_sharing.py)
        "residual",
        Option(
            "--site-params",
            metavar="residual|independent",
            help="site rows trained as a shared value plus a site offset (default), or each on its own",
        ),
    )
    val_every: int = option(  # 0: five validations per run (and one at the end)
        0, Option("--val-every", type=int, metavar="N", help="validate every N steps (0: 5 times)")
    )
    val_fraction: float = option(
        0.2, Option("--val-fraction", type=float, help="held-out share of each site with >= 3 cases")
    )
    checkpoint_every: int = option(
        50, Option("--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps (50)")
    )
    log_every: int = option(10, Option("--log-every", type=int, metavar="N", help="log the loss every N steps (10)"))
    gate_weight: float = 0.5
    channel_dropout: float = option(
        0.1, Option("--channel-dropout", type=float, help="chance of zeroing a present channel (0.1)")
    )
    site_weights: dict[str, float] = field(  # site -> relative sampling weight (default 1)
        default_factory=dict,
        metadata=cli(
            Option(
                "--site-weight",
                action="append",
                metavar="SITE=W",
                encode=site_weight_words,
                help="draw SITE's patches W times as often as a weight-1 site (repeatable; default 1 each)",
            )
        ),
    )
    scaler_patches: int = 90
    resume: bool = option(
        False, Option("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    )
    harmonize: str | None = option(  # an image harmonization method fitted on the training cases
        None,
        Option(
            "--harmonize", metavar="METHOD", help="harmonize first: n4, zscore, percentile, nyul, match, whitestripe"
        ),
    )
    data_mode: str = option(
        "memory",
        Option(
            "--data-mode",
            choices=DATA_MODES,
            help="memory: read every case before training (default); stream: read cases as patches need them",
        ),
    )
    workers: int = option(
        0, Option("--workers", type=int, metavar="N", help="processes making the batches (0: the training process)")
    )
    cache_cases: int = option(
        8, Option("--cache-cases", type=int, metavar="N", help="stream: cases kept in memory, most drawn first (8)")
    )
    compile: bool = option(
        False,
        Option(
            "--compile",
            action="store_true",
            help="run the training step's network through torch.compile (minutes to start; for long GPU runs)",
        ),
    )
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
        from UHarmonyLib.image_harmonization import METHODS
        from UHarmonyLib.training.site_sharing import SITE_PARAMS

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
        if self.data_mode not in DATA_MODES:
            raise InputError(f"--data-mode {self.data_mode}: unknown (use {' or '.join(DATA_MODES)})")
        if self.workers < 0 or self.cache_cases < 0:
            raise InputError("--workers and --cache-cases must be >= 0")

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

    def runtime_fields(self) -> dict[str, Any]:
        """The runtime choices a `--resume` keeps unless given again."""
        return {k: getattr(self, k) for k in RECORDED_RUNTIME}

    def resumed(self, recorded: Mapping[str, Any], given: Collection[str], work: Path) -> TrainConfig:
        """The run as `recorded` in its checkpoint, with the options in `given` taken from this config.

        A given training setting must equal the recorded one (a resumed run cannot change what
        it trains); the refusal names the option, the run's value and the given one.
        """
        names = {f.name for f in fields(self)}
        record = replace(self, **{k: v for k, v in recorded.items() if k in names})
        mine, theirs = self.to_json(), record.to_json()
        for opt in field_options(TrainConfig):
            key = opt.dest
            if key in given and key not in RUNTIME_FIELDS and mine[key] != theirs[key]:
                was = shlex.join(opt.words(getattr(record, key), keep=True)) or f"no {opt.flag}"
                raise InputError(
                    f"{shlex.join(opt.words(getattr(self, key), keep=True))}: the run in {work} was started with "
                    f"{was}; leave {opt.flag} out to continue it, or delete the folder to start over"
                )
        return replace(record, **{k: getattr(self, k) for k in given if k in names})

    def command_line(self, steps: int) -> str:
        """An equivalent `uharmony train` line for the card: the resolved step count and the main settings always,
        other options when they differ from their default, runtime choices (device, --resume...) never."""
        options = field_options(TrainConfig)
        values = {o.dest: getattr(self, o.dest) for o in options if o.dest not in RUNTIME_FIELDS}
        if self.steps is not None or not self.epochs:
            values.update(steps=steps, epochs=None)
        width = "filters" if self.backbone == "dynunet" else "feature_size"
        always = ("backbone", "norm", "steps", "patch", "batch_size", "seed", width)
        return shareable_command(["uharmony", "train", *to_argv(options, values, always)])
