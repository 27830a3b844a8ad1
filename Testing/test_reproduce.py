"""benchmarks/reproduce.py --quick: every row of the reproduction table, finite figures, and its Markdown form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, is_fraction, results_renderer

pytestmark = pytest.mark.slow  # benchmark --quick runs

ARMS = {
    "separate": "protocols",
    "joint_instance": "protocols",
    "uharmony_linear_given": "protocols",
    "uharmony_linear_gated": "protocols",
    "uharmony_given": "protocols",
    "uharmony_gated": "protocols",
    "annotation_joint_instance": "annotation",
    "annotation_uharmony_given": "annotation",
    "annotation_uharmony_gated": "annotation",
}
SITES = {
    "protocols": {"hospital-3t-3d", "hospital-1.5t-2d", "hospital-3t-2d", "hospital-1.5t-old"},
    "annotation": {"annotators-generous", "annotators-tight", "annotators-whole", "annotators-rim-edema"},
}
RUNGS = ["rung-0-same", "rung-1-te", "rung-2-ti", "rung-3-2d", "rung-4-1.5t"]
ADDSITE = ("addsite_uharmony", "addsite_finetune_instance", "addsite_scratch")
WHOLE = "whole lesion"


def _quick(script: str, out: Path, work: Path, *extra: str) -> dict[str, Any]:
    """One benchmark script's --quick run in a fresh process on one thread; its JSON document."""
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", "--out", str(out), "--work", str(work), *extra],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def quick_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """reproduce.py --quick in two worker processes, once: its document and its work folder (data and models)."""
    folder = tmp_path_factory.mktemp("reproduce")
    return _quick("reproduce.py", folder / "reproduce.json", folder / "work", "--jobs", "2"), folder / "work"


def test_quick_run_writes_claims_gate_flag_and_addsite_figures(quick_table: tuple[dict[str, Any], Path]) -> None:
    doc, work = quick_table
    rows = {r["method"]: r for r in doc["rows"]}
    assert list(rows) == list(ARMS)
    for arm, r in rows.items():
        assert r["scenario"] == ARMS[arm] and set(r["per_site"]) == SITES[ARMS[arm]], arm
        assert all(is_fraction(v) for v in [r["dice_mean"], r["lesion_dice_mean"], *r["per_site"].values()]), r
        expected = 1 if arm in ("separate", "annotation_uharmony_gated") else 2
        assert r["replicates"] == len(r["seed_means"]) == expected and r["steps"] > 0
    assert is_fraction(rows["uharmony_gated"]["gate_accuracy"])
    assert doc["command"].startswith("python benchmarks/reproduce.py --quick") and doc["seconds"] > 0
    assert doc["evaluation"] == "development" and doc["protocol"]["test_seeds"] and doc["settings"]["jobs"] == 2
    test_seeds = set(doc["protocol"]["test_seeds"])
    assert not test_seeds & set(doc["settings"]["data_seeds"].values())  # a quick run never sees the test seeds
    assert doc["settings"]["data_seeds"]["calibration"] == doc["protocol"]["development_seeds"][-1]

    cases = json.loads((work.parent / doc["case_scores"]).read_text(encoding="utf-8"))
    records = cases["cases"]
    assert cases["evaluation"] == "development" and cases["summary"] == "reproduce.json"
    for r in records:
        assert {"arm", "replicate", "case", "site", "dice", "hd95_mm", "lesion_dice", "probabilities"} <= set(r)
        assert WHOLE in r["dice"] and WHOLE in r["lesion_dice"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    gated = [r for r in records if r["arm"] == "uharmony_gated"]
    assert len(gated) == 2 * 4  # 2 replicates x 4 sites x 1 test case
    per_rep = [np.mean([r["dice"][WHOLE] for r in gated if r["replicate"] == k]) for k in (0, 1)]
    assert per_rep == pytest.approx(rows["uharmony_gated"]["seed_means"], abs=1e-3)

    claims = {c["name"][:2]: c for c in doc["claims"]}
    assert list(claims) == ["1.", "2.", "3.", "4."]
    assert [(c["b"], c["a"]) for c in claims.values()] == [
        ("uharmony_gated", "joint_instance"),
        ("uharmony_gated", "uharmony_given"),
        ("uharmony_given", "uharmony_linear_given"),
        ("annotation_uharmony_given", "annotation_joint_instance"),
    ]
    for c in claims.values():
        assert c["ci95"][0] <= c["diff_mean"] <= c["ci95"][1] and c["holds"] == (c["ci95"][0] > c["margin"])
        assert c["replicates"] == 2 and c["cases"] == 8
    plain = [r for r in records if r["arm"] == "joint_instance"]
    pairs = [(g["dice"][WHOLE], next(p for p in plain if (p["case"], p["replicate"]) == (g["case"], g["replicate"])))
             for g in gated]  # fmt: skip
    assert claims["1."]["diff_mean"] == pytest.approx(np.mean([a - p["dice"][WHOLE] for a, p in pairs]), abs=2e-3)

    gate = doc["gate"]
    assert is_fraction(gate["accuracy"]) and is_fraction(gate["ece"]) and gate["cases"] == 8
    assert gate["by_scenario"]["annotation"]["cases"] == 4 and gate["accuracy"] == gate["by_scenario"]["protocols"][
        "accuracy"]  # fmt: skip
    assert [u["rung"] for u in doc["unfamiliar"]] == RUNGS
    for u in doc["unfamiliar"]:
        assert is_fraction(u["auroc"]) and len(u["auroc_per_replicate"]) == 2 and is_fraction(u["coverage"])
    assert len(doc["unfamiliar_threshold"]["thresholds"]) == 2

    added = {(a["method"], a["cases"]): a for a in doc["addsite"]}
    assert set(added) == {(m, k) for m in ADDSITE for k in (1, 2)}
    for a in added.values():
        assert is_fraction(a["new_site_dice"]) and len(a["new_site_dice_draws"]) == a["draws"] == 1
        assert a["old_site_change"] is not None and -1 <= a["old_site_change"] <= 1
    objective = doc["addsite_objective"]
    assert set(objective["best_per_case_count"]) == {"1", "2"} and set(objective["zero_shot"]) == {
        "zero_shot_uharmony", "zero_shot_instance"}  # fmt: skip
    assert (work.parent / "gate_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bundles by the library's own writers: add-site's child knows its parent and the new site
    card = json.loads((work / "models" / "addsite-uharmony-k2-d0" / "model.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in card["sites"]][-1] == "hospital-new"

    markdown = "\n".join(results_renderer("reproduce.json")(doc))
    assert "| claim | b − a |" in markdown and all(f"`{m}`" in markdown for m in ARMS)
    assert "| rung |" in markdown and "| method | cases | new-site Dice |" in markdown


def test_ablation_reuses_the_table_and_pairs_a_variant_case_by_case(
    quick_table: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """benchmarks/ablation.py --quick on a reproduce.py work folder: trains only the variant asked for, reuses the
    table's models and scores, and pairs the contrasts whose arms were run."""
    table, work = quick_table
    doc = _quick("ablation.py", tmp_path / "ablation.json", work, "--variants", "uharmony_independent")
    rows = {r["method"]: r for r in doc["rows"]}
    assert list(rows) == ["joint_instance", "uharmony_gated", "uharmony_linear_gated",
                          "uharmony_independent_given", "uharmony_independent_gated"]  # fmt: skip
    table_rows = {r["method"]: r for r in table["rows"]}
    for method in ("joint_instance", "uharmony_gated", "uharmony_linear_gated"):  # the same scores, reused
        assert rows[method]["seed_means"] == table_rows[method]["seed_means"], method
    trained = {m["model"] for m in doc["models"] if not m.get("reused")}
    assert trained == {"uharmony-independent-r0", "uharmony-independent-r1"}
    card = json.loads((work / "models" / "uharmony-independent-r0" / "model.json").read_text(encoding="utf-8"))
    assert card["architecture"]["degree"] == 3 and "--site-params independent" in card["provenance"]["command"]
    assert [c["name"] for c in doc["comparisons"]] == [
        "uharmony_gated - uharmony_independent_gated",
        "uharmony_gated - uharmony_linear_gated",
        "uharmony_independent_gated - joint_instance",
    ]
    assert all(c["replicates"] == 2 and c["ci95"][0] <= c["diff_mean"] <= c["ci95"][1] for c in doc["comparisons"])
    assert (tmp_path / doc["case_scores"]).is_file()
    markdown = "\n".join(results_renderer("ablation.json")(doc))
    assert "| variant | restore degree | site rows |" in markdown and "`uharmony_independent_gated`" in markdown
