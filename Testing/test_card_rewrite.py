"""Descriptive card fields added after training: SNOMED CT codes and measured time per case, weights untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, results_renderer, run_main

from UHarmonyLib.data.labels import KNOWN_TERMINOLOGY
from UHarmonyLib.errors import BundleError
from UHarmonyLib.model.card import (
    CARD_NAME,
    WEIGHTS_NAME,
    card_digest,
    expected_time_text,
    read_card,
    set_expected_seconds,
    set_known_terminology,
)
from UHarmonyLib.resources import BUNDLED_MODELS

FIGURES = {
    "seconds": 10.1,
    "wall_seconds": 13.7,
    "no_mirror_seconds": 3.6,
    "machine": "Some CPU",
    "threads": 2,
    "case": "a 1 mm brain scan",
    "measured": "2026-12-06",
}


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy-v1"))


def test_models_terminology_codes_known_labels_and_keeps_the_weights(
    tiny_bundle: Path, volume_file: Path, tmp_path: Path
) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    run = run_main("models", "terminology", copy)
    assert run.code == 0, run
    assert "1 lesion core: SNOMED CT 108369006 Neoplasm" in run.stdout
    assert "left without a code: perilesional edema" in run.stdout  # not a name the project knows
    labels = read_card(copy)["labels"]
    assert labels[0]["terminology"] == KNOWN_TERMINOLOGY["lesion core"] and "terminology" not in labels[1]
    assert (copy / WEIGHTS_NAME).read_bytes() == (tiny_bundle / WEIGHTS_NAME).read_bytes()
    card_bytes = (copy / CARD_NAME).read_bytes()
    assert run_main("models", "terminology", copy).code == 0
    assert (copy / CARD_NAME).read_bytes() == card_bytes  # a second run changes nothing

    out = tmp_path / "seg.seg.nrrd"
    assert run_main("segment", "--model", copy, "--out", out, "--no-mirror", volume_file).code == 0
    header = out.read_bytes()[:4096].decode("latin-1")
    assert "Segment0_Tags:=TerminologyEntry:" in header and "SCT^108369006^Neoplasm" in header


def test_an_existing_code_is_kept_and_a_damaged_bundle_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    card = json.loads((copy / CARD_NAME).read_text())
    card["labels"][0]["terminology"] = KNOWN_TERMINOLOGY["whole lesion"]  # a site's own, more general choice
    (copy / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="checksum mismatch"):  # hand edits break the card's own checksum
        set_known_terminology(copy)
    (copy / CARD_NAME).write_bytes((tiny_bundle / CARD_NAME).read_bytes())
    set_expected_seconds(copy, "cpu", FIGURES)
    (copy / WEIGHTS_NAME).write_bytes(b"tampered")
    with pytest.raises(BundleError, match=f"{WEIGHTS_NAME}: truncated"):
        set_known_terminology(copy)
    assert "terminology" not in read_card(copy)["labels"][0]


def test_expected_seconds_are_kept_per_device_and_shown(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    assert expected_time_text(read_card(copy)).count("not measured") == 3
    set_expected_seconds(copy, "cpu", FIGURES)
    set_expected_seconds(copy, "cuda", {**FIGURES, "seconds": 4.8, "no_mirror_seconds": 1.2, "machine": "NVIDIA H100"})
    card = read_card(copy)
    assert set(card["inference"]["expected_seconds"]) == {"cpu", "cuda"}
    text = expected_time_text(card)
    assert (
        "CPU about 4 s (10 s with 4 mirrored passes, 14 s of them with process start), measured on 2 threads of "
        "Some CPU" in text
    )
    assert "NVIDIA GPU (CUDA) about 1 s" in text and "NVIDIA H100" in text and "Apple GPU (MPS) not measured" in text
    assert f"time per case: {text}" in run_main("models", "info", copy).stdout


def test_bundled_models_carry_codes_and_the_default_its_measured_time() -> None:
    for bundle in sorted(p for p in BUNDLED_MODELS.iterdir() if (p / CARD_NAME).is_file()):
        for label in read_card(bundle)["labels"]:
            assert label.get("terminology") == KNOWN_TERMINOLOGY[label["name"]], bundle.name
    figures = json.loads((REPO / "docs" / "results" / "case_time.json").read_text())["expected_seconds"]["cpu"]
    default = read_card(BUNDLED_MODELS / "uharmony-default-v6")
    assert default["inference"]["expected_seconds"]["cpu"] == figures  # the card says what the benchmark measured


@pytest.mark.slow  # four engine processes
def test_case_time_benchmark_measures_and_records(tiny_bundle: Path, volume_file: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    out = tmp_path / "case_time.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "case_time.py"), "--model", str(copy), "--case", str(volume_file)]
    run = subprocess.run([*cmd, "--repeats", "1", "--write-card", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    assert doc["case_shape"] == [36, 30, 24]  # 1.5 mm resampled to 1 mm over the same field of view
    rows = {(r["device"], r["mirror"]): r for r in doc["rows"]}
    assert set(rows) >= {("cpu", True), ("cpu", False)}
    assert rows["cpu", True]["passes"] > rows["cpu", False]["passes"] == 1
    assert all(0 < r["seconds"] < r["wall_seconds"] for r in rows.values())
    assert read_card(copy)["inference"]["expected_seconds"]["cpu"] == doc["expected_seconds"]["cpu"]
    assert (copy / WEIGHTS_NAME).read_bytes() == (tiny_bundle / WEIGHTS_NAME).read_bytes()
    markdown = "\n".join(results_renderer("case_time.json")(doc))
    assert f"| cpu | on | {rows['cpu', True]['passes']} | {rows['cpu', True]['seconds']:.2f} |" in markdown


def test_a_pinned_bundle_that_changes_is_refused_until_pinned_again(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checksums catch corruption, not a re-signed bundle: a pin (the user's own digest record) catches that."""
    monkeypatch.setenv("UHARMONY_MODELS", str(tmp_path / "user"))
    copy = _copy(tiny_bundle, tmp_path)
    run = run_main("models", "pin", copy)
    assert run.code == 0 and "pinned tiny v1" in run.stdout, run
    pins = json.loads((tmp_path / "user" / "pinned.json").read_text())
    assert pins["tiny v1"]["card_sha256"] == read_card(copy)["card_sha256"]
    assert json.loads(run_main("models", "list", copy.parent, "--json").stdout)[0]["pinned"] is True
    card = json.loads((copy / CARD_NAME).read_text())  # an author's re-signed edit: its own checksum holds
    card["inference"]["familiar_entropy"] = 2.0
    card["card_sha256"] = card_digest(card)
    (copy / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="tiny v1 differs from the bundle you pinned on"):
        read_card(copy)
    refused = run_main("segment", "--model", copy, "--out", tmp_path / "s.nrrd", copy / CARD_NAME)
    assert refused.code == 3 and "differs from the bundle you pinned" in refused.stderr
    run = run_main("models", "pin", copy)  # the user trusts the new one on purpose
    assert run.code == 0 and "replaced the pin" in run.stdout
    assert read_card(copy)["inference"]["familiar_entropy"] == 2.0
