"""One site's side of federated training, on real synthetic data, without the Flower transport.

What may leave a site, how its rows survive between rounds (each round is a fresh
process in a deployment), and the bundle it writes at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
import torch
from conftest import run_main
from safetensors.torch import load_file

from UHarmonyLib.errors import InputError
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.site import ROWS_NAME, SiteNode
from UHarmonyLib.federated.split import load_shared, shared_names, shared_state, site_rows, site_tensor_names
from UHarmonyLib.federated.wire import merge_banks
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import load_bundle, unique_state

SPEC = {
    "name": "three-clinics",
    "sites": [
        {"name": "north", "channels": ["T1", "FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}},
        {"name": "south", "channels": ["T1", "FLAIR"], "gamma": 0.6, "scale": 3000.0},
        {"name": "east", "channels": ["T1", "FLAIR"], "gamma": 1.5, "bias": 0.3, "scale": 90.0},
    ],
}
CONTRACT: dict[str, Any] = {
    "sites": "north,south,east",
    "channels": "T1,FLAIR",
    "rounds": 2,
    "local_steps": 2,
    "patch": 32,
    "spacing": 4.0,
    "filters": "4,8,16",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed-data")
    (root / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    run = run_main("synth", "--scenario", root / "spec.json", "--out", root / "data", "--spacing", 4,
                   "--cases-per-site", 3)  # fmt: skip
    assert run.code == 0, run
    return root / "data" / "dataset.json"


def test_only_shared_tensors_may_leave_and_site_rows_are_refused_on_arrival() -> None:
    for method in ("uharmony", "fedbn", "fedavg"):
        net = Federation(**{**CONTRACT, "method": method}).network()
        state = unique_state(net)
        local, shared = set(site_tensor_names(net)), set(shared_names(net))
        gate = {k for k in state if k.startswith("gate.")}
        assert not local & shared and not gate & shared
        assert local | shared | gate == set(state)
        assert all(state[k].shape[0] == 3 for k in local)
        assert bool(local) == (method != "fedavg")  # plain FedAvg shares its InstanceNorm affines too
    net = Federation(**CONTRACT).network()
    arrays = shared_state(net)
    arrays[site_tensor_names(net)[0]] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        load_shared(net, arrays)


def test_a_round_trains_and_saves_only_the_sites_own_rows(data: Path, tmp_path: Path) -> None:
    contract = Federation(**CONTRACT)
    start = contract.network()
    shared = shared_state(start)
    node = SiteNode(contract, data, "south", tmp_path)
    out, figures = node.train_round(shared, 1)
    assert set(out) == set(shared) and figures["num-examples"] == 3 - 1  # one case held out for validation
    assert any(not torch.equal(out[k], shared[k]) for k in shared)
    rows = load_file(str(node.state / ROWS_NAME))
    assert set(rows) == set(site_tensor_names(start))
    before = site_rows(start, 1)
    assert any(not torch.equal(rows[k], before[k]) for k in rows)
    # the next round is a fresh process: a new node object must pick the rows up from disk
    again = SiteNode(contract, data, "south", tmp_path)
    net = again.network(out)
    assert all(torch.equal(site_rows(net, 1)[k], rows[k]) for k in rows)
    assert all(torch.equal(site_rows(net, 0)[k], site_rows(start, 0)[k]) for k in rows)
    again.train_round(out, 2)
    assert [r["round"] for r in again.record()["rounds"]] == [1, 2]


def test_each_site_writes_a_bundle_that_segments_its_own_cases(data: Path, tmp_path: Path) -> None:
    contract = Federation(**CONTRACT)
    nodes = [SiteNode(contract, data, s, tmp_path / s) for s in contract.site_names]
    shared = shared_state(contract.network())
    for r in (1, 2):
        outs = [n.train_round(shared, r)[0] for n in nodes]
        shared = {k: torch.stack([o[k] for o in outs]).mean(0) for k in shared}
    bank = merge_banks([n.bank() for n in nodes])
    assert sorted(bank.sites.unique().tolist()) == [0, 1, 2] and bank.vectors.shape[1] == 2 * 32
    published = {n.site: n.published_rows() for n in nodes if n.site != "east"}  # east keeps its rows private
    path, figures = nodes[0].write_bundle(shared, {k: v for k, v in published.items() if k != "north"}, bank)
    assert path.name == "uharmony-federated-north-v1" and path.parent == tmp_path / "north"
    bundle = load_bundle(path)
    assert bundle.site_names == ["north", "south"]
    assert bundle.card["metrics"]["validation_cases"] == 1 and "familiar_distance" in figures
    entry = json.loads(data.read_text())["training"][0]
    assert entry["site"] == "north"
    images = [sitk.ReadImage(str(data.parent / p), sitk.sitkFloat32) for p in entry["image"]]
    result = segment_volumes(bundle, images)
    assert result.labels.GetSize() == images[0].GetSize()
    assert result.gate.chosen in ("north", "south") and len(result.gate.probabilities) == 2
    east, _ = nodes[2].write_bundle(shared, published, bank)
    assert load_bundle(east).site_names == ["north", "south", "east"]
    assert nodes[0].write_bundle(shared, {}, bank)[0].name == "uharmony-federated-north-v2"  # never overwritten


def test_a_site_outside_the_contract_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a site of this federation"):
        SiteNode(Federation(**CONTRACT), data, "west", tmp_path)
    with pytest.raises(InputError, match="'FLAIR' is not one of the federation's channels"):
        SiteNode(Federation(**{**CONTRACT, "channels": "T1"}), data, "north", tmp_path)
    with pytest.raises(InputError, match="two or more distinct"):
        Federation(**{**CONTRACT, "sites": "north,north"})
