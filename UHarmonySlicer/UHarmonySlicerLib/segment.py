"""Segment one case of the scene: refuse unfit inputs, run `uharmony segment`, import every result at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import slicer

from UHarmonyLib.commands import segment as segment_command  # torch-free: the engine's segment options
from UHarmonyLib.files.volumes import ABSENT  # the engine's marker of an absent channel
from UHarmonyLib.options import MIRRORED_PASSES, to_argv
from UHarmonySlicerLib.engine import EventCallback, Job, Outcome, Steps, engine_command
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.gate_display import (
    CHART_ROLE,
    MAP_ROLE,
    TABLE_ROLE,
    gate_chart,
    gate_table,
    link,
    unfamiliar_message,
)
from UHarmonySlicerLib.models import ModelInfo
from UHarmonySlicerLib.scene import all_or_nothing, place_beside
from UHarmonySlicerLib.volumes import (
    check_channels,
    export_volume,
    first_present,
    import_segmentation,
    load_segmentation_file,
    set_reference_geometry,
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
    mirror: bool = False,
    gate_map: Path | None = None,
) -> list[str]:
    """The `uharmony segment` arguments for one case (the cohort run uses them too), from the engine's options."""
    values = {
        "model": model.path,
        "channels": list(inputs),
        "out": out,
        "site": site,
        "device": device,
        "mirror_passes": MIRRORED_PASSES if mirror else None,
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
    mirror: bool = False,
    output: slicer.vtkMRMLSegmentationNode | None = None,
) -> Job:
    """A job that segments one case; refused inputs raise `InputRefused` here, before it starts.

    A channel given as None is absent (zeros, as in training); results lie on the
    first given volume's grid. The gate map (the most likely site per region) needs the gate, so it is only made
    when the site is left to the gate. With `output`, that segmentation is updated in place (its segments and
    gate nodes replaced) instead of a new one being added, as Slicer's AI modules do on a repeated Apply.
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
        result = import_results(scene, model, reference, outcome.result or {}, labels, map_path, name)
        return result if output is None else replace_output(scene, result, output, reference)

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


def replace_output(
    scene: slicer.vtkMRMLScene,
    result: SegmentResult,
    output: slicer.vtkMRMLSegmentationNode,
    reference: slicer.vtkMRMLScalarVolumeNode,
) -> SegmentResult:
    """Move a finished run's segments into `output` and drop the gate nodes of its previous run.

    Runs only once every new node exists, so a failed or cancelled run leaves `output` as it was.
    """
    fresh = result.segmentation
    old = [output.GetNodeReference(role) for role in (TABLE_ROLE, CHART_ROLE, MAP_ROLE)]
    if old[1] is not None:
        old += [old[1].GetNthPlotSeriesNode(i) for i in range(old[1].GetNumberOfPlotSeriesNodes())]
    place_beside(scene, output, reference)
    output.GetSegmentation().DeepCopy(fresh.GetSegmentation())
    segments = output.GetSegmentation()
    for i in range(segments.GetNumberOfSegments()):  # DeepCopy marks names and colours auto-generated again
        segments.GetNthSegment(i).SetNameAutoGenerated(False)
        segments.GetNthSegment(i).SetColorAutoGenerated(False)
    set_reference_geometry(output, reference)
    output.CreateDefaultDisplayNodes()
    for key in ("UHarmony.model", "UHarmony.modelPath"):
        output.SetAttribute(key, fresh.GetAttribute(key))
    output.RemoveNodeReferenceIDs(MAP_ROLE)
    link(output, result.gate_table, result.gate_chart, result.gate_map)
    for node in [fresh, *old]:
        if node is not None and scene.IsNodePresent(node):
            remove_with_display(scene, node)
    return replace(result, segmentation=output)


def remove_with_display(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> None:
    """Remove a node and its display and storage nodes (removing a node alone leaves them behind)."""
    extra = []
    if isinstance(node, slicer.vtkMRMLDisplayableNode):
        extra += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if isinstance(node, slicer.vtkMRMLStorableNode):
        extra.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for other in extra:
        if other is not None and scene.IsNodePresent(other):
            scene.RemoveNode(other)
