"""Fitting a harmonization on a planned dataset's cases: shared by `uharmony train --harmonize`
and `uharmony harmonize --fit`, so both learn from exactly the images training reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import SimpleITK as sitk

from UHarmonyLib import image_harmonization
from UHarmonyLib.data.cases import LoadedCase
from UHarmonyLib.data.plan import Plan


def fit_on_cases(
    method: str,
    plan: Plan,
    case_ids: Sequence[int],
    load: Callable[[int], LoadedCase],
    channels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`method`'s parameters per channel (default: all of the plan's), from the cases that acquire it."""
    wanted = list(channels) if channels is not None else plan.channels

    def images(channel: str) -> Iterator[tuple[str, sitk.Image]]:
        index = plan.channels.index(channel)
        for i in case_ids:
            case = plan.cases[i]
            if index in case.channels:
                where = str(case.entry.images[min(case.channels.index(index), len(case.entry.images) - 1)])
                yield where, load(i).images[index]

    return image_harmonization.fit(method, {c: images(c) for c in wanted})
