"""benchmarks/reproduce.py --quick: every row of the reproduction table, finite figures, and its Markdown form."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

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
TRAINING_SITES = {"hospital-a", "hospital-b", "hospital-c", "hospital-d"}


def _render_reproduce() -> Callable[[dict[str, Any]], list[str]]:
    spec = importlib.util.spec_from_file_location("results_md", REPO / "scripts" / "results_md.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render_reproduce


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0


def _quick(script: str, out: Path, work: Path) -> dict[str, Any]:
    """One benchmark script's --quick run in a fresh process on one thread; its JSON document."""
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", "--out", str(out), "--work", str(work)],
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
        assert all(_fraction(v) for v in [r["dice_mean"], r["dice_std"], *r["per_site"].values()]), r
        one_site = "cases" if method.startswith("addsite") else "sites"
        assert r["spread"] == ("seeds" if len(r["seeds"]) > 1 else one_site) and r["steps"] > 0
    given, gated = rows[("dynunet", "uharmony_given")], rows[("dynunet", "uharmony_gated")]
    assert given["seeds"] == gated["seeds"] == rows[("dynunet", "joint_instance")]["seeds"] == [0, 1]
    assert _fraction(gated["gate_accuracy"]) and _fraction(rows[("dynunet", "addsite_uharmony")]["gate_accuracy"])
    assert doc["command"].startswith("python benchmarks/reproduce.py --quick") and doc["seconds"] > 0
    assert doc["settings"]["torch_threads"] == 1 and doc["notes"]

    markdown = "\n".join(_render_reproduce()(doc))
    assert "| method | backbone |" in markdown and "| goal | value | met |" in markdown
    assert all(f"`{m}`" in markdown for m in DYNUNET) and "swinunetr" in markdown


def test_restore_degree_reuses_the_table_and_trains_only_the_linear_models(
    quick_table: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """benchmarks/restore_degree.py --quick on a reproduce.py work folder: pairs seed by seed, reuses its models."""
    table, work = quick_table
    doc = _quick("restore_degree.py", tmp_path / "restore_degree.json", work)
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"joint_instance", "uharmony_given", "uharmony_gated", "uharmony_linear_given",
                         "uharmony_linear_gated"}  # fmt: skip
    # the table's models were scored again on the same cases: the same figures
    for r in table["rows"]:
        if r["backbone"] == "dynunet" and r["method"] in rows:
            assert rows[r["method"]]["seed_means"] == r["seed_means"], r["method"]
    trained = {m["model"] for m in doc["models"] if not m.get("reused")}
    assert trained == {"dynunet-uharmony-linear-s0", "dynunet-uharmony-linear-s1"}
    card = json.loads((work / "models" / "dynunet-uharmony-linear-s0" / "model.json").read_text(encoding="utf-8"))
    assert card["architecture"]["degree"] == 1
    for p in doc["paired_gain"]:
        base, own = rows["joint_instance"]["seed_means"], rows[p["method"]]["seed_means"]
        assert p["per_seed"] == [round(a - b, 4) for a, b in zip(own, base)]
        assert p["met"] == (p["mean"] >= 0.02)
