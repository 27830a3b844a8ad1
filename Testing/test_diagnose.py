"""`uharmony diagnose` on planted scenarios (4 mm, 3 cases per site), its report, model evidence, refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_one_line_error, run_main, tiny_net

from UHarmonyLib.diagnose.compare import PERMUTATIONS, site_test
from UHarmonyLib.model.weights import make_card, save_bundle

SYNTH = ["--spacing", 4, "--seed", 0]


def _synth(scenario: str, folder: Path, cases_per_site: int = 3) -> Path:
    run = run_main("synth", "--scenario", scenario, "--out", folder, "--cases-per-site", cases_per_site, *SYNTH)
    assert run.code == 0, run.stderr
    return folder


@pytest.fixture(scope="module")
def structural(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth("structural", tmp_path_factory.mktemp("structural") / "data")


@pytest.fixture(scope="module")
def random_model(structural: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model in the structural dataset's channel, label and site spaces."""
    data = json.loads((structural / "dataset.json").read_text(encoding="utf-8"))
    net = tiny_net(in_channels=3, num_sites=4)
    card = make_card(
        net,
        name="random",
        version=1,
        channels=[{"name": c, "modality": "MR"} for c in ("T1", "T2", "FLAIR")],
        labels=[
            {"value": 1, "name": "lesion core", "color": "#ff0000"},
            {"value": 2, "name": "edema", "color": "#ffff00"},
        ],
        sites=[{"name": s["name"]} for s in data["sites"]],
        preprocessing={"spacing": [4.0, 4.0, 4.0]},
        inference={"patch_size": [32, 32, 32], "overlap": 0.25, "batch_size": 2},
    )
    return save_bundle(net, card, tmp_path_factory.mktemp("model") / "random-v1")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The structural scenario with one case per site: too few cases to trust a verdict."""
    return _synth("structural", tmp_path_factory.mktemp("single") / "data", cases_per_site=1)


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def _check_report(out: Path) -> dict[str, Any]:
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{200,}'", page)) == 3
    assert "http" not in page  # self-contained: nothing fetched
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


@pytest.mark.slow  # a whole diagnose run with training
def test_appearance_shift_recommends_harmonizing(tmp_path: Path) -> None:
    data = _synth("appearance", tmp_path / "data")
    out = tmp_path / "report"
    run = run_main("diagnose", "--data", data, "--out", out, "--progress", "json")
    assert run.code == 0, run.stderr
    events = _events(run.stdout)
    assert [e["done"] for e in events if e["event"] == "progress"] == list(range(1, 13))
    result = events[-1]
    assert result["event"] == "result" and result["recommendation"] == "harmonize data"
    assert result["appearance_findings"] and not result["structural_findings"]
    summary = _check_report(out)
    assert summary["decision"]["recommendation"] == "harmonize data"
    assert summary["sites"]["scanner-b"]["spacing_mm"] == [[2.0, 2.0, 4.0]]
    ratios = [p["ratio"] for p in summary["pairs"]]
    assert max(ratios) >= summary["decision"]["thresholds"]["appearance_ratio"]
    assert len(summary["cases"]) == 12 and "model" not in summary


@pytest.mark.slow  # a whole diagnose run with training
def test_structural_shift_recommends_personalizing(structural: Path, random_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    run = run_main("diagnose", "--data", structural, "--model", random_model, "--out", out)
    assert run.code == 0, run.stderr
    assert "Recommendation: personalize the model" in run.stdout
    summary = _check_report(out)
    decision = summary["decision"]
    assert decision["structural_shift"] and not decision["appearance_shift"]
    assert any("lesion" in f for f in decision["structural_findings"])
    model = summary["model"]
    assert set(model["sites"]) == {"cohort-a", "cohort-b", "cohort-c", "cohort-d"}
    assert 0.0 <= model["gate_accuracy"] <= 1.0 and model["segmentations"] == 24
    assert all(s["known_to_model"] and s["cases"] == 3 for s in model["sites"].values())
    assert "Model evidence (random v1)" in (out / "report.html").read_text(encoding="utf-8")


def _section(page: str, title: str) -> str:
    """The HTML from heading `title` to the next heading."""
    start = page.index(f"<h2>{title}</h2>")
    return page[start : page.index("<h2>", start + 1)]


def test_one_case_per_site_is_cautioned_and_the_page_reads_on_its_own(single: Path, tmp_path: Path) -> None:
    """A verdict from one case per site carries a caution naming the sites; tables show no Python structures;
    the page explains its method instead of linking a repository file."""
    out = tmp_path / "report"
    run = run_main("diagnose", "--data", single, "--out", out, "--progress", "json")
    assert run.code == 0, run.stderr
    result = _events(run.stdout)[-1]
    summary = _check_report(out)
    cautions = summary["decision"]["cautions"]
    assert result["cautions"] == cautions and len(cautions) == 1
    assert all(f"{site} (1 case)" in cautions[0] for site in summary["sites_order"])
    assert summary["decision"]["thresholds"]["min_cases_per_site"] == 3
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Caution: few cases: cohort-a (1 case)" in page
    sites = _section(page, "Sites")
    assert "{" not in sites and "&#x27;" not in sites and "4×4×4" in sites
    assert re.search(r"<td>T1 [0-9.]+, T2 [0-9.]+, FLAIR [0-9.]+</td>", sites)
    assert "docs/" not in page and "normal tissue only" in _section(page, "How the evidence is measured")
    assert summary["command"].endswith(f"--out {out} --device auto --progress json")


def test_model_evidence_takes_no_mirror_and_reports_as_evaluate_does(
    single: Path, random_model: Path, tmp_path: Path
) -> None:
    """--no-mirror makes every segmentation one pass; the model's cases are announced and counted per pass."""
    out = tmp_path / "report"
    run = run_main(
        "diagnose", "--data", single, "--model", random_model, "--out", out, "--device", "cpu", "--no-mirror",
        "--progress", "json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    events = _events(run.stdout)
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any("4 cases from" in m and "one pass, without test-time mirroring" in m for m in logs), logs
    for stage in ("diagnose", "gated", "given"):
        assert [e["done"] for e in events if e["event"] == "progress" and e["stage"] == stage] == [1, 2, 3, 4]
    summary = _check_report(out)
    assert summary["model"]["passes"] == 1 and summary["model"]["segmentations"] == 8
    assert summary["model"]["device"] == "cpu" and "--no-mirror" in summary["command"].split()


def test_site_test_separates_planted_differences() -> None:
    rng = np.random.default_rng(0)
    sites = ["a"] * 10 + ["b"] * 10
    shifted = site_test("x", "case", [*rng.normal(0, 1, 10), *rng.normal(3, 1, 10)], sites)
    alike = site_test("x", "case", list(rng.normal(0, 1, 20)), sites)
    assert shifted.p == 1 / (PERMUTATIONS + 1) and shifted.eta2 > 0.5
    assert alike.p > 0.05 and alike.eta2 < 0.2


def test_bad_inputs_are_refused_with_one_line(structural: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    data = json.loads((structural / "dataset.json").read_text(encoding="utf-8"))
    one_site = structural / "one-site.json"
    first = data["training"][0]["site"]
    one = {**data, "training": data["training"][:3], "sites": [s for s in data.get("sites", []) if s == first]}
    one_site.write_text(json.dumps(one), encoding="utf-8")
    bad_channel = structural / "bad-channel.json"
    entries = [dict(data["training"][0], channels=["T1", "PD", "FLAIR"]), *data["training"][1:]]
    bad_channel.write_text(json.dumps({**data, "training": entries}), encoding="utf-8")
    missing = structural / "missing-label.json"
    entries = [dict(data["training"][0], label="labelsTr/nobody.nii.gz"), *data["training"][1:]]
    missing.write_text(json.dumps({**data, "training": entries}), encoding="utf-8")
    a_file = tmp_path / "taken"
    a_file.write_text("x", encoding="utf-8")
    out = tmp_path / "report"
    cases = [
        (["--data", one_site, "--out", out], "every case is from one site"),
        (["--data", bad_channel, "--out", out], "channel 'PD' is not in the dataset's channel_names"),
        (["--data", missing, "--out", out], "nobody.nii.gz not found"),
        (["--data", structural, "--model", tiny_bundle, "--out", out], "channel 'T1' is not one of the model's"),
        (["--data", structural, "--out", a_file], "exists and is not a folder"),
        (["--data", structural, "--out", a_file / "report"], "taken is a file, not a folder"),
    ]
    for args, message in cases:
        line = assert_one_line_error(run_main("diagnose", *args))
        assert message in line, (args, line)
    assert not out.exists()
