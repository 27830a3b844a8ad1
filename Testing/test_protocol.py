"""benchmarks/protocol.json and its module: disjoint seed lists, the replicate seeds, refusals, case-score files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO


def _protocol_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol", REPO / "benchmarks" / "protocol.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["protocol"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


protocol = _protocol_module()


def test_the_committed_protocol_keeps_test_development_and_training_seeds_apart() -> None:
    p = protocol.load_protocol()
    assert p.replicates >= 6 and p.test_cases_per_site * 4 >= 40
    assert not set(p.test_seeds) & set(p.development_seeds)
    assert not set(p.training_seeds) & (set(p.test_seeds) | set(p.development_seeds))
    assert p.evaluation_seeds(final=True) == p.test_seeds and p.evaluation_seeds(final=False) == p.development_seeds
    assert p.replicate_seeds() == p.training_seeds[: p.replicates] and p.replicate_seeds(2) == p.training_seeds[:2]
    raw = json.loads(protocol.PROTOCOL_JSON.read_text(encoding="utf-8"))
    assert p.to_json() == raw


def _write(tmp_path: Path, **changes: object) -> Path:
    data = {**json.loads(protocol.PROTOCOL_JSON.read_text(encoding="utf-8")), **changes}
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"development_seeds": [90101, 5]}, "test_seeds and development_seeds share seeds \\[90101\\]"),
        ({"training_seeds": [1, 1]}, "training_seeds must be a non-empty list of distinct integers"),
        ({"test_seeds": []}, "test_seeds must be a non-empty"),
        ({"replicates": 40}, "40 replicates asked for"),
        ({"test_cases_per_site": 0}, "test_cases_per_site must be at least 1"),
    ],
)
def test_a_protocol_that_breaks_a_rule_is_refused(tmp_path: Path, changes: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        protocol.load_protocol(_write(tmp_path, **changes))


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    data = json.loads(protocol.PROTOCOL_JSON.read_text(encoding="utf-8"))
    del data["replicates"]
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="missing replicates"):
        protocol.load_protocol(path)


def _scored(arm: str, replicate: int, dice: dict[str, float | None]) -> object:
    records = [
        {"arm": arm, "replicate": replicate, "case": c, "site": "s", "dice": {"whole lesion": d}}
        for c, d in dice.items()
    ]
    return protocol.Scored(arm, replicate, records)


def test_compare_pairs_cases_within_replicates_and_writes_beside_the_summary(tmp_path: Path) -> None:
    a = [_scored("a", r, {"c1": 0.5, "c2": 0.6, "c3": None}) for r in range(3)]
    b = [_scored("b", r, {"c2": 0.7, "c1": 0.6, "c3": 0.9}) for r in range(3)]
    c = protocol.compare("b - a", a, b)
    assert c["a"] == "a" and c["b"] == "b" and c["diff_mean"] == pytest.approx(0.1)
    assert c["cases"] == 6 and c["replicates"] == 3 and c["holds"] and c["ci95"] == pytest.approx([0.1, 0.1])
    worse = [_scored("w", r, {"c1": 0.6, "c2": 0.5, "c3": 0.1}) for r in range(3)]
    mixed = protocol.compare("w - a", a, worse)
    assert mixed["ci95"][0] <= 0 <= mixed["ci95"][1] and not mixed["holds"]
    with pytest.raises(ValueError, match="2 replicates against 3"):
        protocol.compare("short", a[:2], b)

    summary = tmp_path / "table.json"
    path = protocol.write_case_scores(summary, protocol.load_protocol(), False, a + b)
    assert path == tmp_path / "table.cases.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["summary"] == "table.json" and doc["evaluation"] == "development" and len(doc["cases"]) == 18
