"""Reading, checking and writing volumes with SimpleITK; one-line errors for bad files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError
from UHarmonyLib.files.atomic import atomic_path, check_writable

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
GEOMETRY_TOLERANCE = 1e-5


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


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series; give the folder of one series")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def read_volume(path: Path) -> sitk.Image:
    """A 3-D scalar float32 volume from a NIfTI/NRRD/MHA file or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as e:
        detail = next(
            (ln.strip() for ln in str(e).splitlines() if ln.strip().startswith(("Description", "Exception"))), ""
        )
        raise InputError(f"{path}: cannot read image ({detail or 'unsupported or damaged file'})") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} values per voxel; give one file per channel"
        )
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(
            f"{path}: image is {image.GetDimension()}-D of size {image.GetSize()}; a 3-D volume is required"
        )
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
    """Write atomically; `.seg.nrrd` files also carry Slicer segment names and colors."""
    path = Path(path)
    check_output_path(path)
    if labels is not None and _suffix(path) == ".seg.nrrd":
        image = sitk.Image(image)
        add_segment_metadata(image, labels)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as e:
            raise InputError(f"{path}: cannot write image ({str(e).splitlines()[-1].strip()})") from e
