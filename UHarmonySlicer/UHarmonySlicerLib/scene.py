"""Where results go in the scene, and all-or-nothing imports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import slicer


def node_ids(scene: slicer.vtkMRMLScene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _remove_added(scene: slicer.vtkMRMLScene, before: set[str]) -> None:
    for node_id in node_ids(scene) - before:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            scene.RemoveNode(node)


@contextlib.contextmanager
def all_or_nothing(scene: slicer.vtkMRMLScene) -> Iterator[None]:
    """Remove every node added inside the block when it fails, so a failed import leaves no half result."""
    before = node_ids(scene)
    try:
        yield
    except BaseException:
        _remove_added(scene, before)
        raise


@contextlib.contextmanager
def temporary_nodes(scene: slicer.vtkMRMLScene) -> Iterator[None]:
    """Remove every node added inside the block when it ends (MRML exporters need their output in a scene)."""
    before = node_ids(scene)
    try:
        yield
    finally:
        _remove_added(scene, before)


def place_beside(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode, reference: slicer.vtkMRMLNode) -> None:
    """Put `node` under the reference's study (else its parent folder) and under its transform."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = study_item(scene, reference)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:  # Slicer's GUI adds an item for every new node; headless nobody does
        sh.CreateItem(parent, node)
    if isinstance(node, slicer.vtkMRMLTransformableNode) and isinstance(reference, slicer.vtkMRMLTransformableNode):
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())


def study_item(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> int:
    """The subject-hierarchy item results of `node` go under: its study, else its parent."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        return sh.GetSceneItemID()
    study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    return sh.GetItemAncestorAtLevel(item, study_level) or sh.GetItemParent(item)


REFERENCE_ROLE = "referenceImageGeometryRef"  # Slicer's role for the volume whose grid a segmentation follows


def source_volume(segmentation: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLScalarVolumeNode | None:
    """The input volume a result was made on: what the Segment Editor should edit it against."""
    node = segmentation.GetNodeReference(REFERENCE_ROLE)
    return node if isinstance(node, slicer.vtkMRMLScalarVolumeNode) else None


def show_in_3d(segmentation: slicer.vtkMRMLSegmentationNode, visible: bool) -> None:
    """Show the segments as surfaces in the 3D view, or drop the surfaces (they cost memory and time)."""
    if visible:
        segmentation.CreateClosedSurfaceRepresentation()
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(True)
    else:
        segmentation.RemoveClosedSurfaceRepresentation()
