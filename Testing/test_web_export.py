"""The browser edition's DICOM SEG export on real MRML (trame-slicer's SlicerApp on slicer-core), read back.

The sample's ground truth stands in for the engine's result: it is imported as the engine's label
map is (the card's names, colours and codes) and marked as the engine's. Every check reads the
written files with pydicom, highdicom or SimpleITK and compares them with the volume's grid and the
label map's voxels as they are: nothing is resampled.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer
import slicer_helpers  # noqa: F401  (puts the Slicer module's folder on sys.path, as Slicer does)
import vtk
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, SegmentationStorage
from trame_slicer.core import SlicerApp
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.models import ModelInfo, read_model
from UHarmonySlicerLib.volumes import ijk_to_ras, import_segmentation, read_labelmap

from UHarmonyLib.resources import BUNDLED_MODELS, DEFAULT_MODEL_NAME, SAMPLE_DATA
from UHarmonyWeb.cases import Case, load_files, load_sample
from UHarmonyWeb.export import (
    derived_series,
    dicom_seg_unavailable,
    export_dicom_seg,
    mark_engine_output,
    stored_pixels,
)

TRUTH = SAMPLE_DATA / "labelsTr" / "held-out-clinic_000.nii.gz"
FLAIR = SAMPLE_DATA / "imagesTr" / "held-out-clinic_000_0000.nii.gz"  # the first model channel: the reference
LPS = np.diag([-1.0, -1.0, 1.0])
TOLERANCE = 1e-4  # mm


@pytest.fixture(scope="module")
def app() -> SlicerApp:
    return SlicerApp()


@pytest.fixture(scope="module")
def model() -> ModelInfo:
    return read_model(BUNDLED_MODELS / DEFAULT_MODEL_NAME)


@pytest.fixture
def sample(app: SlicerApp) -> Case:
    app.scene.Clear()
    return load_sample(app)


def engine_segmentation(
    app: SlicerApp, reference: slicer.vtkMRMLScalarVolumeNode, model: ModelInfo
) -> slicer.vtkMRMLSegmentationNode:
    segmentation = import_segmentation(app.scene, TRUTH, model.labels, reference, "engine")
    mark_engine_output(app.scene, segmentation, model)
    return segmentation


def card_codes(model: ModelInfo) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(name, category, type) of each label as (scheme, code, meaning), read straight from the card's entries."""
    fields = [(lab["name"], lab["terminology"].split("~")) for lab in model.labels]
    return [(name, tuple(f[1].split("^")), tuple(f[2].split("^"))) for name, f in fields]


def read_zip(path: Path) -> tuple[list[Dataset], Dataset, list[str]]:
    """The zip's MR images (in name order), its SEG, and its member names."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        images = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in sorted(names) if n.startswith("MR/")]
        seg = pydicom.dcmread(io.BytesIO(archive.read("SEG/seg.dcm")))
    return images, seg, names


def code(item: Dataset) -> tuple[str, str, str]:
    return (item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning)


def slice_of_position(position: list[float], reference: slicer.vtkMRMLScalarVolumeNode) -> int:
    """The volume slice k at an LPS ImagePositionPatient (which must be a slice corner exactly)."""
    ijk = np.linalg.inv(ijk_to_ras(reference)) @ [*(LPS @ np.asarray(position, dtype=float)), 1.0]
    k = round(float(ijk[2]))
    assert np.allclose(ijk[:3], [0, 0, k], atol=TOLERANCE), ijk
    return k


def assert_frames_are_the_label_map(
    seg: Dataset, source_slices: dict[str, int], reference: slicer.vtkMRMLScalarVolumeNode, labels: np.ndarray
) -> None:
    """Each frame is its segment's voxels on the slice its source image is; slices without a frame hold none.

    `labels` is (k, j, i) (ITK's index is Slicer's IJK); a frame's rows run along j and its columns along i.
    """
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    frames: dict[tuple[int, int], np.ndarray] = {}
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = source_slices[source]
        assert slice_of_position(group.PlanePositionSequence[0].ImagePositionPatient, reference) == k
        frames[(number, k)] = pixels[index]
    assert frames, "no frame"
    for number in (1, 2):  # segment n is label value n (the card's order)
        for k in range(labels.shape[0]):
            expected = labels[k] == number
            frame = frames.get((number, k))
            if frame is None:  # an empty frame is omitted
                assert not expected.any(), (number, k)
            else:
                assert np.array_equal(frame.astype(bool), expected), (number, k)


def assert_on_the_volumes_grid(images: list[Dataset], reference: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Each image's plane is slice k of the volume: position, orientation, spacing, thickness (LPS, mm)."""
    matrix = ijk_to_ras(reference)
    axes = LPS @ matrix[:3, :3]
    steps = np.linalg.norm(axes, axis=0)
    assert len(images) == reference.GetImageData().GetDimensions()[2]
    for k, image in enumerate(images):
        assert np.allclose(
            [float(v) for v in image.ImagePositionPatient], LPS @ (matrix @ [0, 0, k, 1])[:3], atol=TOLERANCE
        )
        orientation = [*(axes[:, 0] / steps[0]), *(axes[:, 1] / steps[1])]
        assert np.allclose([float(v) for v in image.ImageOrientationPatient], orientation, atol=TOLERANCE)
        assert np.allclose([float(v) for v in image.PixelSpacing], [steps[1], steps[0]], atol=TOLERANCE)
        assert abs(float(image.SliceThickness) - steps[2]) < TOLERANCE


def test_dicom_seg_of_a_nifti_case_codes_its_segments_and_references_a_derived_series_on_its_grid(
    app, sample, model, tmp_path: Path
) -> None:
    segmentation = engine_segmentation(app, sample.reference, model)
    path = export_dicom_seg(app.scene, segmentation, model, tmp_path / "case.dicom-seg.zip", sample.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.dicom-seg.zip"]  # no partial file left
    images, seg, names = read_zip(path)
    assert names == [*(f"MR/{k:04d}.dcm" for k in range(1, 64)), "SEG/seg.dcm"]

    # the segments: the card's labels, codes and the model as the algorithm (unedited: AUTOMATIC)
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    with zipfile.ZipFile(path) as archive:
        read = hd.seg.segread(io.BytesIO(archive.read("SEG/seg.dcm")))  # highdicom parses it as a SEG
    assert read.number_of_segments == len(model.labels) == 2
    for item, (name, category, kind) in zip(seg.SegmentSequence, card_codes(model)):
        assert item.SegmentLabel == name
        assert code(item.SegmentedPropertyCategoryCodeSequence[0]) == category
        assert code(item.SegmentedPropertyTypeCodeSequence[0]) == kind
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (model.name, str(model.version))
    assert [code(s.SegmentedPropertyTypeCodeSequence[0])[1] for s in seg.SegmentSequence] == ["108369006", "79654002"]

    # the derived series: marked as such, named after its file, new UIDs shared with the SEG's study
    assert all(i.SOPClassUID == MRImageStorage and list(i.ImageType) == ["DERIVED", "SECONDARY"] for i in images)
    assert "held-out-clinic_000_0000.nii.gz" in images[0].SeriesDescription
    assert images[0].SeriesDescription.startswith("Derived")
    uids = {i.SOPInstanceUID for i in images} | {seg.SOPInstanceUID, seg.SeriesInstanceUID, images[0].SeriesInstanceUID}
    assert len(uids) == len(images) + 3 and all(pydicom.uid.UID(u).is_valid for u in uids)
    assert (
        seg.StudyInstanceUID == images[0].StudyInstanceUID and seg.FrameOfReferenceUID == images[0].FrameOfReferenceUID
    )
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == images[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} <= {
        i.SOPInstanceUID for i in images
    }

    # geometry: the derived series and the SEG's planes are the volume's grid; the frames its label map
    assert_on_the_volumes_grid(images, sample.reference)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in images[0].ImageOrientationPatient],
        atol=TOLERANCE,
    )
    assert np.allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing], [2.0, 2.0], atol=TOLERANCE)
    slices = {i.SOPInstanceUID: k for k, i in enumerate(images)}
    assert_frames_are_the_label_map(seg, slices, sample.reference, sitk.GetArrayFromImage(sitk.ReadImage(str(TRUTH))))

    # SimpleITK reads the derived series back onto the NIfTI's grid, with its voxel values
    folder = tmp_path / "MR"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path, [n for n in names if n.startswith("MR/")])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    back, nifti = reader.Execute(), sitk.ReadImage(str(FLAIR))
    assert back.GetSize() == nifti.GetSize()
    for got, want in ((back.GetOrigin(), nifti.GetOrigin()), (back.GetSpacing(), nifti.GetSpacing()),
                      (back.GetDirection(), nifti.GetDirection())):  # fmt: skip
        assert np.allclose(got, want, atol=TOLERANCE), (got, want)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(nifti))


def test_an_edited_segmentation_is_semiautomatic_and_an_undone_edit_automatic_again(
    app, sample, model, tmp_path: Path
) -> None:
    segmentation = engine_segmentation(app, sample.reference, model)
    segment_ids = vtk_ids(["Segment_1", "Segment_2"])
    labels = sitk.ReadImage(str(TRUTH))
    painted = sitk.GetArrayFromImage(labels)
    painted[30, 20, 20:30] = 1  # a stroke of lesion core where there was none
    assert not (sitk.GetArrayFromImage(labels)[30, 20, 20:30] == 1).any()
    stroke = sitk.GetImageFromArray(painted)
    stroke.CopyInformation(labels)
    sitk.WriteImage(stroke, str(tmp_path / "painted.nrrd"))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.ImportLabelmapToSegmentationNode(read_labelmap(tmp_path / "painted.nrrd"), segmentation, segment_ids)

    first = export_dicom_seg(app.scene, segmentation, model, tmp_path / "edited.zip", sample.name)
    images, seg, _ = read_zip(first)
    assert_frames_are_the_label_map(seg, {i.SOPInstanceUID: k for k, i in enumerate(images)}, sample.reference, painted)
    assert [s.SegmentAlgorithmType for s in seg.SegmentSequence] == ["SEMIAUTOMATIC", "SEMIAUTOMATIC"]
    assert all(s.SegmentAlgorithmName == model.name for s in seg.SegmentSequence)  # the model still made it
    assert "edited" in seg.ContentDescription

    assert logic.ImportLabelmapToSegmentationNode(read_labelmap(TRUTH), segmentation, segment_ids)  # undone
    second = export_dicom_seg(app.scene, segmentation, model, tmp_path / "undone.zip", sample.name)
    images, again, _ = read_zip(second)
    assert [s.SegmentAlgorithmType for s in again.SegmentSequence] == ["AUTOMATIC", "AUTOMATIC"]
    assert again.SeriesInstanceUID != seg.SeriesInstanceUID and again.StudyInstanceUID != seg.StudyInstanceUID
    slices = {i.SOPInstanceUID: k for k, i in enumerate(images)}
    assert_frames_are_the_label_map(again, slices, sample.reference, sitk.GetArrayFromImage(labels))


def vtk_ids(ids: list[str]) -> vtk.vtkStringArray:
    array = vtk.vtkStringArray()
    for segment_id in ids:
        array.InsertNextValue(segment_id)
    return array


def test_a_case_opened_from_dicom_is_referenced_as_it_is(app, sample, model, tmp_path: Path) -> None:
    """DICOM series (here the sample's flair and t1 written as two, on one grid) open on the NIfTI's grid; the SEG
    cites the files of the series its reference volume was read from: the t1's, though the flair's come first."""
    folder = tmp_path / "series"
    folder.mkdir()
    series = {}
    for volume, prefix in ((sample.volumes[0], "a-flair"), (sample.volumes[1], "b-t1")):
        for image in derived_series(volume, "dicom case", f"{prefix}.nii.gz"):
            image.save_as(folder / f"{prefix}{image.InstanceNumber:03d}.dcm", enforce_file_format=True)
        series[prefix] = image.SeriesInstanceUID
    nifti_grid = ijk_to_ras(sample.reference)
    app.scene.Clear()
    case = load_files(app, sorted(folder.iterdir()))
    assert case.dicom and len(case.volumes) == 2 and len(case.files) == 126
    reference = next(v for v in case.volumes if "b-t1.nii.gz" in v.GetName())  # "1: Derived from <file> (UHarmony)"
    assert np.allclose(ijk_to_ras(reference), nifti_grid, atol=TOLERANCE)  # trame-slicer's reader: the same grid

    segmentation = engine_segmentation(app, reference, model)
    path = export_dicom_seg(app.scene, segmentation, model, tmp_path / "dicom.zip", case.name, case.files)
    images, seg, names = read_zip(path)
    assert names == ["SEG/seg.dcm"] and images == []  # the case's own series is referenced, not copied
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in case.files]
    sources = {d.SOPInstanceUID: d for d in headers if d.SeriesInstanceUID == series["b-t1"]}
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == "dicom case"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series["b-t1"]  # not the flair on the same grid
    cited = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert cited <= set(sources)
    assert int(seg.SeriesNumber) == 1001  # the source series' number + 1000
    slices = {uid: slice_of_position(d.ImagePositionPatient, reference) for uid, d in sources.items()}
    assert sorted(slices.values()) == list(range(63))
    assert_frames_are_the_label_map(seg, slices, reference, sitk.GetArrayFromImage(sitk.ReadImage(str(TRUTH))))

    with pytest.raises(InputRefused, match=r"do not match its slices one to one \(40 of 63 found\)"):
        export_dicom_seg(app.scene, segmentation, model, tmp_path / "half.zip", case.name, case.files[63:103])
    assert not (tmp_path / "half.zip").exists()


def test_without_a_code_for_every_label_dicom_seg_is_refused_in_one_line(app, sample, model, tmp_path) -> None:
    assert dicom_seg_unavailable(model) == ""
    labels = [model.labels[0], {k: v for k, v in model.labels[1].items() if k != "terminology"}]
    uncoded = ModelInfo(model.path, {**model.card, "labels": labels})
    reason = dicom_seg_unavailable(uncoded)
    assert reason.startswith("DICOM SEG is unavailable: the model card gives no standard code for edema.")
    assert "\n" not in reason and ".seg.nrrd" in reason
    segmentation = engine_segmentation(app, sample.reference, model)
    with pytest.raises(InputRefused) as refused:
        export_dicom_seg(app.scene, segmentation, uncoded, tmp_path / "x.zip", sample.name)
    assert str(refused.value) == reason and list(tmp_path.iterdir()) == []
    broken = ModelInfo(model.path, {**model.card, "labels": [{**model.labels[0], "terminology": "context~^^~^^"}]})
    assert "no standard code for lesion core" in dicom_seg_unavailable(broken)
    assert "no model card says what the segments are" in dicom_seg_unavailable(None)
    assert "cannot be read (no card)" in dicom_seg_unavailable(ModelInfo(model.path, {}, problem="no card"))
    segmentation.GetSegmentation().GetNthSegment(0).SetName("tumour")  # a segment the card cannot code
    with pytest.raises(InputRefused, match="Segment 'tumour' of engine is not a label of the model"):
        export_dicom_seg(app.scene, segmentation, model, tmp_path / "x.zip", sample.name)


def test_stored_pixels_keep_16_bit_integers_and_rescale_anything_else() -> None:
    exact, slope, intercept = stored_pixels(np.array([[-5, 0, 1978]], dtype=np.int32))
    assert exact.dtype == np.int16 and exact.tolist() == [[-5, 0, 1978]] and (slope, intercept) == (1.0, 0.0)
    wide, slope, _ = stored_pixels(np.array([0, 60000], dtype=np.int32))
    assert wide.dtype == np.uint16 and wide.tolist() == [0, 60000] and slope == 1.0
    values = np.linspace(-3.2, 1e6, 1000).astype(np.float32)
    stored, slope, intercept = stored_pixels(values)
    assert stored.dtype == np.uint16 and np.abs(stored * slope + intercept - values).max() <= slope / 2 + 1e-3
