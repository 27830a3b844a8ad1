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

DYNUNET = (
    "separate",
    "joint_instance",
    "joint_dsbn_given",
    "uharmony_given",
    "uharmony_gated",
    "addsite_uharmony",
    "addsite_finetune_instance",
    "addsite_scratch",
)
SWINUNETR = ("joint_instance", "uharmony_given", "uharmony_gated")
WHOLE = "whole lesion"
TRAINING_SITES = {"hospital-a", "hospital-b", "hospital-c", "hospital-d"}


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
    """reproduce.py --quick, once: its document and its work folder (data and models)."""
    folder = tmp_path_factory.mktemp("reproduce")
    return _quick("reproduce.py", folder / "reproduce.json", folder / "work"), folder / "work"


def test_quick_run_writes_every_row_and_renders_them(quick_table: tuple[dict[str, Any], Path]) -> None:
    doc = quick_table[0]
    rows = {(r["backbone"], r["method"]): r for r in doc["rows"]}
    assert len(rows) == len(doc["rows"])
    assert set(rows) == {("dynunet", m) for m in DYNUNET} | {("swinunetr", m) for m in SWINUNETR}
    for (_, method), r in rows.items():
        assert set(r["per_site"]) == ({"hospital-e"} if method.startswith("addsite") else TRAINING_SITES), method
        assert all(is_fraction(v) for v in [r["dice_mean"], r["dice_std"], *r["per_site"].values()]), r
        one_site = "cases" if method.startswith("addsite") else "sites"
        assert r["spread"] == ("seeds" if len(r["seeds"]) > 1 else one_site) and r["steps"] > 0
    given, gated = rows[("dynunet", "uharmony_given")], rows[("dynunet", "uharmony_gated")]
    assert given["seeds"] == gated["seeds"] == rows[("dynunet", "joint_instance")]["seeds"] == [101, 102]
    assert is_fraction(gated["gate_accuracy"]) and is_fraction(rows[("dynunet", "addsite_uharmony")]["gate_accuracy"])
    assert doc["command"].startswith("python benchmarks/reproduce.py --quick") and doc["seconds"] > 0
    assert doc["settings"]["torch_threads"] == 1 and doc["notes"]
    assert doc["evaluation"] == "development" and doc["protocol"]["test_seeds"]
    test_seeds = set(doc["protocol"]["test_seeds"])
    assert not test_seeds & set(doc["settings"]["data_seeds"].values())  # a quick run never sees the test seeds

    cases = json.loads((quick_table[1].parent / doc["case_scores"]).read_text(encoding="utf-8"))
    records = cases["cases"]
    assert cases["evaluation"] == "development" and cases["summary"] == "reproduce.json"
    for r in records:
        assert {"arm", "replicate", "case", "site", "dice", "hd95_mm", "lesion_dice"} <= set(r)
        assert WHOLE in r["dice"] and WHOLE in r["lesion_dice"]
    gated_records = [r for r in records if r["arm"] == "uharmony_gated"]
    assert len(gated_records) == 2 * 4  # 2 replicates x 4 sites x 1 test case
    per_seed = [np.mean([r["dice"][WHOLE] for r in gated_records if r["replicate"] == k]) for k in (0, 1)]
    assert per_seed == pytest.approx(gated["seed_means"], abs=1e-3)

    compared = {c["name"]: c for c in doc["comparisons"]}
    assert "uharmony_gated - joint_instance" in compared and "addsite_uharmony - addsite_scratch" in compared
    for c in compared.values():
        assert c["ci95"][0] <= c["diff_mean"] <= c["ci95"][1] and c["holds"] == (c["ci95"][0] > 0)
    first = compared["uharmony_gated - joint_instance"]
    assert first["replicates"] == 2 and first["cases"] == 8
    assert first["diff_mean"] == pytest.approx(np.mean(gated["seed_means"]) - np.mean(
        rows[("dynunet", "joint_instance")]["seed_means"]), abs=2e-3)  # fmt: skip

    markdown = "\n".join(results_renderer("reproduce.json")(doc))
    assert "| method | backbone |" in markdown and "| goal | value | met |" in markdown
    assert all(f"`{m}`" in markdown for m in DYNUNET) and "swinunetr" in markdown


def test_ablation_reuses_the_table_and_pairs_a_variant_seed_by_seed(
    quick_table: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """benchmarks/ablation.py --quick on a reproduce.py work folder: trains only the variant asked for (the others
    share its code path), pairs seed by seed, and keeps only the contrasts whose rows were run."""
    table, work = quick_table
    doc = _quick("ablation.py", tmp_path / "ablation.json", work, "--variants", "uharmony_independent")
    rows = {r["method"]: r for r in doc["rows"]}
    table_methods = {"joint_instance", "uharmony_given", "uharmony_gated"}
    assert set(rows) == table_methods | {"uharmony_independent_given", "uharmony_independent_gated"}
    # the table's models were scored again on the same cases: the same figures
    for r in table["rows"]:
        if r["backbone"] == "dynunet" and r["method"] in rows:
            assert rows[r["method"]]["seed_means"] == r["seed_means"], r["method"]
    trained = {m["model"] for m in doc["models"] if not m.get("reused")}
    assert trained == {
        "dynunet-uharmony-independent-r0",
        "dynunet-uharmony-independent-r1",
        "addsite-uharmony-backbone",
    }
    card = json.loads((work / "models" / "dynunet-uharmony-independent-r0" / "model.json").read_text(encoding="utf-8"))
    assert card["architecture"]["degree"] == 3 and "--site-params independent" in card["provenance"]["command"]
    assert [(p["method"], p["against"]) for p in doc["paired_gain"]] == [
        ("uharmony_gated", "joint_instance"),
        ("uharmony_independent_gated", "joint_instance"),
        ("uharmony_gated", "uharmony_independent_gated"),
    ]
    assert [c["name"] for c in doc["comparisons"]] == [f"{p['method']} - {p['against']}" for p in doc["paired_gain"]]
    assert all(c["replicates"] == 2 and c["ci95"][0] <= c["diff_mean"] <= c["ci95"][1] for c in doc["comparisons"])
    assert (tmp_path / doc["case_scores"]).is_file()
    for p in doc["paired_gain"]:
        base, own = rows[p["against"]]["seed_means"], rows[p["method"]]["seed_means"]
        assert p["per_seed"] == [round(a - b, 4) for a, b in zip(own, base)]
        assert p["wins"] == sum(g > 0 for g in p["per_seed"])
        assert ("met" in p) == (p["against"] == "joint_instance")
        if "met" in p:
            assert p["met"] == (p["mean"] >= 0.02)
    added = {r["method"]: r for r in doc["addsite_rows"]}
    methods = ["addsite_uharmony", "addsite_uharmony_backbone", "addsite_finetune_instance", "addsite_scratch"]
    assert list(added) == methods and all(set(r["per_site"]) == {"hospital-e"} for r in added.values())
    table_rows = {r["method"]: r for r in table["rows"] if r["backbone"] == "dynunet"}
    for method in ("addsite_uharmony", "addsite_finetune_instance", "addsite_scratch"):  # reused, so the same
        assert added[method]["dice_mean"] == table_rows[method]["dice_mean"], method
    old = {o["method"]: o for o in doc["addsite_old_sites"]}
    assert list(old) == methods and "change" not in old["addsite_scratch"]
    for o in old.values():
        assert set(o["per_site_after"]) == TRAINING_SITES and is_fraction(o["old_sites_after"])
        if "change" in o:
            assert o["change"] == round(o["old_sites_after"] - o["old_sites_before"], 4)
