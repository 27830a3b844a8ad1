"""The harmonization screen of `uharmony diagnose --trials`: which method leaves the sites looking most alike.

Two synthetic datasets (4 mm, 2 cases per site): three sites that differ by a monotone non-affine
intensity map (gamma 0.5, 1 and 2, under different gains and offsets), which landmark methods undo
and affine ones cannot; and the `none` scenario (identical sites), where nothing is worth undoing.
The choice rules (ties, the 5 % threshold, the floor) are checked on constructed residuals.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_main

from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.diagnose.method_screen import AFFINE, CANDIDATES, FALLBACK, FLOOR, NO_REDUCTION, NONE, choose
from UHarmonyLib.diagnose.report import screen_html
from UHarmonyLib.diagnose.trials import AUTO, TrialSettings, harmonize_method
from UHarmonyLib.progress import JsonReporter

MONOTONE = {
    "name": "monotone",
    "description": "sites differ by a monotone non-affine intensity map (gamma) besides gain and offset",
    "defaults": {"bias": 0.1},
    "sites": [
        {"name": "linear"},
        {"name": "gamma-low", "gamma": 0.5, "scale": 300.0},
        {"name": "gamma-high", "gamma": 2.0, "scale": 50.0, "offset": 10.0},
    ],
}


def _synth(scenario: str, folder: Path) -> Path:
    run = run_main("synth", "--scenario", scenario, "--out", folder, "--cases-per-site", 2, "--spacing", 4)
    assert run.code == 0, run.stderr
    return folder


def _screened(data: Path, settings: TrialSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the trials' harmonize_method record, the JSON progress events) for `data`."""
    stream = io.StringIO()
    _, record = harmonize_method(plan_training([data], val_fraction=0.0, seed=0), settings, JsonReporter(stream))
    return record, [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture(scope="module")
def monotone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("monotone")
    spec = root / "monotone.json"
    spec.write_text(json.dumps(MONOTONE), encoding="utf-8")
    return _synth(str(spec), root / "data")


@pytest.fixture(scope="module")
def monotone_screen(monotone: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _screened(monotone, TrialSettings(method=AUTO))


def _rows(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["method"]: m for m in record["screen"]["methods"]}


def test_a_monotone_shift_is_undone_by_a_landmark_method_and_not_by_an_affine_one(
    monotone_screen: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    record, events = monotone_screen
    screen, rows = record["screen"], _rows(record)
    assert [m["method"] for m in screen["methods"]] == [NONE, *CANDIDATES]
    assert record["chosen_by"] == "screened (--harmonize-method auto)"
    assert record["method"] == screen["chosen"] in ("nyul", "match") and screen["reduces"]
    assert rows[screen["chosen"]]["chosen"] and sum(m["chosen"] for m in screen["methods"]) == 1
    none = rows[NONE]["residual"]
    assert none > 2 * FLOOR
    for name in ("nyul", "match"):
        assert rows[name]["residual"] < 0.5 * none and rows[name]["reduction"] > 0.5, rows[name]
    for name in AFFINE:  # the features are per-image robust z-scores: an affine map cannot move them
        assert rows[name]["residual"] == pytest.approx(none, abs=1e-3) and "per-image affine" in rows[name]["reason"]
    assert screen["verdict"].startswith(f"{screen['chosen']} reduces the between-site appearance distance")
    assert screen["cases"] == 6 and screen["cases_per_site"] == 3
    progress = [e["done"] for e in events if e["event"] == "progress" and e["stage"] == "screen"]
    assert progress == list(range(1, len(CANDIDATES) + 2))
    assert sum(e["event"] == "log" and e["message"].startswith("screen: ") for e in events) == len(CANDIDATES) + 1


def test_the_report_marks_the_chosen_method(monotone_screen: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    record, _ = monotone_screen
    page = "".join(screen_html(record["screen"]))
    assert "<h3>Harmonization methods screened</h3>" in page and "leave them unchanged" in page
    assert page.count("<tr>") == 1 + 1 + len(CANDIDATES)
    chosen_row = next(r for r in page.split("<tr>") if r.startswith(f"<td>{record['method']}</td>"))
    assert "<td>yes</td>" in chosen_row


def test_without_an_appearance_shift_no_method_reduces_the_distance(tmp_path: Path) -> None:
    record, _ = _screened(_synth("none", tmp_path / "data"), TrialSettings(method=AUTO))
    screen, rows = record["screen"], _rows(record)
    assert not screen["reduces"] and screen["verdict"].startswith(f"{NO_REDUCTION} meaningfully")
    assert rows[NONE]["residual"] < FLOOR
    assert record["method"] == screen["chosen"] != NONE  # the harmonized strategies still need a method


def test_an_explicit_method_skips_the_screen(monotone: Path) -> None:
    record, events = _screened(monotone, TrialSettings(method="nyul"))
    assert record == {"method": "nyul", "chosen_by": "--harmonize-method", "screen": None}
    assert not any(e.get("stage") == "screen" for e in events)


def test_ties_go_to_the_simpler_method_and_small_reductions_do_not_count() -> None:
    affine = {m: 0.2 for m in AFFINE}
    tied = choose({NONE: 0.2, **affine, "nyul": 0.1010, "match": 0.1000, "n4": 0.3}, {})
    assert tied["chosen"] == "nyul" and tied["reduces"]  # within 1 % of none's 0.2 of match's: a tie
    assert "ties with nyul" in next(r["reason"] for r in tied["methods"] if r["method"] == "match")
    small = choose({NONE: 0.2, **affine, "nyul": 0.195, "match": 0.192, "n4": 0.3}, {})
    assert small["chosen"] == "match" and not small["reduces"]  # 4 % < 5 %
    assert small["verdict"] == f"{NO_REDUCTION} by 5 % or more; match has the smallest residual"
    worse = choose({NONE: 0.2, **affine, "nyul": 0.25, "match": None, "n4": 0.3}, {"match": "too few intensities"})
    assert worse["chosen"] == "zscore" and not worse["reduces"]  # no method beats none: the simplest ties with it
    assert next(r for r in worse["methods"] if r["method"] == "match")["reason"].endswith("too few intensities")


def test_nothing_to_rank_falls_back_to_the_default_method() -> None:
    result = choose(dict.fromkeys([NONE, *CANDIDATES]), {})
    assert result["chosen"] == FALLBACK and not result["reduces"] and "could not rank" in result["verdict"]
