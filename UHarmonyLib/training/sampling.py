"""Site-balanced patch batches with MONAI transforms, reproducible from (seed, step) alone.

Each batch draws its sites uniformly (without replacement while the batch is no larger
than the site count), so a small site is seen as often as a large one; `--site-weight`
tilts that draw toward sites that need more practice. Then a case of that site
uniformly. MONAI's RandCropByPosNegLabeld takes half the patches centred on
lesion; light augmentation (flips, a mild foreground-only intensity scale and shift,
so absent channels stay exactly zero and a site's appearance survives), then channel
dropout. Every random draw of a step is seeded from (seed, step): a resumed run sees
exactly the batches the uninterrupted one would have, with no RNG state to carry.
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
    ) -> None:
        self.cases = cases
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

    def sample(self, case_index: int, rng: np.random.Generator, augment: bool = True) -> tuple[torch.Tensor, ...]:
        """One (image, label) patch of a case."""
        case = self.cases[case_index]
        self.crop.set_random_state(seed=int(rng.integers(2**31)))
        # MONAI annotates tensors only; its index keys take the arrays PreparedCase holds
        data: dict[Hashable, Any] = {"image": case.image, "label": case.target, "fg": case.fg, "bg": case.bg}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a case without lesion voxels: MONAI warns, then samples background
            patch = self.crop(data)[0]
        if augment:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            patch = self.augment(patch)
        image, label = _plain(patch["image"]).clone(), _plain(patch["label"])
        if augment and self.channel_dropout > 0 and len(case.present) > 1:
            drop = [c for c in case.present if rng.random() < self.channel_dropout]
            if len(drop) == len(case.present):
                drop.pop(int(rng.integers(len(drop))))  # never all channels
            image[drop] = 0
        return image, label

    def batch(self, step: int) -> Batch:
        rng = self._rng(step, 0)
        replace = self.batch_size > len(self.sites)
        sites = rng.choice(self.sites, size=self.batch_size, replace=replace, p=self.site_p)
        picks = [int(rng.choice(self.by_site[int(s)])) for s in sites]
        pairs = [self.sample(i, rng) for i in picks]
        return Batch(
            image=torch.stack([p[0] for p in pairs]).float(),
            target=torch.stack([p[1] for p in pairs]).long(),
            sites=torch.as_tensor([self.case_sites[i] for i in picks], dtype=torch.long),
            groups=[self.groups[i] for i in picks],
        )

    def scaler_patches(self, count: int, chunk: int = 8) -> Iterator[torch.Tensor]:
        """Site-balanced un-augmented patches (in chunks) for fitting the gate's feature scaler once."""
        rng = self._rng(0, 1)
        picks = [int(rng.choice(self.by_site[self.sites[k % len(self.sites)]])) for k in range(count)]
        for start in range(0, count, chunk):
            yield torch.stack([self.sample(i, rng, augment=False)[0] for i in picks[start : start + chunk]])
