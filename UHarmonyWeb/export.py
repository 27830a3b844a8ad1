"""Saving a segmentation for use elsewhere: .seg.nrrd, and DICOM SEG where the model card codes every label.

A .seg.nrrd written by Slicer's segmentation storage keeps each segment's name, colour and
terminology entry (the model card's SNOMED CT codes, set by the desktop logic's import), so 3D
Slicer reopens it as it was and its DICOM export can carry the codes on.

A DICOM SEG (written by highdicom) must reference the DICOM images it segments. A case opened
from a DICOM series is referenced as it is; a case opened from NIfTI/NRRD gets a derived MR series
written from its reference volume, voxel for voxel on its grid and marked DERIVED\\SECONDARY, so a
PACS or 3D Slicer's DICOM module can show the SEG over it. Both go into one zip for the browser.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import slicer
import vtk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import format_number_as_ds
from UHarmonySlicerLib.addsite import segment_labels
from UHarmonySlicerLib.errors import EngineError, InputRefused
from UHarmonySlicerLib.models import ModelInfo
from UHarmonySlicerLib.scene import temporary_nodes
from UHarmonySlicerLib.volumes import GEOMETRY_TOLERANCE, ijk_to_ras
from vtk.util import numpy_support

ENGINE_MASKS = "UHarmony.engineMasks"  # node attribute: digest of the segment masks as the engine made them
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)
MANUFACTURER, DEVICE = "UHarmony", "UHarmony browser edition"
DERIVED_SERIES_NUMBER, SEG_SERIES_NUMBER = 1, 2  # within the derived study; a SEG of a DICOM case: source's + 1000


def export_seg_nrrd(segmentation: slicer.vtkMRMLSegmentationNode, path: Path) -> Path:
    """Write the segmentation (as edited) with its segment names, colours and terminology."""
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentation):
        raise EngineError(f"cannot write {segmentation.GetName()} to {path}")
    return path


# ------------------------------------------------------------ codes and availability


@dataclass(frozen=True)
class CodedLabel:
    """A card label with the codes a DICOM SEG segment needs, parsed from its Slicer terminology entry."""

    name: str
    color: str
    category: hd.sr.CodedConcept
    type: hd.sr.CodedConcept
    region: hd.sr.CodedConcept | None


def _concept(field: str) -> hd.sr.CodedConcept | None:
    """'SCT^108369006^Neoplasm' as a coded concept (None for an empty field)."""
    scheme, code, meaning = ([*field.split("^"), "", ""])[:3]
    return hd.sr.CodedConcept(value=code, scheme_designator=scheme, meaning=meaning) if scheme and code else None


def coded_label(label: dict[str, Any]) -> CodedLabel | None:
    """The label's category and type codes (and anatomic region, if given), or None when it has none.

    A Slicer terminology entry reads `context~category~type~type modifier~anatomic context~region~region modifier`.
    """
    fields = [*str(label.get("terminology", "")).split("~"), *[""] * 7]
    category, kind, region = _concept(fields[1]), _concept(fields[2]), _concept(fields[5])
    if category is None or kind is None:
        return None
    return CodedLabel(str(label["name"]), str(label.get("color", "#808080")), category, kind, region)


def dicom_seg_unavailable(model: ModelInfo | None) -> str:
    """Why DICOM SEG cannot be written with this model's card, in one line; '' when it can.

    Each DICOM SEG segment must say what it is in a standard code; a label without one could only
    be written with a made-up code, so the export is refused rather than guessed.
    """
    if model is None:
        return "DICOM SEG is unavailable: no model card says what the segments are; choose the model first."
    if not model.usable:
        return f"DICOM SEG is unavailable: the card of {model.path.name} cannot be read ({model.problem})."
    uncoded = [str(lab["name"]) for lab in model.labels if coded_label(lab) is None]
    if uncoded or not model.labels:
        return (
            f"DICOM SEG is unavailable: the model card gives no standard code for {', '.join(uncoded) or 'any label'}. "
            "Export .seg.nrrd, set the codes in 3D Slicer's Segment Editor and save it as DICOM SEG there."
        )
    return ""


# ------------------------------------------------------------ masks and the engine's fingerprint


def segment_masks(
    scene: slicer.vtkMRMLScene,
    segmentation: slicer.vtkMRMLSegmentationNode,
    reference: slicer.vtkMRMLScalarVolumeNode,
    segment_ids: Sequence[str],
) -> np.ndarray:
    """(slices, rows, columns, segments) booleans: each segment on the reference's own grid, nothing resampled.

    One export per segment, so segments that overlap after editing keep every voxel (BINARY SEG allows it).
    """
    masks = []
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "uharmony dicom export")
        for segment_id in segment_ids:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation, ids, labelmap, reference
            ):
                raise EngineError(f"cannot export {segmentation.GetName()} onto {reference.GetName()}")
            same = labelmap.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
            if not (same and np.allclose(ijk_to_ras(labelmap), ijk_to_ras(reference), atol=GEOMETRY_TOLERANCE)):
                raise EngineError(f"{segmentation.GetName()} did not export on the grid of {reference.GetName()}")
            masks.append(voxels(labelmap) > 0)
    return np.stack(masks, axis=-1)


def voxels(volume: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """A copy of the volume's scalars as a (k, j, i) array."""
    image = volume.GetImageData()
    i, j, k = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i).copy()


def _digest(masks: np.ndarray) -> str:
    return hashlib.sha256(repr(masks.shape).encode() + np.packbits(masks).tobytes()).hexdigest()


def mark_engine_output(
    scene: slicer.vtkMRMLScene, segmentation: slicer.vtkMRMLSegmentationNode, model: ModelInfo
) -> None:
    """Remember the engine's masks, so an export can tell an edited segmentation from the model's own.

    Compared by content, not by editor events: an edit that is undone leaves the model's result, and
    a display change is no edit.
    """
    ids = [segment_id for segment_id, _ in segment_labels(segmentation, model.labels)]
    masks = segment_masks(scene, segmentation, segmentation_reference(segmentation), ids)
    segmentation.SetAttribute(ENGINE_MASKS, _digest(masks))


def segmentation_reference(segmentation: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLScalarVolumeNode:
    """The volume whose grid the segmentation was made on: the model's first channel, as loaded.

    The import sets it as the segmentation's reference geometry, so the SEG's frames are that
    volume's slices and nothing is resampled.
    """
    node = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode) or node.GetImageData() is None:
        raise InputRefused(f"{segmentation.GetName()} has no reference volume to export it on.")
    return node


# ------------------------------------------------------------ the volume's grid in DICOM terms


@dataclass(frozen=True)
class Plane:
    """The reference volume's grid as DICOM image-plane attributes (LPS, mm)."""

    orientation: list[float]  # ImageOrientationPatient: the row (i) then column (j) direction
    spacing: list[float]  # PixelSpacing: between rows (j), then between columns (i)
    thickness: float  # the slice (k) step
    positions: list[list[float]]  # ImagePositionPatient of each slice k

    @classmethod
    def of(cls, volume: slicer.vtkMRMLScalarVolumeNode) -> Plane:
        """Refuses a sheared grid: single-frame DICOM slices are stacked along their normal."""
        matrix = ijk_to_ras(volume)
        axes = LPS @ matrix[:3, :3]
        steps = np.linalg.norm(axes, axis=0)
        directions = axes / steps
        if not np.allclose(directions.T @ directions, np.eye(3), atol=GEOMETRY_TOLERANCE):
            raise InputRefused(f"{volume.GetName()} has a sheared voxel grid, which DICOM image slices cannot hold.")
        origin = LPS @ matrix[:3, 3]
        slices = volume.GetImageData().GetDimensions()[2]
        return cls(
            orientation=[float(v) for v in (*directions[:, 0], *directions[:, 1])],
            spacing=[float(steps[1]), float(steps[0])],
            thickness=float(steps[2]),
            positions=[[float(v) for v in origin + k * axes[:, 2]] for k in range(slices)],
        )


def ds(values: Sequence[float] | float) -> list[str] | str:
    """Decimal strings within DICOM's 16 characters (the geometry keeps ~1e-10 mm)."""
    if isinstance(values, (int, float)):
        return format_number_as_ds(float(values))
    return [format_number_as_ds(float(v)) for v in values]


# ------------------------------------------------------------ the derived MR series of a NIfTI/NRRD case


def stored_pixels(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """16-bit stored values and the rescale (slope, intercept) giving back the volume's values.

    Integer volumes that fit 16 bits are stored as they are (slope 1, intercept 0); anything else
    is spread over uint16, so a reader applying the rescale gets each value within half a step.
    """
    if np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array)):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        for dtype in (np.int16, np.uint16):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return array.astype(dtype), 1.0, 0.0
    low, high = float(np.min(array)), float(np.max(array))
    slope = (high - low) / 65535.0 or 1.0
    return np.round((array - low) / slope).astype(np.uint16), slope, low


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _series_template(case_name: str, source_name: str, rescaled: bool, now: datetime.datetime) -> Dataset:
    """What every slice of the derived series shares: patient (the case's name), study, series, equipment.

    Nothing here is known from a NIfTI/NRRD file, so acquisition attributes are empty, not invented.
    """
    t = Dataset()
    t.SpecificCharacterSet = "ISO_IR 192"
    t.SOPClassUID = MRImageStorage
    patient = case_name.replace("^", " ").replace("\\", " ")[:64]
    t.PatientName, t.PatientID, t.PatientBirthDate, t.PatientSex = f"{patient}^", patient, "", ""
    t.StudyInstanceUID, t.SeriesInstanceUID, t.FrameOfReferenceUID = hd.UID(), hd.UID(), hd.UID()
    t.StudyDate = t.StudyTime = t.AccessionNumber = t.ReferringPhysicianName = t.StudyID = ""
    t.StudyDescription = f"UHarmony export of {case_name}"
    t.Modality, t.SeriesNumber = "MR", DERIVED_SERIES_NUMBER
    t.SeriesDescription = f"Derived from {source_name} (UHarmony)"[:64]
    t.SeriesDate = t.ContentDate = t.InstanceCreationDate = now.strftime("%Y%m%d")
    t.SeriesTime = t.ContentTime = t.InstanceCreationTime = now.strftime("%H%M%S")
    t.PatientPosition = t.PositionReferenceIndicator = ""
    t.Manufacturer, t.ManufacturerModelName = MANUFACTURER, DEVICE
    t.SoftwareVersions = importlib.metadata.version("uharmony")
    t.ImageType = ["DERIVED", "SECONDARY"]
    values = "values rescaled to 16 bits (Rescale Slope, Intercept)" if rescaled else "voxel values unchanged"
    t.DerivationDescription = (
        f"Not an acquired series: converted from the NIfTI/NRRD file {source_name} by UHarmony for its DICOM SEG; "
        f"same voxel grid, {values}."
    )
    t.ScanningSequence, t.SequenceVariant = "RM", "NONE"  # research mode: the sequence is not known
    t.ScanOptions = t.MRAcquisitionType = t.EchoTime = t.EchoTrainLength = t.RepetitionTime = ""
    t.SamplesPerPixel, t.PhotometricInterpretation = 1, "MONOCHROME2"
    t.BitsAllocated = t.BitsStored = 16
    t.HighBit = 15
    return t


def derived_series(volume: slicer.vtkMRMLScalarVolumeNode, case_name: str, source_name: str) -> list[Dataset]:
    """One MR image per slice k of the volume, in k order: its grid and voxels exactly (see stored_pixels)."""
    plane = Plane.of(volume)
    pixels, slope, intercept = stored_pixels(voxels(volume))
    rescaled = (slope, intercept) != (1.0, 0.0)
    template = _series_template(case_name, source_name, rescaled, datetime.datetime.now())
    slices = []
    for k, frame in enumerate(pixels):
        image = Dataset()
        image.update(template)
        image.SOPInstanceUID = hd.UID()
        image.file_meta = _file_meta(MRImageStorage, image.SOPInstanceUID)
        image.InstanceNumber = k + 1
        image.ImagePositionPatient = ds(plane.positions[k])
        image.ImageOrientationPatient = ds(plane.orientation)
        image.PixelSpacing = ds(plane.spacing)
        image.SliceThickness = image.SpacingBetweenSlices = ds(plane.thickness)
        image.Rows, image.Columns = frame.shape
        image.PixelRepresentation = int(frame.dtype == np.int16)
        if rescaled:
            image.RescaleSlope, image.RescaleIntercept, image.RescaleType = ds(slope), ds(intercept), "US"
        image.PixelData = frame.astype(frame.dtype.newbyteorder("<")).tobytes()
        slices.append(image)
    return slices


# ------------------------------------------------------------ the source series of a DICOM case


def _slice_index(image: Dataset, volume: slicer.vtkMRMLScalarVolumeNode, plane: Plane) -> int | None:
    """The volume slice k that this DICOM image is, or None when it is not exactly one of them."""
    if image.get("ImagePositionPatient") is None or image.get("ImageOrientationPatient") is None:
        return None
    same_plane = np.allclose([float(v) for v in image.ImageOrientationPatient], plane.orientation, atol=1e-3)
    same_size = (int(image.Rows), int(image.Columns)) == volume.GetImageData().GetDimensions()[1::-1]
    ras = LPS @ np.array([float(v) for v in image.ImagePositionPatient])
    ijk = np.linalg.inv(ijk_to_ras(volume)) @ [*ras, 1.0]
    k = round(float(ijk[2]))
    on_grid = np.allclose(ijk[:3], [0, 0, k], atol=1e-3) and 0 <= k < len(plane.positions)
    return k if same_plane and same_size and on_grid else None


def _same_voxels(path: Path, volume: slicer.vtkMRMLScalarVolumeNode, k: int) -> bool:
    """Whether this DICOM image holds the volume's slice k (its values after the modality rescale)."""
    try:
        image = pydicom.dcmread(path)
        values = pydicom.pixels.apply_modality_lut(image.pixel_array, image)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):  # no pixels, or no decoder for them
        return False
    expected = voxels(volume)[k]
    return bool(values.shape == expected.shape and np.allclose(values, expected, rtol=1e-4, atol=1e-3))


def source_series(volume: slicer.vtkMRMLScalarVolumeNode, files: Sequence[Path]) -> list[Dataset]:
    """The series' images that are the volume's slices, in k order (headers only); refused unless one each.

    The case's files may hold several series on one grid (co-registered sequences): then the one
    whose middle slice holds the volume's voxels is the one the volume was read from.
    """
    plane = Plane.of(volume)
    slices = len(plane.positions)
    by_series: dict[str, dict[int, tuple[Path, Dataset]]] = {}
    for path in files:
        try:
            image = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        k = _slice_index(image, volume, plane)
        if k is not None:
            by_series.setdefault(str(image.get("SeriesInstanceUID", "")), {}).setdefault(k, (path, image))
    complete = [found for found in by_series.values() if len(found) == slices]
    if len(complete) > 1:
        complete = [found for found in complete if _same_voxels(found[slices // 2][0], volume, slices // 2)]
    if not complete:
        best = max((len(found) for found in by_series.values()), default=0)
        raise InputRefused(
            f"The DICOM files of {volume.GetName()} do not match its slices one to one ({best} of {slices} "
            "found), so a DICOM SEG could not reference them; export .seg.nrrd instead."
        )
    return [complete[0][k][1] for k in range(slices)]


# ------------------------------------------------------------ the SEG


def segment_description(number: int, label: CodedLabel, model: ModelInfo, edited: bool) -> hd.seg.SegmentDescription:
    """One segment: the card's codes and colour, and the model as the algorithm (SEMIAUTOMATIC once edited)."""
    rgb = tuple(int(label.color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name,
        segmented_property_category=label.category,
        segmented_property_type=label.type,
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if edited else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        ),
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name, version=str(model.version), family=codes.cid7162.ArtificialIntelligence
        ),
        anatomic_regions=[label.region] if label.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


def build_seg(
    sources: Sequence[Dataset],
    masks: np.ndarray,
    labels: Sequence[CodedLabel],
    model: ModelInfo,
    edited: bool,
    series_number: int,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG over `sources` (one per mask slice, in k order); new series and instance UIDs."""
    how = "edited in the Segment Editor" if edited else "as the model made it"
    try:
        return hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=masks.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                segment_description(n, label, model, edited) for n, label in enumerate(labels, start=1)
            ],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=DEVICE,
            software_versions=importlib.metadata.version("uharmony"),
            device_serial_number="0",
            content_label="UHARMONY",
            content_description=f"{model.name} v{model.version}, {how}"[:64],
            series_description=f"UHarmony segmentation ({model.name} v{model.version})"[:64],
        )
    except ValueError as e:
        raise EngineError(f"highdicom refused the DICOM SEG: {e}") from None


def _dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_zip(path: Path, members: Sequence[tuple[str, Dataset]]) -> Path:
    """The zip, written beside `path` and renamed onto it: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, dataset in members:
                archive.writestr(name, _dicom_bytes(dataset))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def export_dicom_seg(
    scene: slicer.vtkMRMLScene,
    segmentation: slicer.vtkMRMLSegmentationNode,
    model: ModelInfo,
    path: Path,
    case_name: str,
    dicom_files: Sequence[Path] = (),
) -> Path:
    """Write a zip: `SEG/seg.dcm`, and `MR/<n>.dcm` (the derived series) unless `dicom_files` are the case's own.

    With `dicom_files` (a case opened from DICOM) the SEG references the source images the
    reference volume was read from; otherwise it references the derived series written beside it.
    Every export gets new UIDs: the derived study is made anew each time.
    """
    reason = dicom_seg_unavailable(model)
    if reason:
        raise InputRefused(reason)
    matched = segment_labels(segmentation, model.labels)
    coded = {lab["name"]: coded_label(lab) for lab in model.labels}
    labels = [label for _, name in matched if (label := coded[name]) is not None]
    reference = segmentation_reference(segmentation)
    masks = segment_masks(scene, segmentation, reference, [segment_id for segment_id, _ in matched])
    edited = segmentation.GetAttribute(ENGINE_MASKS) != _digest(masks)
    if dicom_files:
        sources, members = source_series(reference, dicom_files), []
        series_number = int(sources[0].get("SeriesNumber") or 0) + 1000
    else:
        storage = reference.GetStorageNode()
        source_name = Path(storage.GetFileName()).name if storage and storage.GetFileName() else reference.GetName()
        sources = derived_series(reference, case_name, source_name)
        members = [(f"MR/{image.InstanceNumber:04d}.dcm", image) for image in sources]
        series_number = SEG_SERIES_NUMBER
    seg = build_seg(sources, masks, labels, model, edited, series_number)
    return write_zip(path, [*members, ("SEG/seg.dcm", seg)])
