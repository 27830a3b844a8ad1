"""Training cases read from disk when a patch needs them (`train --data-mode stream`): memory stays flat.

A scan first reads every case once, in DataLoader workers, to refuse a bad file before
training starts (the same one-line error, for the same first case, as the in-memory path)
and to measure the spacings the model grid is chosen from; it holds one case per worker.
The training cases are then a MONAI CacheDataset: the `--cache-cases` cases drawn most
often (a small site's before a large site's) are prepared once, before any DataLoader
worker starts, so forked workers share them; every other case is read and moved to model
space each time a patch is cut from it, by the same `load_case` and `prepare_case` the
in-memory path uses. The cases are the in-memory ones, bit for bit, so the patches are too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from monai.data import CacheDataset
from monai.transforms import Transform
from torch.utils.data import DataLoader, Dataset

from UHarmonyLib.data.cases import LoadedCase, load_case, model_spacing
from UHarmonyLib.data.plan import Plan
from UHarmonyLib.errors import UHarmonyError
from UHarmonyLib.training.patches import PreparedCase, prepare_case

T = TypeVar("T")
Spacing = tuple[float, float, float]


class Lazy(Sequence[T]):
    """A sequence whose items are made when read: a pass over it holds one at a time."""

    def __init__(self, length: int, make: Callable[[int], T]) -> None:
        self.length = length
        self.make = make

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            return [self.make(i) for i in range(self.length)[index]]
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self.make(index % self.length)


class CaseReader:
    """A planned case's files, read as the in-memory path reads them (picklable, for worker processes)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __call__(self, index: int) -> LoadedCase:
        return load_case(self.plan.cases[index], len(self.plan.channels))


class PrepareCase(Transform):
    """MONAI transform: a planned case's index -> the case in model space, ready for patches."""

    def __init__(self, plan: Plan, preprocessing: dict[str, Any], patch: tuple[int, ...]) -> None:
        self.plan = plan
        self.preprocessing = preprocessing
        self.patch = patch

    def __call__(self, data: int) -> PreparedCase:
        case = self.plan.cases[data]
        loaded = load_case(case, len(self.plan.channels))
        return prepare_case(loaded, self.preprocessing, self.patch, self.plan.channels, case.entry.case)


def _unwrapped(make: Callable[[], T]) -> T:
    """`make()`, with the user's one-line error unwrapped from MONAI's RuntimeError("applying transform ...")."""
    try:
        return make()
    except RuntimeError as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UHarmonyError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


class CachedCases:
    """Case `k` of the training cases from a CacheDataset that holds them most drawn first (picklable)."""

    def __init__(self, dataset: CacheDataset, position: dict[int, int]) -> None:
        self.dataset = dataset
        self.position = position

    def __call__(self, k: int) -> PreparedCase:
        return _unwrapped(lambda: self.dataset[self.position[k]])


def draw_weights(case_sites: Sequence[int], site_weights: Sequence[float]) -> list[float]:
    """How often each training case is drawn, relatively: its site's weight shared among the site's cases."""
    counts = {s: case_sites.count(s) for s in set(case_sites)}
    return [site_weights[s] / counts[s] for s in case_sites]


def streamed_cases(
    plan: Plan,
    case_ids: Sequence[int],
    weights: Sequence[float],
    preprocessing: dict[str, Any],
    patch: tuple[int, ...],
    cache: int,
    threads: int = 1,
) -> Lazy[PreparedCase]:
    """The training cases `case_ids` (in that order) as PatchSampler reads them; the `cache` most drawn stay in memory.

    `weights` are the cases' draw weights (`draw_weights`); `threads` prepare the cached cases.
    """
    order = sorted(range(len(case_ids)), key=lambda k: -weights[k])  # stable: ties keep the plan's order
    transform = PrepareCase(plan, preprocessing, patch)
    dataset = _unwrapped(
        lambda: CacheDataset(
            [case_ids[k] for k in order],
            transform,
            cache_num=cache,
            num_workers=max(1, threads),
            progress=False,
            copy_cache=False,  # patches are cut from a case, never written into it
        )
    )
    return Lazy(len(case_ids), CachedCases(dataset, {k: n for n, k in enumerate(order)}))


class _Scan(Dataset[tuple[int, Any]]):
    """One case read: its spacing on the model axes, or the error refusing it (a value, so it stays one line)."""

    def __init__(self, plan: Plan, ids: Sequence[int]) -> None:
        self.read = CaseReader(plan)
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[int, Spacing | UHarmonyError]:
        try:
            loaded = self.read(self.ids[k])
        except UHarmonyError as e:
            return self.ids[k], e
        return self.ids[k], model_spacing(loaded.images, "RAS")


def as_is(item: T) -> T:
    """DataLoader collate function for items that are already what the consumer wants."""
    return item


def scan_cases(plan: Plan, ids: Sequence[int], workers: int) -> dict[int, Spacing | UHarmonyError]:
    """Every case of `ids` read once by `workers` processes (0: this one): its spacing or its error, by case."""
    loader = DataLoader(_Scan(plan, ids), batch_size=None, num_workers=workers, collate_fn=as_is)
    return dict(loader)


def checked_spacings(found: dict[int, Spacing | UHarmonyError]) -> list[Spacing]:
    """The cases' spacings in plan order; the first case's error (as the in-memory path meets it) is raised."""
    results = [found[i] for i in sorted(found)]
    for result in results:
        if isinstance(result, UHarmonyError):
            raise result
    return [r for r in results if not isinstance(r, UHarmonyError)]
