"""The gate's decision in the scene: a table linked to the segmentation, a bar chart, and plain words.

Stored as nodes (not only shown in the panel) so that the site probabilities are saved
with the scene and stay attached to the segmentation they explain.
"""

from __future__ import annotations

import json
from typing import Any

import slicer
import vtk

TABLE_ROLE = "uharmonyGateTable"
CHART_ROLE = "uharmonyGateChart"
MAP_ROLE = "uharmonyGateMap"
SITE_COLUMN = "site"
PROBABILITY_COLUMN = "probability"
ATTRIBUTE_PREFIX = "UHarmony."
# the engine's gate JSON fields kept as table attributes, plus the model's entropy threshold
FIELDS = (
    "chosen",
    "entropy",
    "familiar",
    "familiar_reason",
    "distance",
    "nearest_site",
    "familiar_distance",
    "familiar_entropy",
    "site_given",
    "windows",
)


def gate_table(scene: slicer.vtkMRMLScene, gate: dict[str, Any], name: str) -> slicer.vtkMRMLTableNode:
    """One row per site (name, probability); the decision's other fields as node attributes."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    sites = vtk.vtkStringArray()
    sites.SetName(SITE_COLUMN)
    probabilities = vtk.vtkDoubleArray()
    probabilities.SetName(PROBABILITY_COLUMN)
    for site, p in gate["sites"].items():
        sites.InsertNextValue(site)
        probabilities.InsertNextValue(float(p))
    table.AddColumn(sites)
    table.AddColumn(probabilities)
    for key in FIELDS:
        table.SetAttribute(ATTRIBUTE_PREFIX + key, json.dumps(gate.get(key)))
    table.SetLocked(True)  # the model's output: table views show it read-only
    return table


def read_gate(table: slicer.vtkMRMLTableNode) -> dict[str, Any]:
    """The decision back from a gate table (for a segmentation picked later, or a reloaded scene)."""
    sites = table.GetTable().GetColumnByName(SITE_COLUMN)
    probabilities = table.GetTable().GetColumnByName(PROBABILITY_COLUMN)
    gate: dict[str, Any] = {
        "sites": {sites.GetValue(i): float(probabilities.GetValue(i)) for i in range(table.GetNumberOfRows())}
    }
    for key in FIELDS:
        value = table.GetAttribute(ATTRIBUTE_PREFIX + key)
        gate[key] = None if value is None else json.loads(value)
    return gate


def gate_chart(scene: slicer.vtkMRMLScene, table: slicer.vtkMRMLTableNode, name: str) -> slicer.vtkMRMLPlotChartNode:
    """A bar chart of the table's probabilities, one bar per site, on a fixed 0-1 axis."""
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} probabilities")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetLabelColumnName(SITE_COLUMN)
    series.SetYColumnName(PROBABILITY_COLUMN)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle("site")
    chart.SetYAxisTitle("probability")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(False)
    return chart


def link(
    segmentation: slicer.vtkMRMLSegmentationNode,
    table: slicer.vtkMRMLTableNode,
    chart: slicer.vtkMRMLPlotChartNode,
    gate_map: slicer.vtkMRMLSegmentationNode | None,
) -> None:
    """Reference the gate's nodes from the segmentation, so they travel with it in a saved scene."""
    segmentation.SetNodeReferenceID(TABLE_ROLE, table.GetID())
    segmentation.SetNodeReferenceID(CHART_ROLE, chart.GetID())
    if gate_map is not None:
        segmentation.SetNodeReferenceID(MAP_ROLE, gate_map.GetID())


def unfamiliar_message(gate: dict[str, Any]) -> str:
    """Why the case looks unlike the model's sites, in plain words; empty when it looks familiar or was not checked.

    With a named site the engine still measures the distance to every known site (when the bundle has a gate
    bank); the gate's uncertainty does not count then, since the user chose the site.
    """
    if gate.get("familiar", True) in (True, None):
        return ""
    reasons = []
    distance, limit = gate.get("distance"), gate.get("familiar_distance")
    if distance is not None and limit is not None and distance > limit:
        reasons.append(
            f"its image statistics are {distance:.2f} away from the nearest known site "
            f"({gate.get('nearest_site')}), while the model's own cases lie within {limit:.2f}"
        )
    entropy, threshold = gate.get("entropy"), gate.get("familiar_entropy")
    if not gate.get("site_given") and entropy is not None and threshold is not None and entropy > threshold:
        reasons.append(
            f"the model cannot tell which site it resembles (uncertainty {entropy:.2f} on a 0-1 scale, "
            f"above {threshold:.2f})"
        )
    why = " and ".join(reasons) or "the model's site recognizer does not recognize it"
    return (
        f"Warning: this case looks unlike the hospitals the model was trained on: {why}. "
        "The segmentation may be less reliable than usual; check it carefully."
    )


def show_gate_map(segmentation: slicer.vtkMRMLSegmentationNode, visible: bool) -> bool:
    """Show or hide the gate map made with this segmentation; False when it has none."""
    overlay = segmentation.GetNodeReference(MAP_ROLE)
    if overlay is None or overlay.GetDisplayNode() is None:
        return False
    overlay.GetDisplayNode().SetVisibility(visible)
    return True
