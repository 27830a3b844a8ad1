"""The browser edition's modules on real MRML (trame-slicer's SlicerApp on slicer-core), without a browser.

Cases, the gate panel's rows and words, the add-site set on disk, exports, the loss plot, the probe,
the job runner (a real engine process on a tiny model) and `uharmony web`'s refusals.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from conftest import blob_array, write_volume_file
from slicer_helpers import volume_node
from trame.app import get_server
from trame_slicer.core import SlicerApp
from UHarmonySlicerLib.addsite import Pair, TrainingCurve
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.gate_display import unfamiliar_message
from UHarmonySlicerLib.models import ModelInfo, read_model
from UHarmonySlicerLib.segment import SegmentResult, import_results, replace_output, segment_job
from UHarmonySlicerLib.volumes import import_segmentation

from UHarmonyLib.resources import BUNDLED_MODELS, DEFAULT_MODEL_NAME, SAMPLE_DATA
from UHarmonyWeb import addsite_set
from UHarmonyWeb.addsite_panel import MARGIN, PLOT_HEIGHT, PLOT_WIDTH, loss_points, plot_xy
from UHarmonyWeb.cases import Case, case_name, channel_volumes, folder_files, load_files, load_sample
from UHarmonyWeb.export import export_seg_nrrd
from UHarmonyWeb.gate_panel import gate_rows, gate_state, gate_verdict
from UHarmonyWeb.probe import segment_at
from UHarmonyWeb.runner import JobRunner
from UHarmonyWeb.workspace import Workspace, slug

REPO = Path(__file__).resolve().parent.parent
TRUTH = SAMPLE_DATA / "labelsTr" / "held-out-clinic_000.nii.gz"
GATE = {
    "sites": {"hospital-3t-3d": 0.7, "hospital-1.5t-2d": 0.1, "hospital-3t-2d": 0.15, "hospital-1.5t-old": 0.05},
    "chosen": "hospital-3t-3d",
    "entropy": 0.62,
    "familiar": False,
    "familiar_entropy": 0.5,
    "distance": 2.5,
    "familiar_distance": 1.35,
    "nearest_site": "hospital-3t-3d",
    "site_given": False,
}


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


def corrected(app: SlicerApp, case: Case, model: ModelInfo, name: str = "corrected") -> slicer.vtkMRMLSegmentationNode:
    """The sample's ground truth as a segmentation with the model's segments (names, colours, codes)."""
    return import_segmentation(app.scene, TRUTH, model.labels, case.reference, name)


def test_the_sample_opens_with_each_channel_named_and_matched_to_any_model(app, sample, model) -> None:
    assert sample.name == "UHarmony sample" and not sample.dicom
    names = [v.GetName() for v in sample.volumes]
    assert names == ["UHarmony sample flair", "UHarmony sample t1", "UHarmony sample t1ce", "UHarmony sample t2"]
    assert channel_volumes(sample, model.channel_names) == sample.volumes
    assert channel_volumes(sample, ["FLAIR"]) == [sample.volumes[0]]  # the starter model's one channel
    assert channel_volumes(sample, ["T2", "T1", "PD"]) == [sample.volumes[3], sample.volumes[1], None]


def test_files_open_as_one_case_named_by_what_the_files_share(app, tmp_path: Path) -> None:
    for i in range(2):
        write_volume_file(tmp_path / f"BraTS_007_{i:04d}.nii.gz", seed=i)
    (tmp_path / ".hidden").write_text("x")
    files = folder_files(tmp_path)
    assert [f.name for f in files] == ["BraTS_007_0000.nii.gz", "BraTS_007_0001.nii.gz"]
    app.scene.Clear()
    case = load_files(app, files)
    assert case.name == "BraTS_007" and [v.GetName() for v in case.volumes] == ["BraTS_007_0000", "BraTS_007_0001"]
    assert channel_volumes(case, ["T1", "FLAIR"]) == case.volumes  # nnU-Net channel indices
    assert case_name(["case_a_t1", "case_a_t2"]) == "case_a" and case_name(["scan"]) == "scan"
    assert case_name(["ab", "cd"]) == "ab"  # nothing shared: the first name
    unnamed = Case("x", [case.volumes[0], case.volumes[1]])
    unnamed.volumes[0].SetName("left")
    unnamed.volumes[1].SetName("right")
    with pytest.raises(InputRefused, match=r"which of the model's channels \(a, b, c\).*CASE_0000"):
        channel_volumes(unnamed, ["a", "b", "c"])
    assert channel_volumes(unnamed, ["a", "b"]) == unnamed.volumes  # as many as channels: load order
    with pytest.raises(InputRefused, match="is not a folder on the server"):
        folder_files(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputRefused, match=r"No image volume could be read from notes\.txt"):
        load_files(app, [tmp_path / "notes.txt"])
    with pytest.raises(InputRefused, match=r"^No file was given\.$"):
        load_files(app, [])


def test_gate_rows_verdict_and_warning_are_the_engines_numbers_in_plain_words() -> None:
    rows = gate_rows(GATE)
    assert [(r["site"], r["probability"], r["chosen"]) for r in rows] == [
        ("hospital-3t-3d", 0.7, True), ("hospital-1.5t-2d", 0.1, False),
        ("hospital-3t-2d", 0.15, False), ("hospital-1.5t-old", 0.05, False),
    ]  # fmt: skip
    assert [r["color"] for r in rows[:2]] == ["#e6194b", "#3cb44b"]  # the gate map's site colours
    state = gate_state(GATE, has_map=True)
    assert state["uh_gate_warning"] == unfamiliar_message(GATE) and state["uh_has_gate_map"]
    assert "looks most like site hospital-3t-3d (70%), but not enough like" in state["uh_gate_verdict"]
    assert gate_verdict({**GATE, "familiar": True}).startswith("The case looks like site hospital-3t-3d (70%)")
    assert "cannot check how familiar" in gate_verdict({**GATE, "familiar": None})
    assert "was named for this case" in gate_verdict({**GATE, "site_given": True})
    assert gate_state(None, False) == {
        "uh_gate_rows": [], "uh_gate_verdict": "", "uh_gate_warning": "", "uh_has_gate_map": False,
    }  # fmt: skip


def test_saved_cases_join_one_set_in_the_layout_add_site_reads(app, sample, model, tmp_path: Path) -> None:
    folder = addsite_set.set_folder(tmp_path / "sets", "Clinic B/2")
    assert folder.name == "Clinic_B_2" and addsite_set.read_set(folder) is None
    segmentation = corrected(app, sample, model)
    pair = Pair(channel_volumes(sample, model.channel_names), segmentation)
    assert addsite_set.save_case(app.scene, folder, pair, "Clinic B/2", model) == 1
    assert addsite_set.save_case(app.scene, folder, pair, "Clinic B/2", model) == 2
    dataset = addsite_set.read_set(folder)
    assert dataset is not None and dataset["numTraining"] == 2 and dataset["name"] == "Clinic B/2"
    assert [c["label"] for c in dataset["training"]] == ["labelsTr/Clinic_B_2_000.nrrd", "labelsTr/Clinic_B_2_001.nrrd"]
    assert dataset["training"][1]["image"][3] == "imagesTr/Clinic_B_2_001_0003.nrrd"
    for case in dataset["training"]:
        assert all((folder / rel).is_file() for rel in [*case["image"], case["label"]])
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]  # no leftovers
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / dataset["training"][0]["label"])))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(TRUTH)))
    assert np.array_equal(saved, truth)  # values 1..k in the model's label order, on the input's grid
    assert addsite_set.case_count(folder) == 2

    other = ModelInfo(model.path, {**model.card, "channels": [{"name": c, "modality": "MR"} for c in "abcd"]})
    with pytest.raises(InputRefused, match="holds cases with channels flair, t1, t1ce, t2"):
        addsite_set.save_case(app.scene, folder, Pair(sample.volumes, segmentation), "Clinic B/2", other)
    with pytest.raises(InputRefused, match="Name the new site first"):
        addsite_set.save_case(app.scene, folder, pair, "  ", model)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("tumour")
    with pytest.raises(InputRefused, match="Segment 'tumour' of corrected is not a label of the model"):
        addsite_set.save_case(app.scene, folder, pair, "Clinic B/2", model)
    assert addsite_set.case_count(folder) == 2


def test_add_site_from_a_set_refuses_before_anything_runs(model, tmp_path: Path) -> None:
    empty = tmp_path / "sets" / "x"
    with pytest.raises(InputRefused, match="No case of site x has been saved yet"):
        addsite_set.add_site_set_job(model, empty, "x", tmp_path / "user")
    with pytest.raises(InputRefused, match="already has a site named 'hospital-3t-3d'"):
        addsite_set.add_site_set_job(model, empty, "hospital-3t-3d", tmp_path / "user")
    broken = ModelInfo(tmp_path, {}, problem="no card")
    with pytest.raises(InputRefused, match="cannot be used: no card"):
        addsite_set.add_site_set_job(broken, empty, "x", tmp_path / "user")
    (empty / "dataset.json").parent.mkdir(parents=True)
    (empty / "dataset.json").write_text(json.dumps({"training": [{}]}))
    with pytest.raises(InputRefused, match="at least 1 step"):
        addsite_set.add_site_set_job(model, empty, "x", tmp_path / "user", steps=0)
    job = addsite_set.add_site_set_job(model, empty, "x", tmp_path / "user", steps=3)
    assert job.temp is None and not (tmp_path / "user").exists()  # made, not started: nothing written yet


def test_seg_nrrd_keeps_names_colours_and_codes(app, sample, model, tmp_path) -> None:
    """The card's segment names, colours and codes reach the file (DICOM SEG: Testing/test_web_export.py)."""
    segmentation = corrected(app, sample, model)
    path = export_seg_nrrd(segmentation, tmp_path / "case.seg.nrrd")
    header = path.read_bytes()[:8192].decode("latin-1")
    names = ["Segment0_Name:=lesion core", "Segment1_Name:=edema", "Segment0_NameAutoGenerated:=0"]
    codes = ["SCT^108369006^Neoplasm", "SCT^79654002^Edema", "Segment0_Color:=0.839216 0.152941 0.156863"]
    for part in names + codes:
        assert part in header, part


def test_a_repeated_run_keeps_the_models_segment_names_and_colours(app, sample, model) -> None:
    """Segmenting again updates the segmentation in place; its segments stay the model's, not auto-named."""
    payload = {"gate": GATE, "volumes_ml": {}}
    first = import_results(app.scene, model, sample.reference, payload, TRUTH, None, "first")
    second = import_results(app.scene, model, sample.reference, payload, TRUTH, None, "second")
    replaced = replace_output(app.scene, second, first.segmentation, sample.reference)
    segments = replaced.segmentation.GetSegmentation()
    for i in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(i)
        assert segment.GetName() == model.labels[i]["name"]
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()


def test_the_probe_names_the_segment_under_a_point(app, sample, model) -> None:
    segmentation = corrected(app, sample, model)
    truth = sitk.ReadImage(str(TRUTH))
    labels = sitk.GetArrayFromImage(truth)
    for value, name in ((1, "lesion core"), (2, "edema"), (0, "")):
        k, j, i = (int(c) for c in np.argwhere(labels == value)[len(np.argwhere(labels == value)) // 2])
        x, y, z = truth.TransformIndexToPhysicalPoint((i, j, k))
        assert segment_at(segmentation, [-x, -y, z]) == name  # LPS file, RAS scene


def test_the_loss_plot_draws_the_curves_points() -> None:
    scene = SlicerApp().scene
    curve = TrainingCurve(scene)
    for line in ("step 10/40 segmentation loss 0.8", "other line", "step 20/40 segmentation loss 0.4"):
        curve.on_event({"event": "log", "message": line})
    points = loss_points(curve)
    assert points == [[10.0, 0.8], [20.0, 0.4]]
    (x1, y1), (x2, y2) = plot_xy(points, total_steps=40)
    width, height = PLOT_WIDTH - 2 * MARGIN, PLOT_HEIGHT - 2 * MARGIN
    assert (x1, y1) == (MARGIN + width / 4, MARGIN) and (x2, y2) == (MARGIN + width / 2, MARGIN + height / 2)
    assert plot_xy([], 40) == []


def test_work_folders_never_overwrite_earlier_ones(tmp_path: Path) -> None:
    work = Workspace(tmp_path / "work")
    first = work.new_folder(work.runs, "UHarmony sample uharmony-default v6")
    second = work.new_folder(work.runs, "UHarmony sample uharmony-default v6")
    assert (first.name, second.name) == ("UHarmony_sample_uharmony-default_v6", "UHarmony_sample_uharmony-default_v6-2")
    assert slug("../..") == "case" and slug("a/b c") == "a_b_c"


def test_the_runner_shows_progress_runs_one_job_and_cancels(tiny_bundle: Path) -> None:
    """A real engine process (tiny model) polled on an asyncio loop, as on the server."""
    app = SlicerApp()
    volume = volume_node(app.scene, blob_array((24, 20, 16), seed=3), "case FLAIR")
    model = read_model(tiny_bundle)
    state = get_server("web-logic-runner").state
    errors: list[str] = []
    done: list[SegmentResult] = []
    cancelled: list[bool] = []

    async def scenario() -> None:
        runner = JobRunner(state, [("a", "Segment"), ("b", "Train")], errors.append)
        runner.update([True, True])
        assert (state["a_text"], state["a_enabled"], state["b_enabled"]) == ("Segment", True, True)

        def make_job() -> Any:
            return segment_job(app.scene, model, [volume], device="cpu", on_event=runner.progress("a"))

        assert runner.press("a", make_job, done.append)
        assert (state["a_text"], state["a_enabled"], state["b_enabled"]) == ("Cancel", True, False)
        while runner.running:
            await asyncio.sleep(0.05)
        assert done and done[0].segmentation is not None and not errors
        assert state["a_done"] == state["a_total"] > 0 and state["a_stage"]
        assert state["a_text"] == "Segment" and state["a_enabled"]

        assert runner.press("a", make_job, done.append, lambda: cancelled.append(True))
        assert not runner.press("a", make_job, done.append)  # the running job's button cancels it
        assert cancelled == [True] and not runner.running and len(done) == 1
        assert state["uh_log"][-1] == "Cancelled: nothing was changed."

        def refused() -> Any:
            raise InputRefused("Open a case first.")

        assert not runner.press("b", refused, done.append) and errors == ["Open a case first."]

    asyncio.run(scenario())


def _web(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "UHarmonyLib", "web", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **(env or {})})  # fmt: skip


def test_web_refuses_a_missing_models_folder_and_a_taken_port_in_one_line(tmp_path: Path) -> None:
    missing = _web("--models", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w"))
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"uharmony: error: --models {tmp_path / 'nowhere'}: no such folder"
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _web("--port", str(port), "--work", str(tmp_path / "w"))
    assert busy.returncode == 2
    assert busy.stderr.strip() == f"uharmony: error: --port {port}: already in use on 127.0.0.1; choose another port"
    (tmp_path / "file").write_text("x")
    bad_work = _web("--port", "0", "--work", str(tmp_path / "file" / "w"))
    assert (
        bad_work.returncode == 2 and "--work" in bad_work.stderr and "cannot create the work folder" in bad_work.stderr
    )


def test_web_without_trame_says_how_to_install_it(tmp_path: Path) -> None:
    script = (
        "import sys\nsys.modules['trame_slicer'] = None\nfrom UHarmonyLib.cli import main\n"
        f"sys.exit(main(['web', '--port', '0', '--work', {str(tmp_path / 'w')!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 3
    assert run.stderr.strip() == (
        'uharmony: error: the browser edition needs trame_slicer, which is not installed: pip install "uharmony[web]"'
    )


def test_web_on_another_address_warns_that_it_has_no_authentication(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "UHarmonyLib", "web", "--host", "0.0.0.0", "--port", "0", "--work", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert line.startswith("uharmony: warning: serving on 0.0.0.0: the browser edition has no authentication")
    assert "reverse proxy that authenticates users" in line
