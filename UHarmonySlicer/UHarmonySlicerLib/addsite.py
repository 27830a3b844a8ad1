"""Add a site from annotated cases of the scene: export them as a dataset, run `uharmony add-site`.

The new bundle is written as the next version in the user's models folder; the
parent bundle is never touched, so the previous version stays available.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer
import vtk

from UHarmonyLib.commands import add_site as add_site_command  # torch-free: the engine's add-site options
from UHarmonyLib.options import to_argv
from UHarmonySlicerLib.engine import Event, EventCallback, Job, Steps, engine_command
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.models import ModelInfo, next_version_folder, read_model
from UHarmonySlicerLib.scene import temporary_nodes
from UHarmonySlicerLib.volumes import check_channels, export_volume, first_present

# the engine's loss log line, e.g. "step 10/150 segmentation loss 0.4321"
LOSS_LINE = re.compile(r"step (\d+)/(\d+) segmentation loss (\S+)")


@dataclass
class Pair:
    """One annotated case: a volume per model channel and its segmentation."""

    volumes: list[slicer.vtkMRMLScalarVolumeNode | None]  # None: the case lacks that channel
    segmentation: slicer.vtkMRMLSegmentationNode


@dataclass
class AddSiteResult:
    model: ModelInfo  # the new version, as the model selector lists it
    payload: dict[str, Any]


def segment_labels(
    segmentation: slicer.vtkMRMLSegmentationNode, labels: Sequence[dict[str, Any]]
) -> list[tuple[str, str]]:
    """(segment id, label name) for every segment, in the model's label order; refuse names the model lacks.

    Names match case-insensitively, so "Lesion core" drawn by hand counts as the
    model's "lesion core".
    """
    by_name = {lab["name"].lower(): lab["name"] for lab in labels}
    segmentation_ = segmentation.GetSegmentation()
    found: dict[str, str] = {}
    for i in range(segmentation_.GetNumberOfSegments()):
        segment_name = segmentation_.GetNthSegment(i).GetName()
        label = by_name.get(segment_name.strip().lower())
        if label is None:
            raise InputRefused(
                f"Segment '{segment_name}' of {segmentation.GetName()} is not a label of the model; "
                f"name segments {', '.join(repr(lab['name']) for lab in labels)}."
            )
        if label in found.values():
            raise InputRefused(f"{segmentation.GetName()} has two segments named '{label}'.")
        found[segmentation_.GetNthSegmentID(i)] = label
    if not found:
        raise InputRefused(f"{segmentation.GetName()} has no segment.")
    order = [lab["name"] for lab in labels]
    return sorted(found.items(), key=lambda item: order.index(item[1]))


def check_pairs(model: ModelInfo, pairs: Sequence[Pair], site: str) -> None:
    """Refuse, before anything is written, what the engine would refuse later or train on wrongly."""
    if not model.usable:
        raise InputRefused(f"The model {model.path.name} cannot be used: {model.problem}")
    if not site.strip():
        raise InputRefused("Name the new site.")
    if site in model.site_names:
        raise InputRefused(f"The model already has a site named '{site}'; choose another name.")
    if not pairs:
        raise InputRefused("Add at least one annotated case (volume and segmentation).")
    for i, pair in enumerate(pairs, start=1):
        if pair.segmentation is None:
            raise InputRefused(f"Case {i}: no segmentation selected.")
        try:
            check_channels(pair.volumes, model.channel_names)
        except InputRefused as e:
            raise InputRefused(f"Case {i}: {e}") from None
        segment_labels(pair.segmentation, model.labels)


def export_labelmap(scene: slicer.vtkMRMLScene, pair: Pair, labels: Sequence[dict[str, Any]], path: Path) -> list[str]:
    """Write the segmentation as a label map on the first volume's grid, values 1..k; returns the k label names."""
    reference = first_present(pair.volumes)
    matched = segment_labels(pair.segmentation, labels)
    ids = vtk.vtkStringArray()
    for segment_id, _ in matched:
        ids.InsertNextValue(segment_id)
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "uharmony export")
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(pair.segmentation, ids, labelmap, reference):
            raise InputRefused(f"Cannot export {pair.segmentation.GetName()} onto {reference.GetName()}.")
        export_volume(labelmap, path)
    return [name for _, name in matched]


def export_dataset(
    scene: slicer.vtkMRMLScene,
    folder: Path,
    pairs: Sequence[Pair],
    site: str,
    channels: Sequence[dict[str, str]],
    labels: Sequence[dict[str, Any]],
) -> Path:
    """The pairs as a Decathlon-layout dataset (the layout `uharmony train` and `add-site` read); returns dataset.json.

    Each case lists its own label names (values 1..k), so a site that annotated only
    some of the model's labels is trained on exactly those, and its own channels, so a
    case without one channel trains with zeros there, as the engine does.
    """
    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", site).strip("_") or "site"
    training = []
    for i, pair in enumerate(pairs):
        case = f"{slug}_{i:03d}"
        present = [(c, v) for c, v in enumerate(pair.volumes) if v is not None]  # an absent channel has no file
        images = [f"imagesTr/{case}_{c:04d}.nrrd" for c, _ in present]
        for (_, volume), rel in zip(present, images):
            export_volume(volume, folder / rel)
        label = f"labelsTr/{case}.nrrd"
        names = export_labelmap(scene, pair, labels, folder / label)
        channel_names = [channels[c]["name"] for c, _ in present]
        training.append({"image": images, "label": label, "site": site, "channels": channel_names, "labels": names})
    dataset = {
        "name": site,
        "description": f"Cases of site {site} annotated in 3D Slicer, exported by the UHarmony module.",
        "tensorImageSize": "3D",
        "channel_names": {str(i): c["name"] for i, c in enumerate(channels)},
        "modality": {str(i): c.get("modality", "MR") for i, c in enumerate(channels)},
        "labels": {"0": "background", **{str(lab["value"]): lab["name"] for lab in labels}},
        "label_colors": {lab["name"]: lab["color"] for lab in labels},
        "file_ending": ".nrrd",
        "numTraining": len(training),
        "training": training,
    }
    path = folder / "dataset.json"
    path.write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return path


def add_site_arguments(model: ModelInfo, data: Path, site: str, out: Path, steps: int, device: str) -> list[str]:
    """The `uharmony add-site` arguments, from the engine's own description of its options."""
    values = {"model": model.path, "data": data, "site": site, "out": out, "steps": steps, "device": device}
    return to_argv(add_site_command.OPTIONS, values)


def add_site_job(
    scene: slicer.vtkMRMLScene,
    model: ModelInfo,
    pairs: Sequence[Pair],
    site: str,
    user_folder: Path,
    model_folders: Sequence[Path] = (),
    steps: int = 150,
    device: str = "auto",
    on_event: EventCallback | None = None,
) -> Job:
    """A job that fine-tunes the model for one more site and registers the result as a new version."""
    check_pairs(model, pairs, site)
    if steps < 1:
        raise InputRefused("Training needs at least 1 step.")
    out = next_version_folder(model, model_folders, user_folder)

    def run(temp: Path) -> Steps:
        data = export_dataset(scene, temp / "dataset", pairs, site, model.channels, model.labels)
        return (yield from add_site_steps(model, data, site, out, steps, device))

    return Job(run, on_event, device)


def add_site_steps(model: ModelInfo, data: Path, site: str, out: Path, steps: int, device: str) -> Steps:
    """`uharmony add-site` on a written dataset, then the new version it made (a Job's steps)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    outcome = yield engine_command("add-site", *add_site_arguments(model, data, site, out, steps, device))
    return AddSiteResult(read_model(out), outcome.result or {})


class TrainingCurve:
    """The live loss curve of an add-site run, and the held-out Dice before and after, as table + chart nodes."""

    def __init__(self, scene: slicer.vtkMRMLScene, name: str = "UHarmony add-site") -> None:
        self.loss = self._table(scene, f"{name} loss", "loss")
        self.dice = self._table(scene, f"{name} held-out Dice", "Dice")
        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} training")
        for table, column, style in (
            (self.loss, "loss", slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone),
            (self.dice, "Dice", slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle),
        ):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetXColumnName("step")
            series.SetYColumnName(column)
            series.SetMarkerStyle(style)
            series.SetUniqueColor()
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
        self.chart.SetXAxisTitle("step")
        self.chart.SetYAxisTitle("loss / Dice")
        self.nodes = [self.loss, self.dice, self.chart]
        self.nodes += [self.chart.GetNthPlotSeriesNode(i) for i in range(self.chart.GetNumberOfPlotSeriesNodes())]

    @staticmethod
    def _table(scene: slicer.vtkMRMLScene, name: str, column: str) -> slicer.vtkMRMLTableNode:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        for title in ("step", column):
            array = vtk.vtkDoubleArray()
            array.SetName(title)
            table.AddColumn(array)
        return table

    @staticmethod
    def _append(table: slicer.vtkMRMLTableNode, step: float, value: float) -> None:
        row = table.AddEmptyRow()
        table.SetCellText(row, 0, str(step))
        table.SetCellText(row, 1, str(value))

    def on_event(self, event: Event) -> None:
        """Add a point for every loss line of the engine's log."""
        if event.get("event") != "log":
            return
        match = LOSS_LINE.search(str(event.get("message", "")))
        if match:
            self._append(self.loss, int(match.group(1)), float(match.group(3)))

    def add_result(self, payload: dict[str, Any]) -> None:
        """Held-out whole-lesion Dice of the parent (step 0) and the new version (last step), when measured."""
        metrics = payload.get("metrics") or {}
        for step, key in ((0, "before"), (payload.get("steps", 0), "after")):
            dice = (metrics.get(key) or {}).get("mean_dice_whole_lesion")
            if dice is not None and not math.isnan(dice):
                self._append(self.dice, step, dice)

    def remove(self, scene: slicer.vtkMRMLScene) -> None:
        """Take the curve out of the scene (a cancelled run leaves nothing behind)."""
        for node in self.nodes:
            scene.RemoveNode(node)
