"""Site-balanced patch batches with MONAI transforms, reproducible from (seed, step) alone.

Each batch draws its sites uniformly (without replacement while the batch is no larger
than the site count), so a small site is seen as often as a large one; `--site-weight`
tilts that draw toward sites that need more practice. Then a case of that site
uniformly. MONAI's RandCropByPosNegLabeld takes half the patches centred on
lesion; light augmentation (flips, a mild foreground-only intensity scale and shift,
so absent channels stay exactly zero and a site's appearance survives), then channel
dropout. Every random draw of a step is seeded from (seed, step): a resumed run sees
exactly the batches the uninterrupted one would have, with no RNG state to carry.

A step's draws (which cases, the crop and augmentation seeds, the dropped channels) need
only the cases' sites and present channels, so they are made apart from the patches: a
DataLoader worker or a distributed rank makes any share of any step's batch from the
same draws, and a streamed case is read only when its patch is cut.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTransform,
    RandScaleIntensityd,
)

from UHarmonyLib.model.card import MIRROR_AXES
from UHarmonyLib.training.patches import PreparedCase


class RandForegroundShiftd(RandomizableTransform, MapTransform):
    """Add one random offset to the non-zero voxels: zero background and absent channels stay zero."""

    def __init__(self, keys: Sequence[Hashable], offsets: float, prob: float) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.offsets = offsets
        self.offset = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.offset = float(self.R.uniform(-self.offsets, self.offsets))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                x = d[key]
                d[key] = torch.where(x != 0, x + self.offset, x)
        return d


@dataclass
class Batch:
    image: torch.Tensor  # (B, C, *patch) float32
    target: torch.Tensor  # (B, 1, *patch) int64 group indices
    sites: torch.Tensor  # (B,) int64
    groups: list[list[list[int]]]  # per sample


@dataclass(frozen=True)
class Draw:
    """The random choices of one patch: its case, crop and augmentation seeds, channels zeroed."""

    case: int
    crop_seed: int
    augment_seed: int | None  # None: no augmentation (the gate scaler's patches)
    drop: tuple[int, ...]


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class PatchSampler:
    """Draws training batches; `batch(step)` depends only on the seed and the step."""

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        groups: Sequence[list[list[int]]],
        sites: Sequence[int],
        num_sites: int,
        patch: Sequence[int],
        batch_size: int,
        seed: int,
        channel_dropout: float = 0.1,
        site_weights: Sequence[float] | None = None,
        present: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """`present`: each case's present channels, needed when `cases` reads cases lazily (default: theirs)."""
        self.cases = cases
        self.present = [list(c.present) for c in cases] if present is None else [list(p) for p in present]
        self.groups = groups
        self.case_sites = list(sites)
        self.by_site = [[i for i, s in enumerate(sites) if s == k] for k in range(num_sites)]
        self.sites = [k for k in range(num_sites) if self.by_site[k]]  # sites with training cases
        weights = [1.0 if site_weights is None else float(site_weights[k]) for k in self.sites]
        # None keeps plain uniform draws, so unweighted runs repeat earlier runs' batches exactly
        self.site_p = None if len(set(weights)) <= 1 else np.asarray(weights) / sum(weights)
        self.batch_size = batch_size
        self.seed = seed
        self.channel_dropout = channel_dropout
        self.crop = RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=list(patch),
            pos=1.0,
            neg=1.0,
            num_samples=1,
            fg_indices_key="fg",
            bg_indices_key="bg",
        )
        self.augment = Compose(
            [
                *(RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=a) for a in MIRROR_AXES),
                RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                RandForegroundShiftd(keys="image", offsets=0.1, prob=0.5),
            ]
        )

    def _rng(self, step: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, stream, step]))

    def draw(self, case_index: int, rng: np.random.Generator, augment: bool = True) -> Draw:
        """The random choices of one patch of a case, taken from `rng` (the order fixes the stream)."""
        crop_seed = int(rng.integers(2**31))
        augment_seed = int(rng.integers(2**31)) if augment else None
        present = self.present[case_index]
        drop: list[int] = []
        if augment and self.channel_dropout > 0 and len(present) > 1:
            drop = [c for c in present if rng.random() < self.channel_dropout]
            if len(drop) == len(present):
                drop.pop(int(rng.integers(len(drop))))  # never all channels
        return Draw(case_index, crop_seed, augment_seed, tuple(drop))

    def patch(self, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        """The (image, label) patch a draw describes."""
        case = self.cases[draw.case]
        self.crop.set_random_state(seed=draw.crop_seed)
        # MONAI annotates tensors only; its index keys take the arrays PreparedCase holds
        data: dict[Hashable, Any] = {"image": case.image, "label": case.target, "fg": case.fg, "bg": case.bg}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a case without lesion voxels: MONAI warns, then samples background
            patch = self.crop(data)[0]
        if draw.augment_seed is not None:
            self.augment.set_random_state(seed=draw.augment_seed)
            patch = self.augment(patch)
        image, label = _plain(patch["image"]).clone(), _plain(patch["label"])
        if draw.drop:
            image[list(draw.drop)] = 0
        return image, label

    def sample(self, case_index: int, rng: np.random.Generator, augment: bool = True) -> tuple[torch.Tensor, ...]:
        """One (image, label) patch of a case."""
        return self.patch(self.draw(case_index, rng, augment))

    def draws(self, step: int) -> list[Draw]:
        """Every patch's draws of a step's batch (no case is read)."""
        rng = self._rng(step, 0)
        replace = self.batch_size > len(self.sites)
        sites = rng.choice(self.sites, size=self.batch_size, replace=replace, p=self.site_p)
        picks = [int(rng.choice(self.by_site[int(s)])) for s in sites]
        return [self.draw(i, rng) for i in picks]

    def batch(self, step: int, share: slice = slice(None)) -> Batch:
        """A step's batch, or the `share` of it (a slice of its patches) one distributed rank trains on."""
        draws = self.draws(step)[share]
        pairs = [self.patch(d) for d in draws]
        return Batch(
            image=torch.stack([p[0] for p in pairs]).float(),
            target=torch.stack([p[1] for p in pairs]).long(),
            sites=torch.as_tensor([self.case_sites[d.case] for d in draws], dtype=torch.long),
            groups=[self.groups[d.case] for d in draws],
        )

    def scaler_patches(self, count: int, chunk: int = 8) -> Iterator[torch.Tensor]:
        """Site-balanced un-augmented patches (in chunks) for fitting the gate's feature scaler once."""
        rng = self._rng(0, 1)
        picks = [int(rng.choice(self.by_site[self.sites[k % len(self.sites)]])) for k in range(count)]
        for start in range(0, count, chunk):
            yield torch.stack([self.sample(i, rng, augment=False)[0] for i in picks[start : start + chunk]])
