"""Saving a segmentation for use elsewhere: .seg.nrrd now, DICOM SEG where it can be made.

A .seg.nrrd written by Slicer's segmentation storage keeps each segment's name, colour and
terminology entry (the model card's SNOMED CT codes, set by the desktop logic's import), so 3D
Slicer reopens it as it was and its DICOM export can carry the codes on.
"""

from __future__ import annotations

from pathlib import Path

import slicer
from UHarmonySlicerLib.errors import EngineError
from UHarmonySlicerLib.models import ModelInfo


def export_seg_nrrd(segmentation: slicer.vtkMRMLSegmentationNode, path: Path) -> Path:
    """Write the segmentation (as edited) with its segment names, colours and terminology."""
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentation):
        raise EngineError(f"cannot write {segmentation.GetName()} to {path}")
    return path


def dicom_seg_unavailable(dicom_input: bool, model: ModelInfo | None) -> str:
    """Why this app cannot write this case as DICOM SEG (it never can yet; the reason depends on the case).

    A DICOM SEG object references the source images' DICOM instances (study, series, each slice's
    SOP instance UID) and codes each segment's meaning; it is only standards-conforming when made
    from the DICOM series the case was read from.
    """
    uncoded = [lab["name"] for lab in (model.labels if model else []) if not lab.get("terminology")]
    codes = (
        f" Also, the model card gives no standard code for {', '.join(uncoded)}; set one in Slicer's Segment Editor."
        if uncoded
        else " The .seg.nrrd carries the model card's SNOMED CT codes for that export."
    )
    if not dicom_input:
        return (
            "DICOM SEG is unavailable for this case: a DICOM SEG must reference the source DICOM images, and this "
            "case was opened from NIfTI/NRRD files. Export .seg.nrrd instead and, with the original DICOM series, "
            "save it as DICOM SEG in 3D Slicer's DICOM module." + codes
        )
    return (
        "DICOM SEG export is not built into the browser edition yet (it needs a DICOM SEG writer such as "
        "highdicom, not installed with it). Export .seg.nrrd and save it as DICOM SEG in 3D Slicer's DICOM "
        "module with this case's DICOM series." + codes
    )
