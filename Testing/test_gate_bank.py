"""The gate bank: stored with its checksum, measures distance to known sites, flags unfamiliar scanners."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import assert_one_line_error, run_main

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.data.synth import make_case
from UHarmonyLib.data.template import load_template
from UHarmonyLib.errors import BundleError
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.inference.gate_decision import GateDecision
from UHarmonyLib.model.card import BANK_NAME, set_familiar_distance
from UHarmonyLib.model.signature_bank import SignatureBank, case_vector
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.training import TrainConfig, train

SPEC = {
    "name": "bank",
    "sites": [
        {"name": "north", "channels": ["T1"], "noise": 0.01, "lesions": {"count": [1, 2], "radius_mm": [8, 10]}},
        {"name": "south", "channels": ["T1"], "gamma": 0.6, "noise": 0.05, "scale": 2000.0,
         "lesions": {"count": [1, 2], "radius_mm": [8, 10]}},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bank")
    (root / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    run = run_main("synth", "--scenario", root / "spec.json", "--out", root / "data", "--spacing", 4,
                   "--cases-per-site", 4)  # fmt: skip
    assert run.code == 0, run
    out = train(TrainConfig(data=[root / "data"], out=root / "b-v1", steps=16, patch=(32,), filters=(4, 8, 16)))
    return out, root / "spec.json"


def _case(spec: Path, site: str, seed: int, **changes: object) -> list[sitk.Image]:
    specs = {s.name: s for s in resolve_scenario(str(spec)).sites}
    case = make_case(load_template(4.0), replace(specs[site], **changes), np.random.default_rng(seed))
    return [sitk.Cast(case.images["T1"], sitk.sitkFloat32)]


def test_bank_is_written_checksummed_and_calibrated(banked: tuple[Path, Path]) -> None:
    bundle = load_bundle(banked[0])
    card = bundle.card
    assert BANK_NAME in card["files"] and card["files"][BANK_NAME]["bytes"] == (banked[0] / BANK_NAME).stat().st_size
    bank = bundle.bank
    assert bank is not None and bank.num_sites == 2
    assert set(bank.sites.tolist()) == {0, 1} and len(set(bank.cases.tolist())) == 6  # 3 training cases per site
    assert 0 < card["inference"]["familiar_distance"] == pytest.approx(bank.threshold, abs=1e-4)
    assert bank.threshold < float("inf")


def test_fresh_cases_of_known_sites_are_familiar_and_a_strange_scanner_is_not(banked: tuple[Path, Path]) -> None:
    bundle = load_bundle(banked[0])
    for site in ("north", "south"):
        decision = segment_volumes(bundle, _case(banked[1], site, 99)).gate
        assert decision.distance is not None and decision.distance <= decision.distance_threshold, (site, decision)
    strange = segment_volumes(bundle, _case(banked[1], "north", 99, gamma=2.5, noise=0.15, blur=2.0)).gate
    assert strange.distance > strange.distance_threshold
    assert not strange.familiar and "far from every known site" in strange.concern
    payload = strange.to_json()
    assert payload["familiar"] is False and payload["distance"] == pytest.approx(strange.distance, abs=1e-4)


def test_segment_warns_in_plain_words_for_an_unfamiliar_case(banked: tuple[Path, Path], tmp_path: Path) -> None:
    image = _case(banked[1], "north", 5, gamma=2.5, noise=0.15, blur=2.0)[0]
    sitk.WriteImage(image, str(tmp_path / "t1.nii.gz"))
    run = run_main("segment", "--model", banked[0], tmp_path / "t1.nii.gz", "--out", tmp_path / "seg.nii.gz",
                   "--gate-json", tmp_path / "gate.json")  # fmt: skip
    assert run.code == 0, run
    assert "WARNING: this case looks unlike every site" in run.stdout and "distance" in run.stdout
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["familiar"] is False and gate["nearest_site"] in ("north", "south")


def test_tampered_bank_is_refused(banked: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / "b-v1"
    copy.mkdir()
    for f in banked[0].iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / BANK_NAME).read_bytes())
    data[-3] ^= 0xFF
    (copy / BANK_NAME).write_bytes(bytes(data))
    line = assert_one_line_error(run_main("models", "info", copy))
    assert BANK_NAME in line and "checksum" in line


def test_a_recalibrated_threshold_changes_the_warning_only(banked: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / "b-v1"
    copy.mkdir()
    for f in banked[0].iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    case = _case(banked[1], "north", 99)
    before = segment_volumes(load_bundle(copy), case)
    assert before.gate.distance is not None and before.gate.distance <= before.gate.distance_threshold
    how = {"cases": 7, "false_positive_rate": 0.05, "data": "development cases"}
    card = set_familiar_distance(copy, before.gate.distance / 2, how)
    after = segment_volumes(load_bundle(copy), case)  # the card still verifies
    assert card["inference"]["familiar_distance"] == pytest.approx(before.gate.distance / 2, abs=1e-4)
    assert card["metrics"]["familiar_calibration"] == how and after.gate.distance > after.gate.distance_threshold
    assert not after.gate.familiar
    assert "far from every known site" in after.gate.concern
    assert after.gate.distance == pytest.approx(before.gate.distance, abs=1e-6)
    for f in (copy / "model.safetensors", copy / BANK_NAME):
        assert f.read_bytes() == (banked[0] / f.name).read_bytes()
    assert (sitk.GetArrayFromImage(after.labels) == sitk.GetArrayFromImage(before.labels)).all()
    (copy / BANK_NAME).write_bytes(b"tampered")
    with pytest.raises(BundleError, match=f"{BANK_NAME}: truncated"):
        set_familiar_distance(copy, 1.0, how)  # a damaged bundle is refused, not re-signed


def test_bundles_without_a_bank_judge_by_entropy_only(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert bundle.bank is None
    decision = GateDecision(["a", "b"], np.array([0.9, 0.1]), 0.5)
    assert decision.distance is None and decision.familiar
    assert not GateDecision(["a", "b"], np.array([0.5, 0.5]), 0.5).familiar


def test_leave_one_case_out_calibration_and_extension() -> None:
    gate_like = load_gate()
    rng = np.random.default_rng(0)
    vectors = torch.as_tensor(
        np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(5, 1, (30, 4))]), dtype=torch.float32
    )
    sites = torch.as_tensor([0] * 30 + [1] * 30)
    cases = torch.as_tensor(np.repeat(np.arange(6), 10))
    bank = SignatureBank(vectors, sites, cases, torch.ones(60))
    threshold = bank.calibrate(gate_like)
    assert 0 < threshold < 3
    near = bank.distances(gate_like, case_vector(rng.normal(0, 1, (10, 4)), np.ones(10)))
    assert near[0] < threshold < near[1]
    grown = bank.extended(
        SignatureBank(vectors[:10] + 20, torch.full((10,), 2), torch.zeros(10, dtype=torch.long), torch.ones(10))
    )
    assert grown.num_sites == 3 and int(grown.cases.max()) == 6
    assert np.isfinite(grown.distances(gate_like, np.full(4, 20.0))).all()


def load_gate() -> torch.nn.Module:
    from UHarmonyLib.nn.gate_network import DomainGate

    gate = DomainGate(1, 2)
    gate.feature_mean = torch.zeros(4)
    gate.feature_std = torch.ones(4)
    return gate
