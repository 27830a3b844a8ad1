"""`uharmony diagnose --trials`: advice from constructed per-case Dice, the budget arithmetic, the folds,
one-line refusals, and one whole run on a tiny dataset (4 mm, 3 cases per site, a tiny network)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_one_line_error, run_main

from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.diagnose.trials import (
    INCONCLUSIVE,
    LABELS,
    MIN_STEPS,
    PLAIN_ENOUGH,
    STRATEGIES,
    advise,
    bought_steps,
    fold_split,
    learning_check,
    minutes_for_steps,
    steps_for_budget,
)

SITES = ("a", "b", "c")
TINY = ["--patch", 32, "--filters", 4, 8, 16, "--device", "cpu", "--progress", "json"]


def _refused(run: Any, message: str) -> None:
    """Exit 2 (bad input) with one stderr line that says `message`."""
    assert message in assert_one_line_error(run) and run.code == 2


def _rows(gains: dict[str, float], noise: float, cases: int = 10, seeds: int = 2) -> dict[str, list[dict[str, Any]]]:
    """Per strategy, per seed and case: plain's Dice plus the strategy's gain (site c gains twice) plus noise."""
    rng = np.random.default_rng(0)
    base = {(s, k): 0.6 + 0.1 * rng.standard_normal() for s in range(seeds) for k in range(cases)}
    out = {}
    for strategy in STRATEGIES:
        gain = gains.get(strategy, 0.0)
        out[strategy] = [
            {
                "seed": s,
                "case": f"case{k}",
                "site": SITES[k % 3],
                "dice": base[s, k] + gain * (2 if k % 3 == 2 else 1) + noise * rng.standard_normal(),
            }
            for (s, k) in base
        ]
    return out


def test_a_clear_winner_is_advised_with_the_sites_that_drive_it() -> None:
    result = advise(_rows({"harmonized": 0.05, "both": 0.1}, noise=0.005), margin=0.01, labels={"both": "both, nyul"})
    assert result["choice"] == "both"
    assert result["advice"] == "harmonize the data and train U-Harmony (both, nyul)"
    assert (
        "lower bound is above the margin 0.01" in result["reason"] and "harmonized data also clear" in result["reason"]
    )
    by_name = {c["strategy"]: c for c in result["comparisons"]}
    assert set(by_name) == {"harmonized", "uharmony", "both"}
    assert by_name["both"]["low"] > 0.01 and by_name["both"]["cases"] == 20 and by_name["both"]["replicates"] == 2
    assert result["drivers"]["strategy"] == "both" and next(iter(result["drivers"]["sites"])) == "c"


def test_nothing_beats_plain_training() -> None:
    result = advise(_rows({"harmonized": -0.05, "uharmony": -0.02}, noise=0.005), margin=0.01)
    assert result["choice"] == result["leaning"] == "plain" and result["advice"] == PLAIN_ENOUGH
    assert all(c["high"] < 0.01 for c in result["comparisons"])
    assert "the best: U-Harmony on harmonized data" in result["reason"]


def test_a_noisy_difference_is_inconclusive_and_says_what_would_settle_it() -> None:
    result = advise(_rows({"uharmony": 0.03}, noise=0.08), margin=0.01)
    assert result["choice"] is None and result["advice"] == INCONCLUSIVE
    settle = re.search(r"about (\d+) paired held-out cases instead of 20", result["reason"])
    assert settle is not None and int(settle.group(1)) > 20, result["reason"]
    gains = {c["strategy"]: c["mean"] for c in result["comparisons"]}
    assert result["leaning"] == max(gains, key=lambda s: gains[s]) and gains[result["leaning"]] > 0
    assert result["reason"].endswith(f"if you must choose now, the highest mean gain is {LABELS[result['leaning']]}'s")


def test_an_inconclusive_answer_names_the_comparison_that_decides_not_the_widest() -> None:
    rows = _rows({"uharmony": 0.02, "harmonized": -0.03, "both": -0.05}, noise=0.06)
    rng = np.random.default_rng(1)
    for r in rows["harmonized"]:  # the widest interval, but settling it would not end the question
        r["dice"] += 0.15 * rng.standard_normal()
    result = advise(rows, margin=0.01)
    by_name = {c["strategy"]: c for c in result["comparisons"]}
    width = {s: c["high"] - c["low"] for s, c in by_name.items()}
    assert result["advice"] == INCONCLUSIVE and max(width, key=lambda s: width[s]) == "harmonized"
    assert by_name["uharmony"]["low"] <= 0.01 < by_name["uharmony"]["mean"]
    assert f"the one that decides: {LABELS['uharmony']} " in result["reason"], result["reason"]

    # no leader above the margin: plain is enough only once every open interval falls below it,
    # so the one named is the one that needs the most cases
    rows = _rows({"uharmony": -0.01, "harmonized": -0.03}, noise=0.06)
    result = advise(rows, margin=0.01)
    open_ = [c for c in result["comparisons"] if c["high"] >= 0.01]
    assert result["advice"] == INCONCLUSIVE and max(c["mean"] for c in open_) <= 0.01
    need = {c["strategy"]: ((c["high"] - c["low"]) / (2 * abs(c["mean"] - 0.01))) ** 2 for c in open_}
    assert f"the one that decides: {LABELS[max(need, key=lambda s: need[s])]} " in result["reason"], result["reason"]


def test_cases_without_a_dice_are_left_out_and_an_all_empty_comparison_decides_nothing() -> None:
    rows = _rows({"uharmony": 0.1}, noise=0.005)
    rows["plain"][0]["dice"] = None
    assert {c["strategy"]: c["cases"] for c in advise(rows, 0.01)["comparisons"]}["uharmony"] == 19
    for r in rows["harmonized"]:
        r["dice"] = None
    result = advise(rows, 0.01)
    assert result["choice"] == "uharmony"  # the clear winner still stands
    empty = {k: [{**r, "dice": None} for r in v] for k, v in rows.items()}
    assert advise(empty, 0.01)["advice"] == INCONCLUSIVE


def test_the_budget_buys_steps_after_the_fixed_costs() -> None:
    assert steps_for_budget(600, 60, 16, 10, 0.5) == 47  # (600 - 60 - 160) / (16 x 0.5)
    assert steps_for_budget(100, 60, 16, 10, 0.5) == 0
    assert minutes_for_steps(MIN_STEPS, 60, 16, 10, 0.5) == 6.4  # 60 + 16 x (10 + 10) = 380 s, rounded up


def test_trials_shorter_than_the_training_make_a_still_learning_answer_inconclusive() -> None:
    """A clear winner at the trials' length is not advised while plain training was still improving."""
    rows = _rows({"uharmony": 0.1}, noise=0.005)
    half = [{**r, "dice": r["dice"] - 0.2} for r in rows["plain"]]
    learning = learning_check(rows["plain"], half, 100, 0.01)
    assert learning["still_learning"] and learning["half_steps"] == 50
    assert learning["mean"] == pytest.approx(0.2) and learning["cases"] == 20
    result = advise(rows, 0.01, learning=learning, full_length=": about --budget-minutes 9 buys trials of 300 steps")
    assert result["choice"] is None and result["advice"] == INCONCLUSIVE and result["learning"] == learning
    assert result["reason"].startswith("the trials of 100 steps are too short to stand for the full training")
    assert (
        "rose +0.200" in result["reason"]
        and "buys trials of 300 steps; at this length: site-conditioned" in (result["reason"])
    )
    settled = learning_check(rows["plain"], [{**r, "dice": r["dice"] - 0.005} for r in rows["plain"]], 100, 0.01)
    assert not settled["still_learning"]
    assert advise(rows, 0.01, learning=settled)["choice"] == "uharmony"  # a settled check leaves the advice


def test_the_learning_check_is_paid_from_the_budget_only_when_trials_fall_short() -> None:
    assert bought_steps(6000, 60, 16, 10, 0.5, 300, 4) == (300, False)  # 16 x 300 steps fit: full length
    steps, check = bought_steps(600, 60, 16, 10, 0.5, 300, 4)
    assert check and steps == 37  # (600 - 60 - 20 x 10) / ((16 + 2) x 0.5)
    assert minutes_for_steps(37, 60, 16, 10, 0.5, 4) <= 10 < minutes_for_steps(38, 60, 16, 10, 0.5, 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trials") / "data"
    run = run_main("synth", "--scenario", "appearance", "--out", folder, "--cases-per-site", 3, "--spacing", 4)
    assert run.code == 0, run.stderr
    return folder


def test_every_site_is_held_out_in_every_fold_once_per_seed(tiny: Path) -> None:
    plan = plan_training([tiny], val_fraction=0.0, seed=0)
    for seed in (0, 1):
        folds = fold_split(plan, seed, 2)
        assert sorted(i for f in folds for i in f) == list(range(len(plan.cases)))
        for held in folds:
            assert {plan.cases[i].site for i in held} == set(range(len(plan.sites)))
    assert fold_split(plan, 0, 2) != fold_split(plan, 1, 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trial-seeds", 3], "--trial-seeds sets up the outcome trials: add --trials"),
        (["--trials", "--trial-seeds", 1], "--trial-seeds must be at least 2"),
        (["--trials", "--budget-minutes", 0], "--budget-minutes must be a positive number"),
        (["--trials", "--margin", 1.5], "--margin must be in [0, 1)"),
        (["--trials", "--trial-max-steps", 5], "--trial-max-steps must be at least 20"),
        (["--trials", "--harmonize-method", "magic"], "--harmonize-method magic: unknown method"),
        (["--trials", "--patch", 30], "--patch 30 30 30: each size must be a multiple of 4"),
        (["--trials", "--trial-folds", 4], "site scanner-a has 3 case(s)"),
    ],
)
def test_bad_trial_options_are_refused_in_one_line(tiny: Path, tmp_path: Path, extra: list[Any], message: str) -> None:
    run = run_main("diagnose", "--data", tiny, "--out", tmp_path / "report", *TINY, *extra)
    _refused(run, message)
    assert not (tmp_path / "report").exists()


@pytest.mark.slow  # a calibration run first: 20-35 s on one shared CPU
def test_a_budget_too_small_is_refused_with_what_would_do(tiny: Path, tmp_path: Path) -> None:
    """Refused with the budget that would do; a method given by name is not screened first (no screen progress)."""
    out = tmp_path / "report"
    run = run_main(
        "diagnose",
        "--data",
        tiny,
        "--out",
        out,
        "--trials",
        "--budget-minutes",
        0.1,
        "--harmonize-method",
        "nyul",
        *TINY,
    )
    _refused(run, "--budget-minutes 0.1 buys 0 steps per trial (16 trials")
    assert f"{MIN_STEPS} steps need about --budget-minutes" in run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert not any(e.get("stage") == "screen" for e in events)
    assert any(e.get("message") == "trials: harmonization nyul, as given (not screened)" for e in events)


@pytest.mark.slow  # the screen, 16 tiny trainings of 20 steps and their scoring: about three minutes on one CPU thread
def test_trials_write_their_outcome_into_the_summary_and_the_page(tiny: Path, tmp_path: Path) -> None:
    """By default the harmonized strategies use the screened method, and the summary and page show the screen."""
    out = tmp_path / "report"
    run = run_main(
        "diagnose", "--data", tiny, "--out", out, "--trials", "--budget-minutes", 30, "--trial-max-steps", 20, *TINY
    )
    assert run.code == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert [e["done"] for e in events if e.get("stage") == "trials"] == list(range(1, 17))
    assert [e["done"] for e in events if e.get("stage") == "screen"] == list(range(1, 8))
    estimate = next(e["message"] for e in events if e["event"] == "log" and "16 trials (4 strategies" in e["message"])
    assert "16 trials (4 strategies x 2 seeds x 2 folds)" in estimate and "the harmonization screen's" in estimate
    result = events[-1]
    trials = json.loads((out / "summary.json").read_text(encoding="utf-8"))["trials"]
    assert result["trial_advice"] == trials["advice"] and result["trial_reason"] == trials["reason"]
    assert trials["steps"] == MIN_STEPS and trials["seeds"] == [0, 1] and trials["folds"] == 2
    method = trials["harmonize_method"]
    assert method["chosen_by"] == "screened (--harmonize-method auto)" and method["screen"]["reduces"]
    assert method["method"] == method["screen"]["chosen"] in ("nyul", "match")  # the appearance scenario's gamma
    assert {s["harmonize"] for s in trials["strategies"].values()} == {None, method["method"]}
    assert trials["budget"]["screen_seconds"] == method["screen"]["seconds"] > 0
    rows = trials["rows"]
    assert len(rows) == 4 * 2 * 12  # every case scored once per seed and strategy
    for strategy in STRATEGIES:
        assert sorted((r["seed"], r["case"]) for r in rows if r["strategy"] == strategy) == sorted(
            (s, c) for s in (0, 1) for c in {r["case"] for r in rows}
        )
    assert set(trials["site_means"]) == set(STRATEGIES)
    assert [c["name"] for c in trials["comparisons"]] == ["harmonized - plain", "uharmony - plain", "both - plain"]
    assert all(c["low"] <= c["mean"] <= c["high"] for c in trials["comparisons"])
    assert trials["budget"]["minutes"] == 30 and trials["budget"]["seconds_per_step"] > 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{200,}'", page)) == 5
    assert "Outcome trials" in page and "Each strategy minus plain training" in page and "http" not in page
    assert "Harmonization methods screened" in page
