"""benchmarks/precision.py (inference.py's "bf16_agreement"): one real case segmented by the engine in float32 and
in bfloat16, compared on its grid, and the section's rendering. The whole section runs in the benchmark itself."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, is_fraction, results_renderer, save_tiny_bundle, tiny_net

from UHarmonyLib.data.synth import SiteSpec, make_case
from UHarmonyLib.data.template import load_template
from UHarmonyLib.model.weights import load_bundle

sys.path.insert(0, str(REPO / "benchmarks"))
import precision


def test_agreement_dice_counts_two_empty_predictions_as_agreeing() -> None:
    a, b = np.array([0, 1, 1, 2, 0]), np.array([0, 1, 0, 2, 2])
    assert precision.agreement_dice(a, b) == pytest.approx(2 * 2 / (3 + 3))
    assert precision.agreement_dice(np.zeros(4), np.zeros(4)) == 1.0


def test_a_case_is_segmented_in_both_precisions_and_compared_on_its_grid(tmp_path: Path) -> None:
    bundle = load_bundle(save_tiny_bundle(tmp_path / "tiny", tiny_net(), spacing=(4.0, 4.0, 4.0)))
    case = make_case(load_template(4.0), SiteSpec("clinic-a"), np.random.default_rng(5))
    row = precision.compare(bundle, [case.images["FLAIR"]], case.label, "synthetic clinic-a, 4 mm")
    assert row["case"] == "synthetic clinic-a, 4 mm" and row["model"] == bundle.label_text
    assert is_fraction(row["voxel"]) and is_fraction(row["dice"])
    size = int(np.prod(case.images["FLAIR"].GetSize()))
    assert row["differing_voxels"] == round((1 - row["voxel"]) * size)
    assert row["lesion_ml"]["truth"] == pytest.approx(precision.lesion_ml(case.label), abs=0.01)
    assert row["lesion_ml"]["truth"] > 0
    assert set(row["dice_vs_truth"]) == set(row["seconds"]) == set(precision.PRECISIONS)

    worst = {**row, "dice": 0.98}
    section = {"voxel": row["voxel"], "dice": 0.98, "case": "x", "goal": {"op": ">=", "value": 0.99, "met": False}}
    text = "\n".join(results_renderer("inference.json")({"bf16_agreement": {**section, "cases": [row, worst]}}))
    assert "(`bf16_agreement`, one pass each)" in text and "| synthetic clinic-a, 4 mm |" in text


def test_the_headline_dice_agreement_is_the_sections_worst_case() -> None:
    """inference.py's `dice_agreement` and its goal come from the bf16_agreement section; null until it is measured."""
    import inference

    timings = {"overhead_ratio": 1.1, "vs_monai_ratio": 0.3, "details": {}, "goals": {"overhead_ratio": {"met": True}}}
    missing = inference.with_agreement_headline(timings)
    assert missing["dice_agreement"] is None and missing["goals"]["dice_agreement"]["met"] is False
    assert list(missing)[:3] == ["overhead_ratio", "vs_monai_ratio", "dice_agreement"]
    for dice, met in ((0.985, False), (0.996, True)):
        doc = inference.with_agreement_headline({**timings, "bf16_agreement": {"dice": dice}})
        assert doc["dice_agreement"] == dice and doc["goals"]["dice_agreement"] == {
            "op": ">=",
            "value": 0.99,
            "met": met,
        }
        assert doc["goals"]["overhead_ratio"] == {"met": True} and doc["bf16_agreement"] == {"dice": dice}
