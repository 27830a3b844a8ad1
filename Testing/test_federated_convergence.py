"""Federated training that continues across rounds, in a real Flower simulation of three sites.

Each round is a fresh ClientApp process, so whatever a site keeps between rounds comes
from its disk: here AdamW's moments and step counts, the place in the one learning-rate
schedule, and U-Harmony's residual site rows (a shared value averaged by the server plus
an offset that stays at the site). With `eval_every` each site also scores every round's
model on its own validation cases, and only the figures travel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_main
from safetensors.torch import load_file
from test_federated_site import SPEC

from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.simulate import simulate
from UHarmonyLib.federated.site import MOMENTS_NAME, OPTIMIZER_NAME, RECORD_NAME, ROWS_NAME, SiteNode
from UHarmonyLib.federated.split import shared_names, site_tensor_names
from UHarmonyLib.model.weights import load_bundle, unique_state

CONTRACT = Federation(
    sites="north,south,east",
    channels="T1,FLAIR",
    rounds=2,
    local_steps=3,
    patch=32,
    spacing=4.0,
    filters="4,8,16",
    eval_every=1,
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(the simulation's folder, the server's record) of one two-round federation."""
    root = tmp_path_factory.mktemp("fed-convergence")
    (root / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    run = run_main("synth", "--scenario", root / "spec.json", "--out", root / "data", "--spacing", 4,
                   "--cases-per-site", 3)  # fmt: skip
    assert run.code == 0, run
    return root / "sim", simulate(CONTRACT, [root / "data" / "dataset.json"], root / "sim")


@pytest.mark.slow
def test_each_site_scores_every_rounds_model_and_only_the_figures_travel(
    federation: tuple[Path, dict[str, Any]],
) -> None:
    sim, record = federation
    evaluations = record["evaluations"]
    assert [e["round"] for e in evaluations] == [1, 2]
    for e in evaluations:
        assert set(e["dice_whole_lesion"]) == set(CONTRACT.site_names)
        assert all(d is None or 0 <= d <= 1 for d in e["dice_whole_lesion"].values()), e
    for phase in ("evaluate 1", "evaluate 2"):
        assert [r["tensors"] for r in record["received"][phase]] == [{}] * 3  # Dice and a count, no weights
    # the last round's figures are the final backbone with each site's own rows, scored again here
    shared = load_file(str(sim / "server" / "shared.safetensors"))
    data = sim.parent / "data" / "dataset.json"
    for site in CONTRACT.site_names:
        node = SiteNode(CONTRACT, data, site, sim / "sites" / site)
        assert len(node.own.val) == 1  # 3 cases, val_fraction 0.2: one held out
        again = node.evaluate_round(shared)["dice-whole-lesion"]
        reported = evaluations[-1]["dice_whole_lesion"][site]
        assert (None if again < 0 else round(again, 4)) == reported, site


def _state(sim: Path, site: str) -> Path:
    return sim / "sites" / site / CONTRACT.digest()


def _one_cycle(total: int) -> list[float]:
    """The learning rate of each step of torch's OneCycleLR (centralized training's schedule) over `total` steps."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=CONTRACT.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=CONTRACT.lr, total_steps=total)
    rates = []
    for _ in range(total):
        rates.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        schedule.step()
    return rates


@pytest.mark.slow  # a Flower simulation: Ray, three sites, two rounds, three bundles
def test_optimizer_state_survives_a_round_and_the_schedule_runs_on(federation: tuple[Path, dict[str, Any]]) -> None:
    sim, record = federation
    assert record["status"] == "finished" and len(record["rounds"]) == 2
    steps = CONTRACT.local_steps
    rates = _one_cycle(CONTRACT.total_steps)
    trained = {n for n, _ in CONTRACT.network().named_parameters() if not n.startswith("gate.")}
    for site in CONTRACT.site_names:
        state = _state(sim, site)
        rounds = json.loads((state / RECORD_NAME).read_text(encoding="utf-8"))["rounds"]
        # round 2's fresh process found the moments of round 1's steps, not a new optimizer
        assert [r["optimizer-steps-restored"] for r in rounds] == [0, steps], site
        # one schedule over both rounds: round 2 starts where round 1 stopped, at step `steps` of six
        assert [r["lr-first"] for r in rounds] == pytest.approx([rates[0], rates[steps]]), site
        assert [r["lr-last"] for r in rounds] == pytest.approx([rates[steps - 1], rates[-1]]), site
        saved = json.loads((state / OPTIMIZER_NAME).read_text(encoding="utf-8"))
        assert saved["round"] == 2 and set(saved["steps"]) == trained, site
        assert set(saved["steps"].values()) == {CONTRACT.total_steps}, site
        moments = load_file(str(state / MOMENTS_NAME))
        assert set(moments) == {f"{n}/{m}" for n in trained for m in ("exp_avg", "exp_avg_sq")}
        assert all(bool(moments[f"{n}/exp_avg_sq"].abs().sum() > 0) for n in trained if "shared" in n), site


@pytest.mark.slow
def test_bundles_fold_the_averaged_shared_value_and_each_sites_offset(federation: tuple[Path, dict[str, Any]]) -> None:
    sim, record = federation
    net = CONTRACT.network()
    offsets = site_tensor_names(net)
    assert offsets and all(".parametrizations." in k and k.endswith(".original") for k in offsets)
    assert CONTRACT.site_params == "residual" and record["contract"]["site-params"] == "residual"
    # the shared part of every site row travelled with the backbone; the offsets never did
    for reply in record["received"]["round 2"]:
        assert set(reply["tensors"]["arrays"]) == set(shared_names(net)) and not set(offsets) & set(shared_names(net))
    shared = load_file(str(sim / "server" / "shared.safetensors"))
    own = {site: load_file(str(_state(sim, site) / ROWS_NAME)) for site in CONTRACT.site_names}
    for site, path in record["bundles"].items():
        bundle = load_bundle(Path(path))
        assert bundle.site_names == CONTRACT.site_names  # every site published
        assert bundle.card["provenance"]["federated"]["contract"]["site-params"] == "residual"
        rows = unique_state(bundle.net)
        for name in offsets:
            plain = name.replace(".parametrizations.", ".").removesuffix(".original")
            mean = shared[name.removesuffix(".original") + ".0.shared"]
            for k, other in enumerate(CONTRACT.site_names):
                assert torch.allclose(rows[plain][k], mean + own[other][name], atol=1e-6), (site, other, name)
        assert not any(".parametrizations." in k for k in rows)  # bundles store plain rows
