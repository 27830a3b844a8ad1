"""Segment one case of the scene: refuse unfit inputs, run `uharmony segment`, import every result at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

from UHarmonyLib.commands import segment as segment_command  # torch-free: the engine's segment options
from UHarmonyLib.files.volumes import ABSENT  # the engine's marker of an absent channel
from UHarmonyLib.options import to_argv
from UHarmonySlicerLib.engine import EventCallback, Job, Outcome, Steps, engine_command
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.gate_display import gate_chart, gate_table, link, unfamiliar_message
from UHarmonySlicerLib.models import ModelInfo
from UHarmonySlicerLib.scene import all_or_nothing, place_beside
from UHarmonySlicerLib.volumes import (
    check_channels,
    export_volume,
    first_present,
    import_segmentation,
    load_segmentation_file,
)


@dataclass
class SegmentResult:
    """The nodes one run added, and what the engine reported."""

    segmentation: slicer.vtkMRMLSegmentationNode
    gate_table: slicer.vtkMRMLTableNode
    gate_chart: slicer.vtkMRMLPlotChartNode
    gate_map: slicer.vtkMRMLSegmentationNode | None
    gate: dict[str, Any]
    volumes_ml: dict[str, float]
    warning: str  # plain-words unfamiliar-case warning, empty when the case looks familiar
    payload: dict[str, Any]


def check_model(model: ModelInfo, site: str) -> None:
    """Refuse an unusable bundle or a site the model does not know."""
    if not model.usable:
        raise InputRefused(f"The model {model.path.name} cannot be used: {model.problem}")
    if site != "auto" and site not in model.site_names:
        raise InputRefused(f"The model does not know the site '{site}'; it knows {', '.join(model.site_names)}.")


def segment_arguments(
    model: ModelInfo,
    inputs: Sequence[Path | str],
    out: Path,
    site: str,
    device: str,
    mirror: bool = True,
    gate_map: Path | None = None,
) -> list[str]:
    """The `uharmony segment` arguments for one case (the cohort run uses them too), from the engine's options."""
    values = {
        "model": model.path,
        "channels": list(inputs),
        "out": out,
        "site": site,
        "device": device,
        "no_mirror": not mirror,
        "gate_map": gate_map,
    }
    return to_argv(segment_command.OPTIONS, values)


def segment_job(
    scene: slicer.vtkMRMLScene,
    model: ModelInfo,
    volumes: Sequence[slicer.vtkMRMLScalarVolumeNode | None],
    site: str = "auto",
    device: str = "auto",
    gate_map: bool = True,
    name: str = "",
    on_event: EventCallback | None = None,
    mirror: bool = True,
) -> Job:
    """A job that segments one case; refused inputs raise `InputRefused` here, before it starts.

    A channel given as None is absent (zeros, as in training); results lie on the
    first given volume's grid. The gate map (the most likely site per region) needs the gate, so it is only made
    when the site is left to the gate.
    """
    check_model(model, site)
    check_channels(volumes, model.channel_names)
    reference = first_present(volumes)
    name = name or f"{reference.GetName()} segmentation"

    def steps(temp: Path) -> Steps:
        inputs = [ABSENT if v is None else export_volume(v, temp / f"channel_{i}.nrrd") for i, v in enumerate(volumes)]
        labels = temp / "labels.nrrd"
        map_path = temp / "gate_map.seg.nrrd" if gate_map and site == "auto" else None
        args = segment_arguments(model, inputs, labels, site, device, mirror, map_path)
        outcome: Outcome = yield engine_command("segment", *args)
        return import_results(scene, model, reference, outcome.result or {}, labels, map_path, name)

    return Job(steps, on_event, device)


def import_results(
    scene: slicer.vtkMRMLScene,
    model: ModelInfo,
    reference: slicer.vtkMRMLScalarVolumeNode,
    payload: dict[str, Any],
    labels: Path,
    map_path: Path | None,
    name: str,
) -> SegmentResult:
    """Add the segmentation, its gate table and chart and the hidden gate map, all or none."""
    gate = {**payload["gate"], "familiar_entropy": model.familiar_entropy}
    with all_or_nothing(scene):
        segmentation = import_segmentation(scene, labels, model.labels, reference, name)
        segmentation.SetAttribute("UHarmony.model", f"{model.name} v{model.version}")
        segmentation.SetAttribute("UHarmony.modelPath", str(model.path))
        table = gate_table(scene, gate, f"{name} gate")
        chart = gate_chart(scene, table, f"{name} gate")
        for node in (table, chart, *[chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]):
            place_beside(scene, node, reference)
        overlay = None
        if map_path is not None:
            overlay = load_segmentation_file(scene, map_path, f"{name} gate map", reference)
            overlay.GetDisplayNode().SetVisibility(False)
        link(segmentation, table, chart, overlay)
    return SegmentResult(
        segmentation=segmentation,
        gate_table=table,
        gate_chart=chart,
        gate_map=overlay,
        gate=gate,
        volumes_ml=dict(payload.get("volumes_ml", {})),
        warning=unfamiliar_message(gate),
        payload=payload,
    )
