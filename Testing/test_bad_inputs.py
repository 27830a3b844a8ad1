"""Every bad input or output path: one error line, a non-zero exit code, and nothing written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CliRun, assert_one_line_error, blob_array, make_image, run_main, write_volume_file

import UHarmonyLib.commands.segment  # noqa: F401  (imported before any privilege drop below)
from UHarmonyLib.errors import InputError


@dataclass
class Case:
    """The channel files and output path of one bad command, and the words its error must contain."""

    channels: list[Path]
    out: Path
    expected: str
    extra: list[str] = field(default_factory=list)


def _blob(path: Path, size: tuple[int, int, int] = (24, 20, 16)) -> Path:
    return write_volume_file(path, size=size, spacing=(1.5, 1.5, 1.5))


def _with_voxel(path: Path, value: float) -> Path:
    array = blob_array((24, 20, 16))
    array[5, 6, 7] = value
    return write_volume_file(path, array_zyx=array, spacing=(1.5, 1.5, 1.5))


def _missing(ind: Path, out: Path) -> Case:
    return Case([ind / "nowhere.nii.gz"], out / "seg.nii.gz", "file not found")


def _garbage(ind: Path, out: Path) -> Case:
    bad = ind / "garbage.nii.gz"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    return Case([bad], out / "seg.nii.gz", "cannot read image")


def _two_channels(ind: Path, out: Path) -> Case:
    return Case([_blob(ind / "a.nrrd"), _blob(ind / "b.nrrd")], out / "seg.nii.gz", "expects 1 channel file(s)")


def _vector(ind: Path, out: Path) -> Case:
    array = np.stack([blob_array((24, 20, 16), seed=k) for k in range(3)], axis=-1)
    path = ind / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(path))
    return Case([path], out / "seg.nii.gz", "has 3 values per voxel")


def _two_d(ind: Path, out: Path) -> Case:
    path = ind / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(blob_array((24, 20, 1))[0]), str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 2
    return Case([path], out / "seg.nii.gz", "2-D of size (24, 20)")


def _single_slice(ind: Path, out: Path) -> Case:
    path = ind / "thin.nrrd"
    sitk.WriteImage(make_image(blob_array((24, 20, 1))), str(path))
    assert sitk.ReadImage(str(path)).GetSize() == (24, 20, 1)
    return Case([path], out / "seg.nii.gz", "a 3-D volume is required")


def _constant(ind: Path, out: Path) -> Case:
    path = write_volume_file(ind / "flat.nii.gz", array_zyx=np.full((16, 20, 24), 42.0, np.float32))
    return Case([path], out / "seg.nii.gz", "volume is constant")


def _nan(ind: Path, out: Path) -> Case:
    return Case([_with_voxel(ind / "nan.nrrd", float("nan"))], out / "seg.nii.gz", "contains 1 NaN or infinite")


def _inf(ind: Path, out: Path) -> Case:
    return Case([_with_voxel(ind / "inf.mha", float("inf"))], out / "seg.nii.gz", "contains 1 NaN or infinite")


def _cut(path: Path, fraction: float) -> Path:
    """`path` with only the first `fraction` of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _cut_file(suffix: str, fraction: float, expected: str) -> Callable[[Path, Path], Case]:
    def case(ind: Path, out: Path) -> Case:
        return Case([_cut(_blob(ind / f"case{suffix}"), fraction)], out / "seg.nii.gz", expected)

    return case


def _empty_file(ind: Path, out: Path) -> Case:
    path = ind / "empty.nii.gz"
    path.write_bytes(b"")
    return Case([path], out / "seg.nii.gz", "file is empty")


def _text_file(ind: Path, out: Path) -> Case:
    path = ind / "notes.nrrd"
    path.write_text("not an image, only text\n")
    return Case([path], out / "seg.nii.gz", "cannot read image (not an image file SimpleITK can read)")


def _nifti_nan(ind: Path, out: Path) -> Case:
    return Case([_with_voxel(ind / "nan.nii.gz", float("nan"))], out / "seg.nii.gz", "contains 1 NaN or infinite")


def _nifti_inf(ind: Path, out: Path) -> Case:
    return Case([_with_voxel(ind / "inf.nii", float("-inf"))], out / "seg.nii.gz", "contains 1 NaN or infinite")


def _nifti_all_nan(ind: Path, out: Path) -> Case:
    path = write_volume_file(ind / "allnan.nii.gz", array_zyx=np.full((16, 20, 24), np.nan, np.float32))
    return Case([path], out / "seg.nii.gz", "contains 7680 NaN or infinite voxels")


SHEAR = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # index axis 1 leans 17 degrees towards x


def _sheared_axes(ind: Path, out: Path) -> Case:
    path = write_volume_file(ind / "sheared.nrrd", spacing=(1.5, 1.5, 1.5), direction=SHEAR)
    return Case([path], out / "seg.nii.gz", "axes are not perpendicular (sheared by 17 degrees)")


def _sheared_nifti_sform(ind: Path, out: Path) -> Case:
    """A NIfTI whose sform shears (as an affine registration writes it); ITK would take its qform instead."""
    nib = pytest.importorskip("nibabel")
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[0, 1] = 0.45
    image = nib.Nifti1Image(blob_array((24, 20, 16)).transpose(2, 1, 0), affine)
    image.set_qform(affine, 1)
    image.set_sform(affine, 1)
    path = ind / "sheared.nii.gz"
    nib.save(image, path)
    return Case([path], out / "seg.nii.gz", "axes are not perpendicular (sheared by 17 degrees)")


def _bad_input_into_new_folder(ind: Path, out: Path) -> Case:
    return Case([ind / "nowhere.nii.gz"], out / "new" / "deeper" / "seg.nii.gz", "file not found")


def _out_parent_is_file(ind: Path, out: Path) -> Case:
    (out / "notes.txt").write_text("a regular file, not a folder\n")
    return Case([_blob(ind / "case.nrrd")], out / "notes.txt" / "seg.nii.gz", "is a file, not a folder")


def _out_grandparent_is_file(ind: Path, out: Path) -> Case:
    (out / "notes.txt").write_text("a regular file, not a folder\n")
    return Case([_blob(ind / "case.nrrd")], out / "notes.txt" / "new" / "seg.nii.gz", "is a file, not a folder")


def _unsupported_extension(ind: Path, out: Path) -> Case:
    return Case([_blob(ind / "case.nrrd")], out / "seg.png", "unsupported output format")


def _same_output_twice(ind: Path, out: Path) -> Case:
    return Case([_blob(ind / "case.nrrd")], out / "seg.nrrd", "two outputs", ["--probabilities", str(out / "seg.nrrd")])


def _gate_json_suffix(ind: Path, out: Path) -> Case:
    return Case([_blob(ind / "case.nrrd")], out / "seg.nrrd", "must end in .json", ["--gate-json", str(out / "g.txt")])


def _empty_dicom_folder(ind: Path, out: Path) -> Case:
    folder = ind / "dicom"
    folder.mkdir()
    (folder / "README.txt").write_text("no images here\n")
    return Case([folder], out / "seg.nii.gz", "holds no DICOM series")


def _mps_without_an_apple_gpu(ind: Path, out: Path) -> Case:
    return Case([_blob(ind / "case.nrrd")], out / "seg.nrrd", "no Apple GPU (MPS) is available", ["--device", "mps"])


def _fifo_input(ind: Path, out: Path) -> Case:
    fifo = ind / "pipe.nii.gz"
    os.mkfifo(fifo)  # a reader would block forever
    return Case([fifo], out / "seg.nii.gz", "not a regular file (a pipe, socket or device)")


def _device_link_input(ind: Path, out: Path) -> Case:
    link = ind / "zeros.nii.gz"
    link.symlink_to("/dev/zero")  # a reader would never reach the end
    return Case([link], out / "seg.nii.gz", "not a regular file (a pipe, socket or device)")


def _fifo_output(ind: Path, out: Path) -> Case:
    os.mkfifo(out / "seg.nii.gz")  # a writer would block until someone reads
    return Case([_blob(ind / "case.nrrd")], out / "seg.nii.gz", "is not a regular file (a pipe, socket or device)")


CASES: dict[str, Callable[[Path, Path], Case]] = {
    "missing-file": _missing,
    "unreadable-file": _garbage,
    "wrong-channel-count": _two_channels,
    "vector-image": _vector,
    "2d-image": _two_d,
    "single-slice": _single_slice,
    "constant-volume": _constant,
    "nan-voxel": _nan,
    "inf-voxel": _inf,
    "empty-file": _empty_file,
    "text-file-named-nrrd": _text_file,
    "nii-gz-cut-at-50-percent": _cut_file(".nii.gz", 0.5, "compressed data is damaged or cut short"),
    "nii-gz-cut-at-95-percent": _cut_file(".nii.gz", 0.95, "compressed data is damaged or cut short"),
    "nii-cut-at-50-percent": _cut_file(".nii", 0.5, "file is truncated: it holds 15184 of the 30720 bytes"),
    "nii-cut-at-95-percent": _cut_file(".nii", 0.95, "file is truncated: it holds 29166 of the 30720 bytes"),
    "nrrd-cut-at-50-percent": _cut_file(".nrrd", 0.5, "cannot read image (image data is incomplete"),
    "mha-cut-at-50-percent": _cut_file(".mha", 0.5, "cannot read image (image data is incomplete"),
    "nifti-nan-voxel": _nifti_nan,
    "nifti-inf-voxel": _nifti_inf,
    "nifti-all-nan": _nifti_all_nan,
    "sheared-axes": _sheared_axes,
    "nifti-sheared-sform": _sheared_nifti_sform,
    "bad-input-with-new-output-folder": _bad_input_into_new_folder,
    "output-parent-is-a-file": _out_parent_is_file,
    "output-grandparent-is-a-file": _out_grandparent_is_file,
    "unsupported-extension": _unsupported_extension,
    "same-output-twice": _same_output_twice,
    "gate-json-suffix": _gate_json_suffix,
    "dicom-folder-without-series": _empty_dicom_folder,
    "mps-without-an-apple-gpu": _mps_without_an_apple_gpu,  # this machine has none
    "fifo-input": _fifo_input,
    "device-link-input": _device_link_input,
    "fifo-output": _fifo_output,
}


def _expected_words() -> dict[str, str]:
    """Each case's error words, for docs/bad-inputs.md (scripts/bad_inputs_md.py); the factories write small files."""
    with tempfile.TemporaryDirectory() as tmp:
        words = {}
        for key, make in CASES.items():
            ind, out = Path(tmp, key, "in"), Path(tmp, key, "out")
            ind.mkdir(parents=True)
            out.mkdir()
            words[key] = make(ind, out).expected
    return words


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _check_refusal(run: CliRun, mode: str, expected: str) -> None:
    if mode == "json":
        # Slicer's mode: stderr holds only the error line, stdout's last event is the same error
        line = assert_one_line_error(run)
        last = json.loads(run.stdout.splitlines()[-1])
        assert last == {"event": "error", "message": line.removeprefix("uharmony: error: ")}
    else:
        assert run.code != 0
        errors = [ln for ln in run.stderr_lines if ln.startswith("uharmony: error:")]
        assert len(errors) == 1 and run.stderr_lines[-1] == errors[0], run.stderr
        line = errors[0]
        assert run.stdout == ""
    assert run.code == InputError.exit_code
    assert expected in line, line


@pytest.mark.bad_input("segment: an input image or output path", by="case", words=_expected_words())
@pytest.mark.parametrize("mode", ["bar", "json"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_refused_without_output(case: str, mode: str, tiny_bundle: Path, tmp_path: Path) -> None:
    """A bad input or output path gives one error line, exit code 2, and leaves the output folder as it was."""
    ind, out = tmp_path / "in", tmp_path / "out"
    ind.mkdir()
    out.mkdir()
    c = CASES[case](ind, out)
    before = _listing(out)
    run = run_main("segment", "--model", tiny_bundle, *c.channels, "--out", c.out, "--progress", mode, *c.extra)
    _check_refusal(run, mode, c.expected)
    assert _listing(out) == before


def test_missing_output_folders_are_created(tiny_bundle: Path, tmp_path: Path) -> None:
    """Output folders that do not exist yet are created, and every output is written whole into them."""
    case = _blob(tmp_path / "case.nrrd")
    new = tmp_path / "results" / "new"
    outputs = [new / "seg.nii.gz", new / "maps" / "prob.nrrd", tmp_path / "gate" / "g.json"]
    run = run_main(
        "segment", "--model", tiny_bundle, case, "--out", outputs[0], "--probabilities", outputs[1],
        "--gate-json", outputs[2], "--progress", "json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert sitk.ReadImage(str(outputs[0])).GetSize() == (24, 20, 16)
    assert sitk.ReadImage(str(outputs[1])).GetNumberOfComponentsPerPixel() == 3
    assert "chosen" in json.loads(outputs[2].read_text())
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["case.nrrd", "g.json", "prob.nrrd", "seg.nii.gz"]  # no temporary file left


def test_output_equal_to_input_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """Naming an input file as the output is refused before any work, and the input keeps its bytes."""
    case = write_volume_file(tmp_path / "case.nii.gz", spacing=(1.5, 1.5, 1.5))
    data = case.read_bytes()
    for mode in ("bar", "json"):
        run = run_main("segment", "--model", tiny_bundle, case, "--out", case, "--progress", mode)
        _check_refusal(run, mode, "would overwrite an input file")
    assert case.read_bytes() == data
    assert _listing(tmp_path) == ["case.nii.gz"]


@contextlib.contextmanager
def _without_root() -> Iterator[None]:
    """Run as an unprivileged user if this process is root (root ignores permission bits)."""
    if os.geteuid() != 0:
        yield
        return
    os.setresuid(65534, 65534, 0)  # keep 0 as saved uid so root can be restored
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)


def test_read_only_output_folder_refused(tiny_bundle: Path, volume_file: Path) -> None:
    """An output folder the user cannot write to is refused up front with one error line and nothing written."""
    base = Path(tempfile.mkdtemp(prefix="uharmony-ro-"))  # outside pytest's owner-only folders
    readonly = base / "readonly"
    try:
        base.chmod(0o755)
        readonly.mkdir()
        readonly.chmod(0o555)
        with _without_root():
            assert not os.access(readonly, os.W_OK), "the folder must really be read-only for this user"
            run = run_main("segment", "--model", tiny_bundle, volume_file, "--out", readonly / "seg.nii.gz")
        line = assert_one_line_error(run)
        assert "is not writable" in line
        assert run.code == InputError.exit_code
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)
        shutil.rmtree(base)
