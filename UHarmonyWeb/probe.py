"""What lies under the mouse in a slice view, as Slicer's Data Probe shows it: position, voxel, value, segment.

Slicer's slice views move the crosshair node's cursor position with the mouse; the probe reads
it, so the footer tells where a brush stroke lands (and a test can check the label map there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import slicer
import vtk
from trame_server.state import State
from trame_slicer.core import SlicerApp

LABELMAP = "Binary labelmap"  # Slicer's name of a segmentation's voxel representation


def voxel(image_to_world: vtk.vtkMatrix4x4, ras: list[float]) -> tuple[int, int, int]:
    """The voxel index of a world (RAS) point, given an image's voxel-to-world matrix."""
    world_to_image = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(image_to_world, world_to_image)
    ijk = world_to_image.MultiplyPoint([*ras, 1.0])
    return round(ijk[0]), round(ijk[1]), round(ijk[2])


def inside(extent: tuple[int, ...], ijk: tuple[int, int, int]) -> bool:
    return all(extent[2 * a] <= ijk[a] <= extent[2 * a + 1] for a in range(3))


def segment_at(segmentation: slicer.vtkMRMLSegmentationNode, ras: list[float]) -> str:
    """The name of the segment (if any) that holds the point; segments share voxel layers, told apart by value."""
    segments = segmentation.GetSegmentation()
    for i in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(i)
        layer = segment.GetRepresentation(LABELMAP)
        if layer is None:
            continue
        matrix = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(matrix)
        ijk = voxel(matrix, ras)
        if inside(layer.GetExtent(), ijk) and layer.GetScalarComponentAsDouble(*ijk, 0) == segment.GetLabelValue():
            return str(segment.GetName())
    return ""


class Probe:
    """Keeps `uh_probe` (a line of text) and `uh_probe_data` (ras, ijk, segment) at the mouse position."""

    def __init__(
        self, app: SlicerApp, state: State, segmentation: Callable[[], slicer.vtkMRMLSegmentationNode | None]
    ) -> None:
        self.app = app
        self.state = state
        self.segmentation = segmentation
        self.state.update({"uh_probe": "", "uh_probe_data": {"ras": "", "ijk": "", "segment": ""}})
        crosshair = app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        crosshair.AddObserver(slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._moved)

    def _moved(self, crosshair: slicer.vtkMRMLCrosshairNode, _event: Any) -> None:
        ras = [0.0, 0.0, 0.0]
        if not crosshair.GetCursorPositionRAS(ras):
            return
        view = self.app.view_manager.get_slice_views()
        volume_id = next((v.get_background_volume_id() for v in view if v.get_background_volume_id()), None)
        volume = self.app.scene.GetNodeByID(volume_id) if volume_id else None
        text = "R {:.1f}  A {:.1f}  S {:.1f}".format(*ras)
        data = {"ras": ",".join(f"{c:.3f}" for c in ras), "ijk": "", "segment": ""}
        if volume is not None and volume.GetImageData() is not None:
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            ijk = voxel(matrix, ras)
            if inside(volume.GetImageData().GetExtent(), ijk):
                value = volume.GetImageData().GetScalarComponentAsDouble(*ijk, 0)
                data["ijk"] = ",".join(map(str, ijk))
                text += f"   {volume.GetName()} voxel ({data['ijk']}) = {value:g}"
        segmentation = self.segmentation()
        if segmentation is not None:
            data["segment"] = segment_at(segmentation, ras)
            text += f"   segment: {data['segment'] or 'none'}"
        with self.state:
            self.state.uh_probe = text
            self.state.uh_probe_data = data
