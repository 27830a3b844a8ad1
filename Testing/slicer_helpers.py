"""Helpers for the Slicer module's tests: a headless MRML scene on slicer-core, volumes and segmentations in it.

slicer-core carries Slicer's compiled MRML and module logic but not the application,
so `slicer.mrmlScene` and `slicer.modules` are set up here the way Slicer sets them up
(slicer-core is Slicer's MRML library on PyPI, run headless). Nothing is mocked: every node is a real MRML node.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer
import vtk

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "UHarmonySlicer"
if str(MODULE_DIR) not in sys.path:  # Slicer puts the module folder on sys.path; so do the tests
    sys.path.insert(0, str(MODULE_DIR))

_ALIVE: list[slicer.vtkSlicerApplicationLogic] = []
LOGICS = {
    "volumes": ("Volumes", slicer.vtkSlicerVolumesLogic),
    "segmentations": ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    "subjecthierarchy": ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
}


def headless_scene() -> slicer.vtkMRMLScene:
    """A scene with application, color, volumes, segmentations and subject-hierarchy logic, as in Slicer."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)  # volume loading looks the color logic up under this name
    modules = types.SimpleNamespace(colors=types.SimpleNamespace(logic=lambda: colors))
    for attribute, (name, cls) in LOGICS.items():
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)  # before any segment is created, or segments silently fail
        app.SetModuleLogic(name, logic)
        setattr(modules, attribute, types.SimpleNamespace(logic=lambda logic=logic: logic))
    slicer.mrmlScene = scene
    slicer.modules = modules
    _ALIVE.append(app)  # the logic objects must outlive the function
    return scene


def ras_matrix(spacing: Sequence[float], origin_lps: Sequence[float], direction: Sequence[float]) -> vtk.vtkMatrix4x4:
    """IJK-to-RAS of an ITK-style geometry (LPS origin and direction rows), as Slicer derives it from a file."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    d = lps_to_ras @ np.reshape(direction, (3, 3)) @ np.diag(spacing)
    o = lps_to_ras @ np.asarray(origin_lps, dtype=float)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(d[r, c]))
        matrix.SetElement(r, 3, float(o[r]))
    return matrix


def volume_node(
    scene: slicer.vtkMRMLScene,
    array_zyx: np.ndarray,
    name: str,
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    origin: Sequence[float] = (3.0, -7.0, 11.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    cls: str = "vtkMRMLScalarVolumeNode",
) -> slicer.vtkMRMLScalarVolumeNode:
    """A volume node holding `array_zyx` on the given (ITK-style) grid."""
    node = scene.AddNewNodeByClass(cls, name)
    slicer.util.updateVolumeFromArray(node, array_zyx)
    node.SetIJKToRASMatrix(ras_matrix(spacing, origin, direction))
    node.CreateDefaultDisplayNodes()
    return node


def segmentation_from_labels(
    scene: slicer.vtkMRMLScene,
    reference: slicer.vtkMRMLScalarVolumeNode,
    labels_zyx: np.ndarray,
    names: Sequence[str],
    name: str,
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation with one named segment per label value 1..len(names), on the reference's grid."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
    slicer.util.updateVolumeFromArray(labelmap, labels_zyx.astype(np.uint8))
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    labelmap.SetIJKToRASMatrix(matrix)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    segmentation = node.GetSegmentation()
    for i, segment_name in enumerate(names):
        segmentation.GetNthSegment(i).SetName(segment_name)
    return node


def place_in_study(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode, patient: str, study: str) -> int:
    """Put a node under a new patient/study in the subject hierarchy; returns the study item."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    study_item = sh.CreateStudyItem(patient_item, study)
    sh.CreateItem(study_item, node)
    return study_item


def matrix_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
