"""Segment many cases in one run and tabulate them: case, chosen site, gate probabilities, lesion volumes.

Cases come from a folder of image files or from the scene's volumes. With a
one-channel model every image is a case; otherwise a case's channels are told apart
by their names, `CASE_0001.nii.gz` (nnU-Net's channel index) or `CASE_T2.nii.gz` /
a volume named `CASE T2` (the card's channel name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer
import vtk

from UHarmonySlicerLib.engine import EventCallback, Job, Steps, engine_command
from UHarmonySlicerLib.errors import EngineError, InputRefused
from UHarmonySlicerLib.models import ModelInfo
from UHarmonySlicerLib.scene import all_or_nothing
from UHarmonySlicerLib.segment import check_model, segment_arguments
from UHarmonySlicerLib.volumes import check_channels, export_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEPARATORS = "_- ."
UNSAFE = re.compile(r'[\\/:*?"<>|]+')  # characters a scene volume's name may hold but a file name must not


@dataclass
class Case:
    """One case: a file or a scene volume per model channel."""

    name: str
    sources: list[Path | slicer.vtkMRMLScalarVolumeNode]


def image_stem(path: Path) -> str | None:
    """The file name without its image suffix; None for files that are not images (or are segmentations)."""
    name = path.name
    if name.lower().endswith(".seg.nrrd"):
        return None
    suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), None)
    return None if suffix is None else name[: -len(suffix)]


def split_channel(name: str, channel_names: Sequence[str]) -> tuple[str, int] | None:
    """(case, channel index) from a name ending in a channel's 4-digit index or its name; None if neither."""
    index = re.fullmatch(r"(.+)_(\d{4})", name)
    if index and int(index.group(2)) < len(channel_names):
        return index.group(1), int(index.group(2))
    for i, channel in enumerate(channel_names):
        tail = name[-len(channel) :]
        head = name[: -len(channel)]
        if tail.lower() == channel.lower() and len(head) > 1 and head[-1] in SEPARATORS:
            return head.rstrip(SEPARATORS), i
    return None


def group_cases(items: Sequence[tuple[str, Any]], channel_names: Sequence[str]) -> list[Case]:
    """Group named sources into cases, one source per channel; refuse what cannot be grouped."""
    if len(channel_names) == 1:
        return [Case(re.sub(r"_0000$", "", name), [source]) for name, source in items]
    grouped: dict[str, list[Any]] = {}
    for name, source in items:
        split = split_channel(name, channel_names)
        if split is None:
            raise InputRefused(
                f"Cannot tell which channel '{name}' is: name it CASE_0000 ... or CASE_{channel_names[0]} ..."
            )
        case, channel = split
        slots = grouped.setdefault(case, [None] * len(channel_names))
        if slots[channel] is not None:
            raise InputRefused(f"Case '{case}' has two images for channel {channel_names[channel]}.")
        slots[channel] = source
    for case, slots in grouped.items():
        missing = [channel_names[i] for i, s in enumerate(slots) if s is None]
        if missing:
            raise InputRefused(f"Case '{case}' has no image for channel {', '.join(missing)}.")
    return [Case(case, slots) for case, slots in sorted(grouped.items())]


def cases_from_folder(folder: Path, channel_names: Sequence[str]) -> list[Case]:
    """Image files directly inside `folder`, grouped into cases."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputRefused(f"{folder} is not a folder.")
    items = sorted((stem, p) for p in folder.iterdir() if p.is_file() and (stem := image_stem(p)) is not None)
    if not items:
        raise InputRefused(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return group_cases(items, channel_names)


def cases_from_volumes(volumes: Sequence[slicer.vtkMRMLScalarVolumeNode], channel_names: Sequence[str]) -> list[Case]:
    """Scene image volumes grouped into cases by their names; label maps and vector volumes are left out."""
    images = [v for v in volumes if v.GetClassName() == "vtkMRMLScalarVolumeNode"]
    if not images:
        raise InputRefused("The scene holds no image volume.")
    return group_cases([(v.GetName(), v) for v in images], channel_names)


def scene_volumes(scene: slicer.vtkMRMLScene) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """Every scalar volume of the scene, in scene order."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


@dataclass
class CohortResult:
    table: slicer.vtkMRMLTableNode
    rows: list[dict[str, Any]]


def cohort_job(
    scene: slicer.vtkMRMLScene,
    model: ModelInfo,
    cases: Sequence[Case],
    site: str = "auto",
    device: str = "auto",
    output_folder: Path | None = None,
    name: str = "UHarmony cohort",
    on_event: EventCallback | None = None,
    mirror: bool = False,
) -> Job:
    """A job that segments every case and adds one results table at the end (a cancelled run adds nothing).

    A case the engine refuses gets a row with its reason and the run goes on. With an
    output folder each case's label map is kept there as CASE.seg.nrrd, which Slicer
    opens with the model's segment names and colors.
    """
    if not cases:
        raise InputRefused("No case to segment.")
    check_model(model, site)
    for case in cases:
        if not any(isinstance(s, Path) for s in case.sources):  # scene volumes; files are checked by the engine
            try:
                check_channels(case.sources, model.channel_names)
            except InputRefused as e:
                raise InputRefused(f"Case {case.name}: {e}") from None
    if output_folder is not None and not Path(output_folder).is_dir():
        raise InputRefused(f"Output folder {output_folder} does not exist.")

    def steps(temp: Path) -> Steps:
        rows = []
        for index, case in enumerate(cases):
            if on_event is not None:
                on_event({"event": "case", "index": index, "total": len(cases), "name": case.name})
            inputs = [
                s if isinstance(s, Path) else export_volume(s, temp / f"case{index}_{c}.nrrd")
                for c, s in enumerate(case.sources)
            ]
            folder = Path(output_folder) if output_folder is not None else temp
            out = folder / f"{UNSAFE.sub('_', case.name)}.seg.nrrd"
            try:
                outcome = yield engine_command("segment", *segment_arguments(model, inputs, out, site, device, mirror))
            except EngineError as e:
                rows.append({"case": case.name, "status": str(e)})
                continue
            rows.append({"case": case.name, "status": "ok", **(outcome.result or {})})
        with all_or_nothing(scene):
            table = results_table(scene, model, rows, name)
        return CohortResult(table, rows)

    return Job(steps, on_event, device)


def column_names(model: ModelInfo) -> list[str]:
    """case, status, chosen site, familiar, entropy, one probability per site, one volume (ml) per label."""
    return [
        "case",
        "status",
        "site",
        "familiar",
        "entropy",
        *[f"p({s})" for s in model.site_names],
        *[f"{lab['name']} (ml)" for lab in model.labels],
    ]


def row_values(model: ModelInfo, row: dict[str, Any]) -> list[Any]:
    """A table row; numbers are NaN for a case the engine refused."""
    gate = row.get("gate") or {}
    probabilities = gate.get("sites") or {}
    volumes = row.get("volumes_ml") or {}
    familiar = gate.get("familiar")
    return [
        row["case"],
        row["status"],
        gate.get("chosen", ""),
        "" if familiar is None else ("yes" if familiar else "no"),
        gate.get("entropy", math.nan),
        *[probabilities.get(s, math.nan) for s in model.site_names],
        *[volumes.get(lab["name"], math.nan) for lab in model.labels],
    ]


def results_table(
    scene: slicer.vtkMRMLScene, model: ModelInfo, rows: Sequence[dict[str, Any]], name: str
) -> slicer.vtkMRMLTableNode:
    """One row per case; text columns first, numbers as doubles (so they sort and plot)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    names = column_names(model)
    text = 4  # case, status, site, familiar
    columns = []
    for i, column in enumerate(names):
        array = vtk.vtkStringArray() if i < text else vtk.vtkDoubleArray()
        array.SetName(column)
        columns.append(array)
    for row in rows:
        for i, value in enumerate(row_values(model, row)):
            if i < text:
                columns[i].InsertNextValue(str(value))
            else:
                columns[i].InsertNextValue(float(value))
    for array in columns:
        table.AddColumn(array)
    table.SetAttribute("UHarmony.model", f"{model.name} v{model.version}")
    table.SetLocked(True)  # results: table views show them read-only
    return table


def export_csv(table: slicer.vtkMRMLTableNode, path: Path) -> Path:
    """Write the table as CSV with MRML's own table writer."""
    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(table):
        raise OSError(f"cannot write {path}")
    return Path(path)
