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


def test_quick_run_writes_every_row_and_renders_them(tmp_path: Path) -> None:
    out = tmp_path / "reproduce.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/reproduce.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
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
