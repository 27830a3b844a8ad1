"""Reading, checking and writing volumes with SimpleITK; one-line errors for bad files.

ITK's readers are quiet about some damage: its NIfTI reader fills a truncated file with
zeros and turns NaN/Inf voxels into 0, and its writers report a full disk only on the
terminal. So NIfTI data is checked against its header before ITK reads it, every written
file is read back before it replaces anything, and what ITK prints is caught so that a
bad file gives one line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import atomic_path, check_writable

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
GEOMETRY_TOLERANCE = 1e-5
# largest |cos| between two axes still taken as perpendicular: float32 NIfTI headers hold ~1e-7
ORTHOGONALITY_TOLERANCE = 1e-4
NIFTI_FLOATS: dict[int, np.dtype] = {16: np.dtype(np.float32), 64: np.dtype(np.float64)}  # NaN/Inf ITK reads as 0
NIFTI_SINGLE_FILE = ("1", "4")  # ITK's nifti_type of .nii/.nii.gz (NIfTI-1, NIfTI-2); not .hdr/.img pairs
CHUNK = 1 << 22


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def check_output_path(path: Path) -> None:
    """Fail before any work if `path` is not a writable image file name we can write."""
    path = Path(path)
    if _suffix(path) not in (*IMAGE_SUFFIXES, ".seg.nrrd"):
        raise InputError(f"{path}: unsupported output format (use .nii.gz, .nii, .nrrd, .seg.nrrd or .mha)")
    check_writable(path)


@contextlib.contextmanager
def _stderr_caught(printed: list[str]) -> Iterator[None]:
    """Send what C code writes to the process's stderr into `printed` for the body."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a GUI process): nothing reaches a terminal anyway
        saved = -1
    if saved < 0:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                printed.extend(sink.read().decode("utf-8", "replace").splitlines())
    finally:
        os.close(saved)


@contextlib.contextmanager
def _itk_quiet(printed: list[str]) -> Iterator[None]:
    """Keep ITK off the terminal for the body, so a bad file gives one line; its libraries' prints land in `printed`.

    SimpleITK's switch silences ITK's warnings; the NIfTI, MetaIO, NRRD, GDCM and HDF5
    libraries write straight to the process's stderr, so that is caught meanwhile.
    """
    warnings = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        with _stderr_caught(printed):
            yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(warnings)


TRUNCATED = re.compile(r"data not read completely|fread got only|expected \d+ bytes but received|hit end of header")
# "ITK ERROR: NrrdImageIO(0x5629a2860da0): ", "sitk::ERROR: ", "[nrrd] _nrrdRead: ": who speaks, not what is wrong
ITK_PREFIX = re.compile(r"^(?:(?:ITK ERROR|sitk::ERROR):\s*|\w+\(0x[0-9a-fA-F]+\):\s*|\[\w+\]\s*\w+:\s*)+")


def _itk_problem(error: RuntimeError, printed: Sequence[str]) -> str:
    """SimpleITK's exception in a few words: without the ITK source file and line it starts with."""
    text = "\n".join([str(error), *printed])
    if "Unable to determine ImageIO" in text:
        return "not an image file SimpleITK can read"
    if TRUNCATED.search(text):
        return "image data is incomplete: truncated file?"
    details = []
    for line in str(error).splitlines()[1:]:  # the first line names SimpleITK's source file
        line = ITK_PREFIX.sub("", line.strip())
        if line and not re.search(r"\.(cxx|c|h|hxx)\b", line):
            details.append(line)
    return details[-1] if details else "unsupported or damaged file"


class _Unreadable(Exception):
    """What is wrong with an image file, as words to follow its name."""


def _orthogonal(matrix: np.ndarray) -> float:
    """How far a 3x3 matrix's columns are from perpendicular: the largest |cos| between two of them."""
    axes = matrix / np.linalg.norm(matrix, axis=0)
    return float(np.abs(axes.T @ axes - np.eye(3)).max())


def _sheared(shear: float) -> str:
    return (
        f"its axes are not perpendicular (sheared by {math.degrees(math.asin(min(shear, 1.0))):.2g} degrees), "
        "a grid the output could not keep; resample it onto a grid with perpendicular axes first"
    )


def _nifti_problem(path: Path, reader: sitk.ImageFileReader) -> str | None:
    """What ITK's NIfTI reader would hide: data shorter than the header says, NaN/Inf voxels, a sheared sform.

    ITK reads the missing part of a truncated file as zeros, NaN and Inf as 0, and takes the
    qform when the sform (which other software uses) is not orthogonal.
    """
    meta = reader.GetMetaData
    if int(meta("sform_code")) > 0:
        shear = _orthogonal(np.array([[float(v) for v in meta(f"srow_{a}").split()[:3]] for a in "xyz"]))
        if shear > ORTHOGONALITY_TOLERANCE:
            return _sheared(shear)
    count = math.prod(int(meta(f"dim[{i}]")) for i in range(1, int(meta("dim[0]")) + 1))
    expected = count * int(meta("bitpix")) // 8
    offset = int(float(meta("vox_offset")))
    floats = NIFTI_FLOATS.get(int(meta("datatype")))
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            head = f.read(offset)
            if floats is not None:  # the byte order is the one in which sizeof_hdr reads 348 (540: NIfTI-2)
                floats = floats.newbyteorder("<" if int.from_bytes(head[:4], "little") in (348, 540) else ">")
            have, bad = 0, 0
            while have < expected:
                chunk = f.read(min(CHUNK, expected - have))
                if not chunk:
                    break
                have += len(chunk)
                if floats is not None:
                    values = np.frombuffer(chunk, floats, len(chunk) // floats.itemsize)
                    bad += values.size - int(np.count_nonzero(np.isfinite(values)))
            while compressed and f.read(CHUNK):  # to the end: gzip checks its CRC and length there
                pass
    except (EOFError, OSError, zlib.error) as e:
        return f"compressed data is damaged or cut short: truncated file? ({e})"
    if have < expected:
        return f"file is truncated: it holds {have} of the {expected} bytes of image data its header announces"
    if bad:
        return f"contains {bad} NaN or infinite voxels"
    return None


def _load(path: Path) -> sitk.Image:
    """An image file as SimpleITK reads it, after the checks its readers skip; raises _Unreadable."""
    if not path.is_file():  # a FIFO would block the reader, /dev/zero would never end
        raise _Unreadable("not a regular file (a pipe, socket or device)")
    if path.stat().st_size == 0:
        raise _Unreadable("file is empty")
    printed: list[str] = []
    try:
        with _itk_quiet(printed):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("nifti_type") and reader.GetMetaData("nifti_type") in NIFTI_SINGLE_FILE:
                problem = _nifti_problem(path, reader)
                if problem is not None:
                    raise _Unreadable(problem)
            return reader.Execute()
    except RuntimeError as e:
        raise _Unreadable(f"cannot read image ({_itk_problem(e, printed)})") from e


def read_image_file(path: Path) -> sitk.Image:
    """An image file as SimpleITK reads it; one InputError line naming the file if it is damaged."""
    path = Path(path)
    try:
        return _load(path)
    except _Unreadable as e:
        raise InputError(f"{path}: {e}") from e


def _read_dicom_series(folder: Path) -> sitk.Image:
    printed: list[str] = []
    try:
        with _itk_quiet(printed):
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(folder))
            if not series:
                raise InputError(f"{folder}: folder holds no DICOM series")
            if len(series) > 1:
                raise InputError(f"{folder}: folder holds {len(series)} DICOM series; give the folder of one series")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
            return reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{folder}: cannot read DICOM series ({_itk_problem(e, printed)})") from e


def read_volume(path: Path) -> sitk.Image:
    """A 3-D scalar float32 volume from a NIfTI/NRRD/MHA file or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    image = _read_dicom_series(path) if path.is_dir() else read_image_file(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} values per voxel; give one file per channel"
        )
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(
            f"{path}: image is {image.GetDimension()}-D of size {image.GetSize()}; a 3-D volume is required"
        )
    shear = _orthogonal(np.reshape(image.GetDirection(), (3, 3)))
    if shear > ORTHOGONALITY_TOLERANCE:
        raise InputError(f"{path}: {_sheared(shear)}")
    image = sitk.Cast(image, sitk.sitkFloat32)
    check_values(sitk.GetArrayViewFromImage(image), path)
    return image


def check_values(array: np.ndarray, path: Path) -> None:
    """Refuse NaN/Inf voxels and constant volumes: both would give a meaningless result."""
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(f"{path}: contains {bad} NaN or infinite voxels")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise InputError(f"{path}: volume is constant (every voxel is {lo:g}): an empty or blank image")


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = GEOMETRY_TOLERANCE) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def coverage(image: sitk.Image, reference: sitk.Image) -> float:
    """The share of `reference`'s voxels that lie inside `image` in space (0: resampling gives only zeros)."""
    inside = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(image)
    moved = sitk.Resample(inside, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(moved))) / math.prod(reference.GetSize())


ABSENT = "-"  # a channel argument meaning "this case lacks the channel"


def read_channels(
    paths: Sequence[Path], channel_names: Sequence[str], log: Callable[[str], None] = lambda _m: None
) -> list[sitk.Image]:
    """One volume per model channel, all on the first present channel's grid.

    A path of `-` (ABSENT) marks a channel the case lacks: the model gets an all-zero
    volume there, exactly as it was trained for missing channels.
    """
    if len(paths) != len(channel_names):
        raise InputError(
            f"the model expects {len(channel_names)} channel file(s) ({', '.join(channel_names)}), got {len(paths)}"
        )
    present = [i for i, p in enumerate(paths) if str(p) != ABSENT]
    if not present:
        raise InputError(f"every channel is marked absent ('{ABSENT}'); at least one image is needed")
    read = {i: read_volume(Path(paths[i])) for i in present}
    first = present[0]
    reference = read[first]
    images = []
    for i, name in enumerate(channel_names):
        if i not in read:
            log(f"channel {name} absent: given to the model as zeros, as in training")
            blank = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
            blank.CopyInformation(reference)
            images.append(blank)
        elif i != first and not same_grid(read[i], reference):
            covered = coverage(read[i], reference)
            if covered == 0.0:
                raise InputError(
                    f"{paths[i]}: channel {name} does not overlap {channel_names[first]} ({paths[first]}) in space: "
                    "no voxel of one lies inside the other; are both from the same scan session?"
                )
            if covered < 1.0:
                log(f"channel {name} covers {covered:.1%} of {channel_names[first]}'s field of view; 0 outside it")
            log(
                f"channel {name} ({Path(paths[i]).name}) is on a different grid; "
                f"resampled onto {channel_names[first]}'s grid"
            )
            images.append(sitk.Resample(read[i], reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        else:
            images.append(read[i])
    return images


def _hex_to_rgb01(color: str) -> tuple[float, float, float]:
    c = color.lstrip("#")
    return tuple(int(c[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def add_segment_metadata(image: sitk.Image, labels: Sequence[dict[str, Any]]) -> None:
    """Slicer's .seg.nrrd fields, so segments load with the model's names and colors."""
    size = image.GetSize()
    extent = " ".join(f"0 {n - 1}" for n in size)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for i, lab in enumerate(labels):
        key = f"Segment{i}_"
        r, g, b = _hex_to_rgb01(lab["color"])
        image.SetMetaData(key + "ID", f"Segment_{lab['value']}")
        image.SetMetaData(key + "Name", lab["name"])
        image.SetMetaData(key + "NameAutoGenerated", "0")
        image.SetMetaData(key + "Color", f"{r:.6f} {g:.6f} {b:.6f}")
        image.SetMetaData(key + "ColorAutoGenerated", "0")
        image.SetMetaData(key + "LabelValue", str(lab["value"]))
        image.SetMetaData(key + "Layer", "0")
        image.SetMetaData(key + "Extent", extent)
        term = lab.get("terminology")
        if term:
            image.SetMetaData(key + "Tags", f"TerminologyEntry:{term}|")


def write_volume(image: sitk.Image, path: Path, labels: Sequence[dict[str, Any]] | None = None) -> None:
    """Write atomically; `.seg.nrrd` files also carry Slicer segment names and colors.

    The file is read back before it replaces anything: ITK's writers leave a short file
    and raise nothing when the disk is full.
    """
    path = Path(path)
    check_output_path(path)
    if labels is not None and _suffix(path) == ".seg.nrrd":
        source, image = image, sitk.Image(image)
        for key in source.GetMetaDataKeys():  # the copy's first SetMetaData would drop the source's own keys
            image.SetMetaData(key, source.GetMetaData(key))
        add_segment_metadata(image, labels)

    def verify(tmp: Path) -> str | None:
        try:
            back = _load(tmp)
        except _Unreadable as e:
            return str(e)
        same = back.GetSize() == image.GetSize() and np.array_equal(
            sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)
        )
        return None if same else "its voxels read back different"

    printed: list[str] = []
    with atomic_path(path, verify) as tmp:
        try:
            with _itk_quiet(printed):
                sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as e:
            raise InputError(f"{path}: cannot write image ({_itk_problem(e, printed)})") from e
