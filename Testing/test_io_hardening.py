"""Writing on a full disk, ITK's messages, a closed stdout, channels apart in space, new output folders.

A full disk is simulated without root: the child process gets a file size limit
(RLIMIT_FSIZE) with SIGXFSZ ignored, so its writes past the limit fail with EFBIG, as
they fail with ENOSPC on a full file system.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, REPO, assert_one_line_error, run_main, tiny_net, write_volume_file

from UHarmonyLib.errors import InputError
from UHarmonyLib.model.weights import load_bundle, make_card, save_bundle

OLD = b"the previous result, which a failed write must leave as it is\n"

# outputs named by (option, file name); the last one is the one the file size limit stops
FULL_DISK: dict[str, list[tuple[str, str]]] = {
    "label-map-nii-gz": [("--out", "seg.nii.gz")],
    "label-map-nii": [("--out", "seg.nii")],
    "label-map-nrrd": [("--out", "seg.nrrd")],
    "label-map-seg-nrrd": [("--out", "seg.seg.nrrd")],
    "label-map-mha": [("--out", "seg.mha")],
    "gate-json": [("--out", "seg.nii.gz"), ("--gate-json", "gate.json")],
    "probabilities-nii-gz": [("--out", "seg.nii.gz"), ("--gate-json", "gate.json"), ("--probabilities", "p.nii.gz")],
}


def _argv(outputs: list[tuple[str, str]], folder: Path) -> list[str]:
    return [str(a) for option, name in outputs for a in (option, folder / name)]


def _limited(limit: int) -> Callable[[], None]:
    """A preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored), like a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def _segment_process(bundle: Path, case: Path, args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "UHARMONY_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "UHarmonyLib", "segment", "--model", str(bundle), str(case), "--progress", "json"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300, preexec_fn=_limited(limit)
    )


def _error_line(stderr: str) -> str:
    """The refusal of a `--progress json` run: exactly one stderr line, the error."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("uharmony: error: "), stderr
    return lines[0]


@pytest.mark.bad_input("segment: a full disk", by="case", words={k: "The previous file is kept." for k in FULL_DISK})
@pytest.mark.parametrize("case", list(FULL_DISK))
def test_full_disk_keeps_the_previous_output(case: str, tiny_bundle: Path, tmp_path: Path) -> None:
    """A write that the disk cuts short fails with one error line, exit code 2, and the previous file kept."""
    outputs = FULL_DISK[case]
    # a small case keeps the label map smaller than the gate's JSON whatever the random network predicts
    image = write_volume_file(tmp_path / "case.nrrd", size=(8, 8, 8), spacing=(1.5, 1.5, 1.5))
    sizes = tmp_path / "sizes"  # a run without limit says how large each output is
    assert run_main("segment", "--model", tiny_bundle, image, *_argv(outputs, sizes)).code == 0
    *before, failing = [(sizes / name).stat().st_size for _, name in outputs]
    assert failing > max(before, default=0), "the limit must stop the last output only"
    out = tmp_path / "out"
    out.mkdir()
    for _, name in outputs:
        (out / name).write_bytes(OLD)
    run = _segment_process(tiny_bundle, image, _argv(outputs, out), (max(before, default=0) + failing) // 2)
    line = _error_line(run.stderr)
    assert run.returncode == InputError.exit_code
    assert f"{out / outputs[-1][1]}:" in line and "The previous file is kept." in line
    assert (out / outputs[-1][1]).read_bytes() == OLD
    assert sorted(p.name for p in out.iterdir()) == sorted(name for _, name in outputs)  # no temporary file left


def test_full_disk_in_a_new_folder_leaves_no_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    """A failed write into folders it created removes them again: nothing is left behind."""
    image = write_volume_file(tmp_path / "case.nrrd", spacing=(1.5, 1.5, 1.5))
    run = _segment_process(tiny_bundle, image, ["--out", str(tmp_path / "new" / "deeper" / "seg.nii.gz")], 100)
    line = _error_line(run.stderr)
    assert run.returncode == InputError.exit_code and "Nothing was written." in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nrrd"]


def test_json_write_on_a_full_disk_keeps_the_previous_file(tmp_path: Path) -> None:
    """A JSON output the disk cuts short is refused in one line naming it, and the previous file is kept."""
    path = tmp_path / "gate.json"
    path.write_bytes(OLD)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from UHarmonyLib.errors import InputError\n"
        "from UHarmonyLib.files.atomic import write_text_atomic\n"
        "try:\n"
        f"    write_text_atomic(Path({str(path)!r}), json.dumps({{f'site {{i}}': 0.1 for i in range(20)}}, indent=2))\n"
        "except InputError as e:\n"
        "    print(e)\n"
    )
    # in a child: a file size limit in the test process would also stop pytest's own output to a log file
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120, preexec_fn=_limited(100)
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{path}: cannot write (File too large). The previous file is kept."
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["gate.json"]


def _cut_mha(folder: Path) -> Path:
    path = write_volume_file(folder / "case.mha", spacing=(1.5, 1.5, 1.5))
    path.write_bytes(path.read_bytes()[:5000])
    return path


def _empty(folder: Path) -> Path:
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _random_bytes(folder: Path) -> Path:
    path = folder / "noise.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


DAMAGED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "mha-cut-short": (_cut_mha, "cannot read image (image data is incomplete: truncated file?)"),
    "empty-file": (_empty, "file is empty"),
    "random-bytes": (_random_bytes, "cannot read image (not an image file SimpleITK can read)"),
}


@pytest.mark.bad_input(
    "segment: a damaged image, in a real process", by="case", words={k: w for k, (_, w) in DAMAGED.items()}
)
@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_image_gives_one_line_without_itk_internals(case: str, tiny_bundle: Path, tmp_path: Path) -> None:
    """A damaged image gives one stderr line: the file and the problem, no ITK source path or library output."""
    make, words = DAMAGED[case]
    path = make(tmp_path)
    run = _segment_process(tiny_bundle, path, ["--out", str(tmp_path / "seg.nii.gz")], resource.RLIM_INFINITY)
    line = _error_line(run.stderr)
    assert run.returncode == InputError.exit_code
    assert line == f"uharmony: error: {path}: {words}"


def test_closed_stdout_ends_quietly(tiny_bundle: Path) -> None:
    """`uharmony models info BUNDLE | head -1`: a reader that has left stops the command quietly, exit 141."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before anything is written
    try:
        run = subprocess.run(
            [sys.executable, "-m", "UHarmonyLib", "models", "info", str(tiny_bundle)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=300,
        )
    finally:
        os.close(write)
    assert (run.returncode, run.stderr) == (141, "")


def test_channel_far_from_the_first_is_refused(two_channel_bundle: Path, tmp_path: Path) -> None:
    """A channel that does not overlap the first one in space is refused in one line naming it; nothing written."""
    t1 = write_volume_file(tmp_path / "t1.nrrd", spacing=(1.5, 1.5, 1.5))
    flair = write_volume_file(tmp_path / "flair.nrrd", spacing=(1.5, 1.5, 1.5), origin=(5000.0, 0.0, 0.0), seed=1)
    out = tmp_path / "seg.nii.gz"
    run = run_main("segment", "--model", two_channel_bundle, t1, flair, "--out", out, "--progress", "json")
    line = assert_one_line_error(run)
    assert run.code == InputError.exit_code
    assert f"{flair}: channel FLAIR does not overlap T1 ({t1}) in space" in line
    assert not out.exists()


def test_channel_partly_outside_the_first_is_reported(two_channel_bundle: Path, tmp_path: Path) -> None:
    """A channel covering part of the first one's field of view is used, and the log says how much it covers."""
    t1 = write_volume_file(tmp_path / "t1.nrrd", spacing=(1.5, 1.5, 1.5))
    flair = write_volume_file(tmp_path / "flair.nrrd", spacing=(1.5, 1.5, 1.5), origin=(18.0, 0.0, 0.0), seed=1)
    run = run_main("segment", "--model", two_channel_bundle, t1, flair, "--out", tmp_path / "seg.nii.gz")
    assert run.code == 0, run.stderr
    assert "channel FLAIR covers 50.0% of T1's field of view; 0 outside it" in run.stderr


def test_bundle_into_missing_folders(tmp_path: Path) -> None:
    """A bundle saved below folders that do not exist yet creates them (add-site and train write bundles so)."""
    net = tiny_net()
    card = make_card(
        net,
        name="deep",
        version=1,
        channels=[{"name": "FLAIR", "modality": "MR"}],
        labels=LABELS,
        sites=[{"name": "alpha"}, {"name": "beta"}, {"name": "gamma"}],
    )
    path = save_bundle(net, card, tmp_path / "models" / "new" / "deep-v1")
    assert load_bundle(path).card["name"] == "deep"
