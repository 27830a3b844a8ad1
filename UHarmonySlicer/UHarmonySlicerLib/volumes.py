"""Scene volumes to engine files, and engine label maps back to segmentation nodes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from UHarmonySlicerLib.errors import EngineError, InputRefused
from UHarmonySlicerLib.scene import place_beside

GEOMETRY_TOLERANCE = 1e-4  # mm, on the IJK-to-RAS matrix


def ijk_to_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def same_grid(a: slicer.vtkMRMLVolumeNode, b: slicer.vtkMRMLVolumeNode) -> bool:
    """Same voxel grid: dimensions, IJK-to-RAS matrix and parent transform."""
    return (
        a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()
        and np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=GEOMETRY_TOLERANCE)
        and a.GetTransformNodeID() == b.GetTransformNodeID()
    )


def first_present(volumes: Sequence[slicer.vtkMRMLNode | None]) -> slicer.vtkMRMLScalarVolumeNode:
    """The first volume given: the grid every other channel and the results must share."""
    return next(v for v in volumes if v is not None)


def check_channels(volumes: Sequence[slicer.vtkMRMLNode | None], channel_names: Sequence[str]) -> None:
    """Refuse, in one line, inputs the model cannot take: wrong count, no image, several components, other grids.

    Checked before anything is written or added to the scene. A channel left empty
    (None) is absent: the engine gives the model zeros there, as in training. Channels
    on different grids are refused rather than resampled: in the scene that usually
    means they were never registered to each other.
    """
    if len(volumes) != len(channel_names):
        raise InputRefused(
            f"The model expects {len(channel_names)} input volume(s) ({', '.join(channel_names)}); "
            f"{len(volumes)} given."
        )
    if all(v is None for v in volumes):
        raise InputRefused(f"Select a volume for at least one channel ({', '.join(channel_names)}).")
    first: slicer.vtkMRMLScalarVolumeNode | None = None
    first_name = ""
    for name, node in zip(channel_names, volumes):
        if node is None:
            continue
        label = node.GetName()
        if not isinstance(node, slicer.vtkMRMLScalarVolumeNode) or isinstance(node, slicer.vtkMRMLLabelMapVolumeNode):
            raise InputRefused(f"{label} is a {node.GetClassName()}, not an image volume; channel {name} needs one.")
        image = node.GetImageData()
        if image is None:
            raise InputRefused(f"{label} (channel {name}) holds no image data.")
        components = image.GetNumberOfScalarComponents()
        if components != 1:
            raise InputRefused(
                f"{label} has {components} values per voxel; channel {name} needs a single-component volume."
            )
        if first is None:
            first, first_name = node, name
        elif not same_grid(first, node):
            raise InputRefused(
                f"{label} (channel {name}) is not on the voxel grid of {first.GetName()} (channel "
                f"{first_name}); resample it onto {first.GetName()} first."
            )


def export_volume(node: slicer.vtkMRMLVolumeNode, path: Path) -> Path:
    """Write a volume as uncompressed NRRD (fast to write and read) in its own, untransformed coordinates."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(node):
        raise EngineError(f"cannot write {node.GetName()} to {path}")
    return Path(path)


def read_labelmap(path: Path) -> slicer.vtkMRMLLabelMapVolumeNode:
    """A label map file as a node outside any scene (it is only read from)."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise EngineError(f"cannot read the engine's label map {path}")
    return node


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    c = color.lstrip("#")
    return (int(c[0:2], 16) / 255.0, int(c[2:4], 16) / 255.0, int(c[4:6], 16) / 255.0)


def import_segmentation(
    scene: slicer.vtkMRMLScene,
    labelmap_path: Path,
    labels: Sequence[dict[str, Any]],
    reference: slicer.vtkMRMLScalarVolumeNode,
    name: str,
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation with one segment per model label (names, colors, terminology from the card), empty or not.

    Segments are created first and filled from the label map by value, so a label the
    model did not find still appears, with its name and color, ready for editing.
    """
    labelmap = read_labelmap(labelmap_path)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    ids = vtk.vtkStringArray()
    ids.SetNumberOfValues(max(int(lab["value"]) for lab in labels))
    for index in range(ids.GetNumberOfValues()):
        ids.SetValue(index, "")
    for lab in labels:
        segment_id = segmentation.AddEmptySegment(f"Segment_{lab['value']}", lab["name"], hex_to_rgb(lab["color"]))
        segment = segmentation.GetSegment(segment_id)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        if lab.get("terminology"):
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), str(lab["terminology"]))
        ids.SetValue(int(lab["value"]) - 1, segment_id)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node, ids):
        raise EngineError(f"cannot import the engine's label map {labelmap_path}")
    place_beside(scene, node, reference)
    set_reference_geometry(node, reference)
    return node


def set_reference_geometry(node: slicer.vtkMRMLSegmentationNode, reference: slicer.vtkMRMLScalarVolumeNode) -> None:
    """The reference's grid as the segmentation's editing geometry; call it once both share a transform.

    Slicer bakes the transform between the two nodes into the stored geometry, so set
    before the segmentation joins the reference's transform, the transform would apply twice.
    """
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)


def load_segmentation_file(
    scene: slicer.vtkMRMLScene, path: Path, name: str, reference: slicer.vtkMRMLScalarVolumeNode
) -> slicer.vtkMRMLSegmentationNode:
    """A `.seg.nrrd` the engine wrote with Slicer's segment metadata (names and colors included)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise EngineError(f"cannot read the engine's segmentation {path}")
    node.CreateDefaultDisplayNodes()
    place_beside(scene, node, reference)
    set_reference_geometry(node, reference)
    return node
