"""benchmarks/federated.py --quick: four federations, centralized and local-only training on the protocol's development
seed, every case's record beside the figures, federated U-Harmony compared with each arm pooled and per site, Dice per
round from the sites' validation cases, a local-steps sweep at a matched budget, and the Markdown form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, is_fraction, results_renderer

from UHarmonyLib.evaluation.scoring import WHOLE

sys.path.insert(0, str(REPO / "benchmarks"))
import replicate_store

PROTOCOL = json.loads((REPO / "benchmarks" / "protocol.json").read_text(encoding="utf-8"))
ARMS = ["centralized_uharmony", "centralized_uharmony_wide", "federated_uharmony", "federated_fedavg",
        "federated_fedprox", "federated_fedbn", "local_only"]  # fmt: skip
SITES = ["hospital-3t-3d", "hospital-1.5t-2d", "hospital-3t-2d", "hospital-1.5t-old"]


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/federated.py", *args],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_help_and_quick_never_scores_on_test_seeds(tmp_path: Path) -> None:
    assert run("--help").returncode == 0
    proc = run("--quick", "--final", "--work", str(tmp_path / "work"))
    assert proc.returncode == 2 and "--quick never uses the test seeds" in proc.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (["--local-steps-sweep", "0"], "--local-steps-sweep: each number of local steps must be at least 1"),
        (["--server-momentum-sweep", "1"], "--server-momentum-sweep: each momentum must be in [0, 1)"),
        (["--lr-sweep", "0.002", "-0.01"], "--lr-sweep: each learning rate must be in (0, 1]"),
        (["--federated-lr", "0"], "--federated-lr: each learning rate must be in (0, 1]"),
        (["--central-lr", "2"], "--central-lr: each learning rate must be in (0, 1]"),
    ],
)
def test_a_sweep_value_out_of_range_is_refused_before_any_work(tmp_path: Path, sweep: list[str], message: str) -> None:
    proc = run("--quick", "--work", str(tmp_path / "work"), *sweep)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "work").exists()


@pytest.mark.slow  # a benchmark --quick run: eight trainings, four of them in Flower's simulation runtime
def test_quick_run_scores_every_case_and_compares(tmp_path: Path) -> None:
    out = tmp_path / "federated.json"
    store = tmp_path / "store"
    sweep_args = ["--local-steps-sweep", "1", "2", "--server-momentum-sweep", "0", "0.5", "--lr-sweep", "0.002", "0.01"]
    sweep_args += ["--store", str(store)]
    proc = run("--quick", "--work", str(tmp_path / "work"), "--out", str(out), *sweep_args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["evaluation"] == "development" and doc["protocol"] == PROTOCOL and doc["replicates"] == {"protocols": 1}
    (scenario,) = doc["scenarios"]
    assert scenario["scenario"] == "protocols" and scenario["sites"] == SITES
    rows = {r["method"]: r for r in scenario["rows"]}
    assert list(rows) == ARMS
    for r in rows.values():
        assert list(r["per_site"]) == SITES and all(is_fraction(v) for v in [r["dice_mean"], *r["per_site"].values()])
        assert r["dice_per_replicate"] == [r["dice_mean"]]
    federated = [rows[a] for a in ARMS[2:6]]
    assert [r["site_params"] for r in federated] == ["residual", "independent", "independent", "independent"]
    assert [r["strategy"] for r in federated] == ["fedavg", "fedavg", "fedprox", "fedavg"]
    for r in federated:  # quick: 2 rounds, each site scoring each round's model (eval_every 1)
        assert len(r["train_loss_per_round"]) == 2 and [p["round"] for p in r["dice_per_round"]] == [1, 2]
        assert all(is_fraction(p["dice"]) for p in r["dice_per_round"]), r
    assert rows["centralized_uharmony"]["gap_to_centralized"] == 0
    gap = rows["federated_uharmony"]["dice_mean"] - rows["centralized_uharmony"]["dice_mean"]
    assert rows["federated_uharmony"]["gap_to_centralized"] == pytest.approx(gap, abs=1e-4)
    goals = scenario["goal"]
    assert [g["against"] for g in goals] == ARMS[:2]
    assert all(g["met"] == (g["gap"] >= -0.03) and g["shown"] == (g["ci95"][0] >= -0.03) for g in goals)

    # one record per scored case: seven arms x four sites x one test case, each site's own model on its own cases
    cases = json.loads((tmp_path / doc["case_scores"]).read_text(encoding="utf-8"))
    assert doc["case_scores"] == "federated.cases.json" and cases["evaluation"] == "development"
    records = cases["cases"]
    assert len(records) == 28
    for arm in ARMS:
        assert sorted(r["site"] for r in records if r["arm"] == arm) == sorted(SITES), arm
    for r in records:
        assert all(WHOLE in r[m] for m in ("dice", "hd95_mm", "lesion_dice")) and is_fraction(r["dice"][WHOLE]), r
        assert r["site_mode"] == ("given" if r["arm"] == "federated_fedbn" else "auto"), r

    compared = scenario["comparisons"]
    assert [c["name"] for c in compared] == [f"federated_uharmony - {a}" for a in ARMS if a != "federated_uharmony"]
    for c in compared:
        low, high = c["ci95"]
        assert low <= c["diff_mean"] <= high and c["replicates"] == 1 and c["cases"] == 4, c
        assert list(c["per_site"]) == SITES and all(s["cases"] == 1 for s in c["per_site"].values()), c
    assert [g["gap"] for g in goals] == [c["diff_mean"] for c in compared[:2]] and compared[0]["a"] == ARMS[0]

    # quick's budget is 2 rounds x 2 local steps: 1 local step takes 4 rounds; 2 is the main row itself
    sweep = doc["local_steps_sweep"]
    assert [(r["local_steps"], r["rounds"]) for r in sweep] == [(1, 4), (2, 2)]
    assert sweep[1]["dice_mean"] == rows["federated_uharmony"]["dice_mean"]
    for r in sweep:
        assert len(r["train_loss_per_round"]) == r["rounds"] and list(r["per_site"]) == SITES
        assert is_fraction(r["dice_mean"]), r

    momentum = doc["server_momentum_sweep"]  # 0 is plain averaging: the main row itself
    assert [r["server_momentum"] for r in momentum] == [0, 0.5]
    assert momentum[0]["dice_mean"] == rows["federated_uharmony"]["dice_mean"]
    assert is_fraction(momentum[1]["dice_mean"]) and list(momentum[1]["per_site"]) == SITES
    assert len(momentum[1]["dice_per_round"]) == 2 and len(momentum[1]["train_loss_per_round"]) == 2

    rates = doc["lr_sweep"]  # the contract's own rate is the main row
    assert [r["lr"] for r in rates] == [0.002, 0.01] and rates[0]["dice_mean"] == rows["federated_uharmony"][
        "dice_mean"
    ]
    assert is_fraction(rates[1]["dice_mean"]) and list(rates[1]["per_site"]) == SITES
    assert len(rates[1]["dice_per_round"]) == 2 and len(rates[1]["train_loss_per_round"]) == 2
    central = rows["centralized_uharmony"]["dice_mean"]  # the main rows' rate: the centralized main row itself
    assert rates[0]["centralized"]["dice_mean"] == central
    assert rates[0]["gap_to_centralized"] == pytest.approx(rates[0]["dice_mean"] - central, abs=1e-4)
    other = rates[1]["centralized"]  # trained again at 0.01
    assert is_fraction(other["dice_mean"]) and list(other["per_site"]) == SITES
    assert rates[1]["gap_to_centralized"] == pytest.approx(rates[1]["dice_mean"] - other["dice_mean"], abs=1e-4)
    assert doc["rates"] == {"federated": 0.002, "central": 0.002}

    assert doc["rounds_plot"] == "federated_rounds.png"
    assert (tmp_path / doc["rounds_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = "\n".join(results_renderer("federated.json")(doc))
    assert all(f"`{a}`" in markdown for a in ARMS) and "Command:" in markdown and "federated_rounds.png" in markdown
    assert "Federated U-Harmony with server momentum (Flower's FedAvgM" in markdown
    assert "Federated and centralized U-Harmony at other peak learning rates" in markdown and "| 0.01 |" in markdown
    assert "| `federated_lr` | 0.002 |" in markdown

    # the finished replicate and the sweep's other run were stored: a run on a new machine (no work folder) trains
    # nothing and gives the same figures and case records
    assert sorted(p.name for p in store.iterdir()) == [
        "protocols-r0-central-lr0.01.json",
        "protocols-r0-local1.json",
        "protocols-r0-lr0.01.json",
        "protocols-r0-momentum0.5.json",
        "protocols-r0.json",
    ]
    stored = json.loads((store / "protocols-r0.json").read_text(encoding="utf-8"))
    text = "\n".join(results_renderer("federated_replicates/*.json")(stored))
    assert "Stored replicate of `protocols` (development evaluation" in text
    cells = {line.split("|")[1].strip(): line.split("|")[2:4] for line in text.splitlines() if line.startswith("| `")}
    for r in rows.values():  # the stored records give the figures' own mean Dice of every arm
        dice, count = cells[f"`{r['method']}`"]
        assert float(dice) == pytest.approx(r["dice_mean"], abs=6e-4) and int(count) == 4, (r, text)
    again = tmp_path / "again" / "federated.json"
    again.parent.mkdir()
    proc = run("--quick", "--work", str(tmp_path / "new-work"), "--out", str(again), *sweep_args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "protocols-r0: loaded from" in proc.stdout and " trained" not in proc.stdout
    second = json.loads(again.read_text(encoding="utf-8"))
    assert {k: second[k] for k in ("scenarios", "local_steps_sweep", "server_momentum_sweep", "lr_sweep")} == {
        k: doc[k] for k in ("scenarios", "local_steps_sweep", "server_momentum_sweep", "lr_sweep")
    }
    assert json.loads((again.parent / doc["case_scores"]).read_text(encoding="utf-8")) == cases
    assert not (tmp_path / "new-work" / "quick" / "data").exists()  # no case was drawn again


def test_a_stored_replicate_of_other_settings_is_refused(tmp_path: Path) -> None:
    """A replicate stored under another key is never mixed into a table: one line names the file and what differs."""
    key = {"scenario": "protocols", "settings": {"rounds": 12}, "training_seed": 1}
    replicate_store.save(tmp_path, "protocols-r0", key, {"scored": {}})
    assert replicate_store.load(tmp_path, "protocols-r0", key) == {"scored": {}}
    assert replicate_store.load(tmp_path, "protocols-r1", key) is None and replicate_store.load(None, "x", key) is None
    with pytest.raises(SystemExit, match=r"protocols-r0.json: stored with other settings; delete it"):
        replicate_store.load(tmp_path, "protocols-r0", {**key, "settings": {"rounds": 8}})
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"broken.json: not a stored replicate"):
        replicate_store.load(tmp_path, "broken", key)


def test_chosen_rates_name_their_replicate_and_reach_every_arm(tmp_path: Path) -> None:
    """Rates chosen on development data make their own replicate (name, key, model folder): a model or a stored
    replicate of other rates is never reused, and replicates stored at the defaults keep their names and keys."""
    from federated import FULL, OURS, Rates, Replicate

    default = Replicate(tmp_path, "protocols", 0, FULL, False)
    assert default.name == "protocols-r0" and default.folder == tmp_path / "protocols" / "r0"
    assert not {"federated_lr", "central_lr"} & set(default.key())
    assert default.contract(OURS, FULL).lr == 0.002 and default.training("c", "uharmony", tmp_path, 9).lr == 0.002

    chosen = Replicate(tmp_path, "protocols", 0, FULL, True, Rates(federated=0.004, central=0.003))
    assert chosen.name == "protocols-r0-test-lr0.004-0.003" and chosen.folder.name == "r0-lr0.004-0.003"
    assert chosen.key()["federated_lr"] == 0.004 and chosen.key()["central_lr"] == 0.003
    assert chosen.key()["evaluation"] == "test" and chosen.key()["test_seed"] != default.key()["test_seed"]
    assert all(chosen.contract(arm, FULL).lr == 0.004 for arm in ("federated_uharmony", "federated_fedbn"))
    assert chosen.contract(OURS, FULL, lr=0.008).lr == 0.008  # a sweep's own rate wins
    assert {j.lr for j in chosen.trainings()} == {0.003}  # centralized, wide and local-only alike
    assert chosen.training("c", "uharmony", tmp_path, 9, lr=0.01).lr == 0.01
