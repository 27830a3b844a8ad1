"""The browser edition end to end: a real `uharmony web` on 127.0.0.1 driven by headless Chromium (Playwright).

One case goes through everything a clinic does with it: open the bundled sample, start and cancel a
run, segment, read the gate's numbers from the page and compare them with the engine's own JSON,
paint one stroke with the Segment Editor and find it in the saved label map, save the case into a
local add-site set, add the site (a tiny run), segment again with the new version, export. Every step
leaves a screenshot in the test's temporary folder. The server and the browser are always stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from playwright.sync_api import Browser, Page, sync_playwright
from pydicom.uid import SegmentationStorage

from UHarmonyLib.resources import BUNDLED_MODELS, DEFAULT_MODEL_NAME, SAMPLE_DATA

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1500, "height": 950}
STEP_TIMEOUT_MS = 240_000  # one engine run on two busy cores
RENDERED_VIEWS = "[...document.querySelectorAll('.layout-grid-item img')].filter(i => i.naturalWidth > 0).length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"uharmony web exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.25)
    raise AssertionError(f"uharmony web did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server cancels its engine job on the way out), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`uharmony web` on a free 127.0.0.1 port; its work and user models folders in tmp_path."""
    port, work, models = free_port(), tmp_path / "work", tmp_path / "models"
    log = tmp_path / "server.log"
    env = {**os.environ, "UHARMONY_MODELS": str(models), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "UHarmonyLib", "web", "--port", str(port), "--work", str(work), "--device", "cpu"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url + "index.html", proc, log)
        yield {"url": url, "work": work, "models": models, "log": log}
    finally:
        stop(proc)


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def shoot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000


def engine_result(page: Page) -> dict[str, Any]:
    """The engine's own result event of the latest run, as the app saved it beside the run."""
    run = Path(page.get_attribute("#status", "data-run") or "")
    return json.loads((run / "engine_result.json").read_text(encoding="utf-8"))


def page_gate(page: Page) -> dict[str, float]:
    bars = page.eval_on_selector_all("#gate .gate-bar", "els => els.map(e => [e.dataset.site, e.dataset.probability])")
    return {site: float(p) for site, p in bars}


def hover(page: Page, x: float, y: float) -> dict[str, str]:
    """Move the mouse onto (x, y) of a slice view and read the probe (the crosshair follows the mouse)."""
    page.mouse.move(x - 3, y)
    page.mouse.move(x, y)
    page.wait_for_function(
        f"document.querySelector('#probe').dataset.ras !== '{page.get_attribute('#probe', 'data-ras')}'"
    )
    return {key: page.get_attribute("#probe", f"data-{key}") or "" for key in ("ras", "ijk", "segment")}


def value_at(label_map: Path, ras: str) -> int:
    """The label map's value at a RAS point (files are LPS)."""
    r, a, s = (float(c) for c in ras.split(","))
    image = sitk.ReadImage(str(label_map))
    index = image.TransformPhysicalPointToIndex((-r, -a, s))
    return int(image[index])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sample_through_segment_gate_edit_add_site_and_export(server, browser, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    parent_card = BUNDLED_MODELS / DEFAULT_MODEL_NAME / "model.json"
    parent_digest = sha256(parent_card)
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(server["url"])

    # 1. the bundled sample, one click away, in rendered slice views
    page.click("#load-sample")
    page.wait_for_function("document.querySelector('#case-name').textContent.startsWith('UHarmony sample')")
    page.wait_for_function(f"{RENDERED_VIEWS} >= 3")
    assert "Version: uharmony-default v6" in page.inner_text("#model-summary")
    shoot(page, shots, "01-sample")

    # 2. live progress and cancel: the running button reads Cancel; cancelling leaves no result
    # (mirroring ticked: four passes leave time to cancel)
    assert not page.is_checked("#mirror")  # one pass unless asked
    page.check("#mirror")
    page.click("#segment")
    page.wait_for_function(
        "Number(document.querySelector('#segment-progress').dataset.done) > 0", timeout=STEP_TIMEOUT_MS
    )
    assert page.inner_text("#segment").strip().lower() == "cancel"
    shoot(page, shots, "02-running")
    page.click("#segment")
    page.wait_for_function("document.querySelector('#status').textContent === 'Cancelled.'")
    assert page.inner_text("#segment").strip().lower() == "segment"
    assert page.query_selector_all("#gate .gate-bar") == []

    # 3. segment (mirroring unticked: one pass); the gate's numbers on the page are the engine's
    page.uncheck("#mirror")
    page.click("#segment")
    page.wait_for_selector("#gate .gate-bar", timeout=STEP_TIMEOUT_MS)
    result = engine_result(page)
    assert page_gate(page) == result["gate"]["sites"]
    assert page.get_attribute("#gate .gate-bar[data-chosen='true']", "data-site") == result["gate"]["chosen"]
    assert bool(page.query_selector("#gate-warning")) == (result["gate"]["familiar"] is False)
    progress = page.query_selector("#segment-progress")
    assert progress is not None and progress.get_attribute("data-done") == progress.get_attribute("data-total") != "0"
    rows = page.eval_on_selector_all("#segments .segment-row", "els => els.map(e => e.dataset.segment)")
    assert rows == ["lesion core", "edema"]  # the model's names (and colours) on the segments
    page.check("#gate-map")  # the gate map as a layer over the slices
    page.wait_for_timeout(1000)
    shoot(page, shots, "03-segmented")
    page.uncheck("#gate-map")

    # 4. one paint stroke in the axial view (the large view on the left), on a spot without a segment
    view = page.eval_on_selector(
        ".layout-grid-item img", "i => { const r = i.getBoundingClientRect(); return [r.x, r.y, r.width, r.height] }"
    )
    x, y = view[0] + 0.45 * view[2], view[1] + 0.30 * view[3]
    before = hover(page, x, y)
    assert before["ijk"] and before["segment"] == ""
    page.click("#tool-editor")
    page.click("#editor-panel .v-btn:has(i.mdi-brush)")  # Paint, with the first segment (lesion core) active
    page.wait_for_selector("#editor-panel .v-btn--active:has(i.mdi-brush)")
    page.mouse.move(x - 10, y)  # into the view as a hand would, so the brush follows the mouse before it paints
    page.mouse.move(x, y, steps=5)
    page.wait_for_timeout(300)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + 4 * step, y)
        page.wait_for_timeout(50)
    page.mouse.up()
    page.wait_for_timeout(1000)
    after = hover(page, x + 1, y)
    assert after["segment"] == "lesion core", after
    page.click(".v-btn:has(i.mdi-undo)")  # the editor's undo takes the stroke back, redo restores it
    page.wait_for_selector(".v-btn:has(i.mdi-redo):not([disabled])")
    assert hover(page, x, y)["segment"] == ""
    page.click(".v-btn:has(i.mdi-redo)")
    page.wait_for_selector(".v-btn[disabled]:has(i.mdi-redo)")
    after = hover(page, x + 1, y)
    assert after["segment"] == "lesion core", after
    shoot(page, shots, "04-painted")

    # 5. save the corrected case into the local add-site set; the stroke is in its label map
    page.click("#tool-uharmony")
    page.fill("#site-name", "web-clinic")
    page.wait_for_function("!document.querySelector('#save-case').disabled")
    page.click("#save-case")
    page.wait_for_function("document.querySelector('#set-status').dataset.cases === '1'")
    folder = server["work"] / "sets" / "web-clinic"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numTraining"] == 1 and dataset["training"][0]["site"] == "web-clinic"
    label_map = folder / dataset["training"][0]["label"]
    assert value_at(label_map, after["ras"]) == 1  # lesion core, where the engine had found nothing
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_map)))
    voxel_ml = np.prod(sitk.ReadImage(str(label_map)).GetSpacing()) / 1000.0
    assert (voxels == 1).sum() * voxel_ml > result["volumes_ml"]["lesion core"] + 0.01  # the stroke added some
    shoot(page, shots, "05-saved")

    # 6. add the site (a tiny run): progress, a loss point, the new version selected; the parent untouched
    page.fill("#addsite-steps", "2")
    page.wait_for_function("!document.querySelector('#add-site').disabled")
    page.click("#add-site")
    page.wait_for_function(
        "document.querySelector('#addsite-status').textContent.includes('New version')", timeout=STEP_TIMEOUT_MS
    )
    points = json.loads(page.get_attribute("#loss-plot", "data-points") or "[]")
    assert points and points[-1][0] == 2 and points[-1][1] > 0
    assert (server["models"] / "uharmony-default-v7" / "model.json").is_file()
    assert "Version: uharmony-default v7" in page.inner_text("#model-summary")
    assert sha256(parent_card) == parent_digest
    shoot(page, shots, "06-site-added")

    # 7. segment again with the new version: its gate knows the new site
    page.click("#segment")
    page.wait_for_function("document.querySelectorAll('#gate .gate-bar').length === 5", timeout=STEP_TIMEOUT_MS)
    again = engine_result(page)
    assert again["model"].endswith("v7") and page_gate(page) == again["gate"]["sites"]
    assert "web-clinic" in page_gate(page)
    shoot(page, shots, "07-new-version")

    # 8. export: .seg.nrrd with the card's codes; DICOM SEG (the card codes every label) over a derived MR series
    with page.expect_download() as download:
        page.click("#export-seg")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    header = saved.read_bytes()[:8192].decode("latin-1")
    assert (
        saved.name.endswith(".seg.nrrd")
        and "SCT^108369006^Neoplasm" in header
        and "Segment0_Name:=lesion core" in header
    )
    assert page.query_selector("#dicom-reason") is None
    with page.expect_download() as download:
        page.click("#export-dicom")
    archive = tmp_path / download.value.suggested_filename
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as files:
        seg = pydicom.dcmread(io.BytesIO(files.read("SEG/seg.dcm")))
        derived = [name for name in files.namelist() if name.startswith("MR/")]
    assert archive.name.endswith(".dicom-seg.zip") and seg.SOPClassUID == SegmentationStorage and len(derived) == 63
    segments = [(s.SegmentLabel, s.SegmentAlgorithmType) for s in seg.SegmentSequence]
    assert segments == [("lesion core", "AUTOMATIC"), ("edema", "AUTOMATIC")]  # step 7 replaced the painted result
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "7"
    assert "DICOM SEG with the derived MR series" in page.inner_text("#export-status")
    shoot(page, shots, "08-exported")

    # 9. other ways in: files sent from this browser, then a folder on the server; each opens a fresh case
    images = sorted((SAMPLE_DATA / "imagesTr").iterdir())
    page.set_input_files("header input[type=file]:not([webkitdirectory])", [str(p) for p in images])
    page.wait_for_function("document.querySelector('#case-name').textContent.startsWith('held-out-clinic_000: 4')")
    assert page.query_selector_all("#gate .gate-bar") == [] and page.inner_text("#segment").strip().lower() == "segment"
    uploaded = sorted(p.name for p in (server["work"] / "uploads").iterdir() for p in p.iterdir())
    assert uploaded == [p.name for p in images]
    shoot(page, shots, "09-uploaded")
    page.fill("#server-folder", str(tmp_path / "nowhere"))
    page.click("#open-folder")
    page.wait_for_function(
        "(document.querySelector('#error')?.textContent || '').includes('is not a folder on the server')"
    )
    page.fill("#server-folder", str(SAMPLE_DATA / "imagesTr"))
    page.click("#open-folder")
    page.wait_for_function("!document.querySelector('#error')")
    page.wait_for_function(f"{RENDERED_VIEWS} >= 3")
    assert page.inner_text("#case-name").startswith("held-out-clinic_000: 4 image(s)")
    shoot(page, shots, "10-server-folder")
    assert len(list(shots.iterdir())) == 10
