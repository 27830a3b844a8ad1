"""Training batches made by DataLoader worker processes (`train --workers N`), in step order.

The DataLoader's items are step numbers: a worker turns step s into `PatchSampler.batch(s)`
(this rank's share of it), which depends on the seed and s alone. So any number of workers
gives exactly the batches the training process would make itself, in the same order, and a
resumed run simply starts at its next step. Workers ignore Ctrl-C (the training process
stops them after its checkpoint), and an error the user can act on comes back as a value,
raised here, so it stays one line.
"""

from __future__ import annotations

import signal
from collections.abc import Generator

import torch
from torch.utils.data import DataLoader, Dataset

from UHarmonyLib.errors import UHarmonyError
from UHarmonyLib.training.case_stream import as_is
from UHarmonyLib.training.sampling import Batch, PatchSampler


class StepBatches(Dataset["Batch | UHarmonyError"]):
    """Step number -> that step's batch (or `share` of it), made in a worker."""

    def __init__(self, sampler: PatchSampler, share: slice) -> None:
        self.sampler = sampler
        self.share = share

    def __getitem__(self, step: int) -> Batch | UHarmonyError:
        try:
            return self.sampler.batch(step, self.share)
        except UHarmonyError as e:
            return e


def _ignore_interrupt(_worker: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def training_batches(
    sampler: PatchSampler, steps: range, share: slice, workers: int, seed: int
) -> Generator[Batch, None, None]:
    """The batches of `steps`, made here (`workers` 0) or by that many worker processes."""
    if workers == 0:
        for step in steps:
            yield sampler.batch(step, share)
        return
    loader = DataLoader(
        StepBatches(sampler, share),
        batch_size=None,
        sampler=steps,
        num_workers=workers,
        collate_fn=as_is,
        worker_init_fn=_ignore_interrupt,
        generator=torch.Generator().manual_seed(seed),  # the workers' seeds, without touching torch's global RNG
    )
    for item in loader:
        if isinstance(item, UHarmonyError):
            raise item
        yield item
