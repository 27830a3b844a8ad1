"""What a run trains on: the union of several MSD datasets as one site/channel/label space.

Model channels are the union of the datasets' channel names (first dataset's order,
then new names); the label space is the union of their `labels` by name. Each case
gets its label groups: for each value in its label file, the union classes it covers
(a coarse label covers the classes `merges` lists), with every union class the case
does not annotate joining its background group. Values sharing a name share a group and a
value named background is background, so a dataset's `label_values` can map a public
convention onto the model's labels (BraTS's NCR and ET are both lesion core). A dataset
without sites is one site named after the dataset. Everything wrong is refused with one
line before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from UHarmonyLib.data.datasets import CaseEntry, read_dataset_json, read_entries
from UHarmonyLib.data.labels import KNOWN_COLORS, KNOWN_TERMINOLOGY
from UHarmonyLib.data.names import SITE_NAME, SITE_NAME_RULE
from UHarmonyLib.data.public_layouts import folder_sha256
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.checksum import sha256_file

# a site name ends up in cards, reports and file names: no path separators, never '.' or '..'
PALETTE = ["#d62728", "#ffbf00", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class PlannedCase:
    """One case, with what the loss needs: its site, present channels and label groups."""

    entry: CaseEntry
    site: int
    channels: list[int]  # model-channel index of each of entry.images (a 4-D file: all of them)
    label_names: list[str]  # the case's label names by value 1..n (after value remapping)
    value_map: dict[int, int]  # label-file value -> group index
    groups: list[list[int]]  # group index -> union class indices; group 0 = background + unannotated
    four_d: bool = False


@dataclass
class Site:
    name: str
    dataset: str
    cases: list[int] = field(default_factory=list)
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)


@dataclass
class Plan:
    """Sites, channels, union labels and cases of a run, with the held-out split."""

    channels: list[str]
    modalities: list[str]
    labels: list[dict[str, Any]]  # card labels: value (union class index), name, color
    sites: list[Site]
    cases: list[PlannedCase]
    datasets: list[dict[str, Any]]  # path, name, sha256

    @property
    def label_names(self) -> list[str]:
        return [lab["name"] for lab in self.labels]

    def train_cases(self) -> list[int]:
        return [i for s in self.sites for i in s.train]

    def val_cases(self) -> list[int]:
        return [i for s in self.sites for i in s.val]

    def card_datasets(self) -> list[dict[str, Any]]:
        """The datasets as a card records them: by name and checksum, never the training machine's paths."""
        return [{k: v for k, v in d.items() if k != "path"} for d in self.datasets]

    def card_sites(self) -> list[dict[str, Any]]:
        """The card's site records: what each site contributed and how it annotates (its dataset by name)."""
        names = {d["path"]: d["name"] for d in self.datasets}
        out = []
        for s in self.sites:
            cases = [self.cases[i] for i in s.cases]
            present = sorted({c for case in cases for c in case.channels})
            annotated = list(dict.fromkeys(n for case in cases for n in case.label_names))
            out.append(
                {
                    "name": s.name,
                    "dataset": names.get(s.dataset, Path(s.dataset).parent.name),
                    "cases": len(cases),
                    "train_cases": len(s.train),
                    "validation_cases": len(s.val),
                    "labels": annotated,
                    "channels": [self.channels[c] for c in present],
                }
            )
        return out


def _label_colors(data: dict[str, Any]) -> dict[str, str]:
    """Optional `label_colors` ({name or value: "#rrggbb"}) from a dataset.json."""
    table = data.get("label_colors")
    if not isinstance(table, dict):
        return {}
    values = _value_table(data.get("labels"))
    out = {}
    for k, v in table.items():
        name = values.get(int(k)) if str(k).isdigit() else str(k)
        if name and isinstance(v, str) and len(v) == 7 and v.startswith("#"):
            out[name] = v.lower()
    return out


def _value_table(table: Any) -> dict[int, str]:
    """{value: name} of a Decathlon `{"0": name}` or nnU-Net `{name: 0}` map."""
    if not isinstance(table, dict):
        return {}
    out = {}
    for k, v in table.items():
        try:
            value, name = (int(k), str(v)) if str(k).isdigit() else (int(v), str(k))
        except (TypeError, ValueError):
            continue
        out[value] = name
    return out


def _names(table: Any) -> list[str]:
    """Names of a value -> name map, by value."""
    return [n for _, n in sorted(_value_table(table).items())]


def _groups(
    names: dict[int, str], union: list[str], merges: dict[str, list[str]], where: str
) -> tuple[dict[int, int], list[list[int]], list[str]]:
    """(label value -> group, groups, label names by group) for one case's value -> name table."""
    covered: list[list[int]] = []
    value_map = {0: 0}
    group_names: list[str] = []
    for value in sorted(v for v in names if v != 0):
        name = names[value]
        if name == "background":  # a value the model has no class for (BraTS 2024's resection cavity)
            value_map[value] = 0
            continue
        if name in group_names:  # another value of the same label (BraTS's NCR and ET: lesion core)
            value_map[value] = group_names.index(name) + 1
            continue
        if name in union:
            members = [union.index(name) + 1]
        elif name in merges:
            unknown = [m for m in merges[name] if m not in union]
            if unknown:
                raise InputError(f"{where}: merged label '{name}' names {unknown[0]!r}, not in the union labels")
            members = sorted(union.index(m) + 1 for m in merges[name])
        else:
            raise InputError(f"{where}: label '{name}' is neither in the dataset labels nor in its merges")
        if any(set(members) & set(c) for c in covered):
            raise InputError(f"{where}: label '{name}' overlaps another label of the same case")
        covered.append(members)
        value_map[value] = len(covered)
        group_names.append(name)
    taken = {k for c in covered for k in c}
    background = [0] + [k for k in range(1, len(union) + 1) if k not in taken]
    return value_map, [background, *covered], group_names


def _dataset_name(file: Path, data: dict[str, Any]) -> str:
    name = data.get("name")
    return str(name) if isinstance(name, str) and name.strip() else file.parent.name


@dataclass
class _Spaces:
    """The union channel and label spaces, grown dataset by dataset (a model card's entries first)."""

    channels: list[str]
    modalities: dict[str, str]
    union: list[str]
    colors: dict[str, str]
    merges: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of_card(cls, base_channels: Sequence[dict[str, str]], base_labels: Sequence[dict[str, Any]]) -> _Spaces:
        return cls(
            channels=[c["name"] for c in base_channels],
            modalities={c["name"]: c["modality"] for c in base_channels},
            union=[lab["name"] for lab in base_labels],
            colors={lab["name"]: lab["color"] for lab in base_labels},
        )

    def add(self, file: Path, data: dict[str, Any]) -> list[str]:
        """Merge one dataset's channels, labels, merges and colors; its channel names in order."""
        names = _names(data.get("channel_names") or data.get("modality"))
        if not names:
            raise InputError(f"{file}: no channel_names (or modality) map; cannot tell the channels")
        modality = _value_table(data.get("modality"))
        for i, c in enumerate(names):
            if c not in self.channels:
                self.channels.append(c)
                m = modality.get(i, c)
                self.modalities[c] = m if m != c else "MR"
        for n in _names(data.get("labels")):
            if n != "background" and n not in self.union:
                self.union.append(n)
        for k, v in (data.get("merges") or {}).items():
            self.merges.setdefault(str(k), [str(m) for m in v])
        self.colors.update({k: v for k, v in _label_colors(data).items() if k not in self.colors})
        return names

    def labels(self) -> list[dict[str, Any]]:
        return [
            {
                "value": k + 1,
                "name": n,
                "color": self.colors.get(n) or KNOWN_COLORS.get(n) or PALETTE[k % len(PALETTE)],
                **({"terminology": KNOWN_TERMINOLOGY[n]} if n in KNOWN_TERMINOLOGY else {}),
            }
            for k, n in enumerate(self.union)
        ]


def _dataset_record(file: Path, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(file.resolve()),
        "name": _dataset_name(file, data),
        "sha256": sha256_file(file) if file.is_file() else folder_sha256(file, data),
        "mni_template": "MNI ICBM152" in str(data.get("description", "")),
    }


def _value_names(data: dict[str, Any], i: int, site_name: str) -> dict[int, str]:
    """Label value -> name of case i: its own list, its site's label set, or the dataset's label_values/labels."""
    own = data["training"][i].get("labels")
    if isinstance(own, list):  # the case's own label names, values 1..n
        return {k + 1: str(n) for k, n in enumerate(own)}
    label_sets = data.get("label_sets")
    if isinstance(label_sets, dict) and site_name in label_sets:
        return {k: v for k, v in _value_table(label_sets[site_name]).items() if k != 0}
    table = data.get("label_values") or data.get("labels")  # plain MSD: its labels
    return {k: v for k, v in _value_table(table).items() if k != 0}


def _plan_dataset(
    file: Path,
    data: dict[str, Any],
    entries: list[CaseEntry],
    names: list[str],
    spaces: _Spaces,
    sites: dict[str, Site],
    cases: list[PlannedCase],
) -> None:
    """Check each case of one dataset and append it, in the union spaces, to `cases` and its site."""
    default_site = _dataset_name(file, data)
    for i, entry in enumerate(entries):
        where = f"{file}: training[{i}] ({entry.case})"
        site_name = entry.site or default_site
        if not SITE_NAME.fullmatch(site_name):
            source = "" if entry.site else ' (the dataset\'s name, as the case names no "site")'
            raise InputError(f"{where}: site {site_name!r}{source}: {SITE_NAME_RULE}")
        unknown = [c for c in entry.channels if c not in names]
        if unknown:
            raise InputError(f"{where}: channel '{unknown[0]}' is not in the dataset's channel_names")
        four_d = len(entry.images) == 1 and len(entry.channels) > 1
        if not entry.channels or (len(entry.channels) != len(entry.images) and not four_d):
            raise InputError(f"{where}: {len(entry.images)} image file(s) but channels {entry.channels}")
        value_map, groups, group_names = _groups(_value_names(data, i, site_name), spaces.union, spaces.merges, where)
        site = sites.setdefault(site_name, Site(site_name, str(file.resolve())))
        site.cases.append(len(cases))
        cases.append(
            PlannedCase(
                entry=entry,
                site=list(sites).index(site_name),
                channels=[spaces.channels.index(c) for c in entry.channels],
                label_names=group_names,
                value_map=value_map,
                groups=groups,
                four_d=four_d,
            )
        )


def _refuse_empty_sites(file: Path, data: dict[str, Any], sites: dict[str, Site]) -> None:
    """A site the dataset lists but no case belongs to would vanish from the model unnoticed."""
    listed = data.get("sites")
    for site in listed if isinstance(listed, list) else []:
        name = str(site.get("name", "")) if isinstance(site, dict) else str(site)
        if name not in sites:
            raise InputError(f'{file}: site {name!r} is listed in "sites" but no training case belongs to it')


def _refuse_shared_files(datasets: list[tuple[Path, list[CaseEntry]]]) -> None:
    """A case listed twice (or two cases sharing a file) could land in training and validation: leakage."""
    owner: dict[Path, str] = {}
    for file, entries in datasets:
        for i, entry in enumerate(entries):
            where = f"{file}: training[{i}] ({entry.case})"
            for path in dict.fromkeys(p.resolve() for p in [*entry.images, entry.label]):
                first = owner.setdefault(path, where)
                if first != where:
                    raise InputError(
                        f"{where}: {path.name} is also a file of {first}; list each case once "
                        "(a case listed twice can land in both training and validation)"
                    )


def _hold_out(sites: list[Site], val_fraction: float, seed: int) -> None:
    """A seeded share of each site with at least 3 cases for validation, the rest for training."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    for s in sites:
        n = len(s.cases)
        held = 0 if n < 3 or val_fraction <= 0 else min(n - 1, max(1, round(val_fraction * n)))
        order = rng.permutation(n)
        s.val = sorted(s.cases[k] for k in order[:held])
        s.train = sorted(s.cases[k] for k in order[held:])


def plan_training(
    paths: list[Path],
    val_fraction: float,
    seed: int,
    base_channels: Sequence[dict[str, str]] = (),
    base_labels: Sequence[dict[str, Any]] = (),
) -> Plan:
    """Read every dataset, build the union spaces and label groups, and hold out validation cases.

    `base_channels` / `base_labels` (a model card's) come first in the union spaces, so an
    existing model's channel and class indices hold for the planned cases.
    """
    spaces = _Spaces.of_card(base_channels, base_labels)
    loaded = []
    for path in paths:
        file, data = read_dataset_json(path)
        entries = read_entries(file, data)
        loaded.append((file, data, entries, spaces.add(file, data)))
    if not spaces.union:
        raise InputError(f"{paths[0]}: the dataset defines no labels besides background")
    _refuse_shared_files([(file, entries) for file, _, entries, _ in loaded])
    sites: dict[str, Site] = {}
    cases: list[PlannedCase] = []
    for file, data, entries, names in loaded:
        _plan_dataset(file, data, entries, names, spaces, sites, cases)
    if not cases:
        raise InputError(f"{paths[0]}: no training cases")
    for file, data, _, _ in loaded:
        _refuse_empty_sites(file, data, sites)
    _hold_out(list(sites.values()), val_fraction, seed)
    return Plan(
        channels=spaces.channels,
        modalities=[spaces.modalities[c] for c in spaces.channels],
        labels=spaces.labels(),
        sites=list(sites.values()),
        cases=cases,
        datasets=[_dataset_record(file, data) for file, data, _, _ in loaded],
    )
