"""Regenerate docs/RESULTS.md from every JSON file under docs/results/.

Usage: .venv/bin/python scripts/results_md.py

One section per JSON file. inference.json gets a figure / value / goal / met table with its context, reproduce.json
its method table and the claims it tests, diagnose.json its confusion table, adapt_or_harmonize.json a table per
scenario with its winner and diagnose's advice, ablation.json its paired differences; any other file gets a generic
key / value table, so new benchmarks appear without changing this script. Every file's paired comparisons
(`comparisons`: b - a with a hierarchical bootstrap 95 % CI, benchmarks/protocol.py) get a table in its section
and a row in one forest plot, docs/images/comparisons.png. Files written before the protocol hold per-seed means
only: their seed-paired differences are bootstrapped over seeds alone and marked as such. Per-case score files
(`*.cases.json`) are data for those figures, not sections.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from UHarmonyLib.evaluation.bootstrap import hierarchical_ci
from UHarmonyLib.evaluation.scoring import WHOLE
from UHarmonyLib.model.card import MIRROR_PASSES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
TARGET = ROOT / "docs" / "RESULTS.md"
FOREST = ROOT / "docs" / "images" / "comparisons.png"
SEED_LEVEL = "seed-level only: pre-protocol development figures; a bootstrap over 3 seeds understates the uncertainty"
COMMAND = ".venv/bin/python scripts/results_md.py"
MAX_CELL = 160


def cell(value: Any) -> str:
    """A value as one Markdown table cell: compact JSON for containers, pipes escaped, long text cut."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs; lists are leaves."""
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix or "value", data


def render_generic(data: Any) -> list[str]:
    """Any JSON document as a key / value table."""
    return table(["key", "value"], [[f"`{k}`", v] for k, v in flatten(data)])


def render_inference(doc: dict[str, Any]) -> list[str]:
    """benchmarks/inference.py's results: headline figures against goals, then context and per-run timings."""
    goals = doc.get("goals", {})
    rows = [
        [f"`{name}`", doc.get(name), f"{g['op']} {g['value']}", "yes" if g["met"] else "**no**"]
        for name, g in goals.items()
    ]
    rows.append(["`peak_rss_mb`", doc.get("peak_rss_mb"), "", ""])
    machine = doc.get("machine", {})
    context = {
        "volume": doc.get("volume"),
        "volume_shape": doc.get("volume_shape"),
        "windows": doc.get("windows"),
        "inference": doc.get("inference"),
        "precision": doc.get("precision"),
        "torch_threads": doc.get("torch_threads"),
        "model": (doc.get("model") or {}).get("name"),
        "bundle": (doc.get("model") or {}).get("bundle"),
        **{f"machine.{k}": v for k, v in machine.items()},
        **{f"code.{k}": v for k, v in (doc.get("code") or {}).items()},
        "repeats": doc.get("repeats"),
        "clean_runs": doc.get("clean_runs"),
        "contended": doc.get("contended"),
        "command": doc.get("command"),
        "date": doc.get("date"),
        "benchmark_seconds": doc.get("benchmark_seconds"),
    }
    runs = [
        [
            i + 1,
            r["segment"]["seconds"],
            r["segment"]["wall"],
            r["forward_sum_seconds"],
            r["monai"]["seconds"],
            r["segment"]["peak_rss_mb"],
            "yes" if r["clean"] else "no",
            r["foreign_cores"],
        ]
        for i, r in enumerate(doc.get("raw", {}).get("runs", []))
    ]
    out = [*table(["figure", "value", "goal", "met"], rows), "", "Definitions:", ""]
    out += [f"- `{k}`: {v}" for k, v in doc.get("definitions", {}).items()]
    out += ["", "Context:", "", *table(["key", "value"], [[k, v] for k, v in context.items() if v is not None])]
    out += ["", "Details:", "", *render_generic(doc.get("details", {}))]
    header = [
        "run",
        "segment s",
        "segment wall s",
        "bare forwards s",
        "MONAI s",
        "peak RSS MiB",
        "clean",
        "other cores",
    ]
    out += ["", "Per-run timings:", "", *table(header, runs)]
    out += render_bf16_agreement(doc["bf16_agreement"]) if "bf16_agreement" in doc else []
    return out + render_passes(doc["passes"]) if "passes" in doc else out


def render_bf16_agreement(section: dict[str, Any]) -> list[str]:
    """bfloat16 against float32 labels on cases with lesions: the worst case against the goal, then every case."""
    goal = section["goal"]
    rows = [
        [
            r["case"],
            r["model"],
            f"{r['voxel']:.6f}",
            r["dice"],
            r["differing_voxels"],
            " / ".join(str(r["lesion_ml"][k]) for k in ("truth", "float32", "bfloat16")),
            " / ".join(str(r["dice_vs_truth"][k]) for k in ("float32", "bfloat16")),
        ]
        for r in section["cases"]
    ]
    header = [
        "case",
        "model",
        "same label",
        "whole-lesion Dice",
        "voxels differing",
        "lesion ml: truth / float32 / bfloat16",
        "Dice vs truth: float32 / bfloat16",
    ]
    verdict = "met" if goal["met"] else "**missed**"
    return [
        "",
        f"bfloat16 against float32 labels (`bf16_agreement`, one pass each): worst whole-lesion Dice "
        f"{section['dice']} (goal {goal['op']} {goal['value']}: {verdict}), worst fraction of voxels with the same "
        f"label {section['voxel']:.6f}.",
        "",
        *table(header, rows),
    ]


def render_passes(section: dict[str, Any]) -> list[str]:
    """Test-time mirroring passes: Dice against seconds per case, paired against one pass, and the default chosen."""
    one = next(r for r in section["rows"] if r["passes"] == 1)
    against_one = {c["b_passes"]: c for c in section["comparisons"] if c["a_passes"] == 1}
    rows = [
        [
            r["passes"],
            r["dice"],
            "—" if r["passes"] == 1 else f"{against_one[r['passes']]['diff_mean']:+.4f}",
            "—" if r["passes"] == 1 else "[{:+.4f}, {:+.4f}]".format(*against_one[r["passes"]]["ci95"]),
            r["seconds"],
            f"{r['seconds'] / one['seconds']:.2f}x",
            r["cases"],
        ]
        for r in section["rows"]
    ]
    choice = section["choice"]
    verdict = "the same" if choice["chosen"] == MIRROR_PASSES else "**not the measured choice**"
    header = ["passes", "whole-lesion Dice", "Dice - 1 pass", "95 % CI", "s per case", "time vs 1 pass", "cases"]
    return [
        "",
        f"Test-time mirroring passes (`passes`): {section['model']} on {section['evaluation']} cases of "
        f"{', '.join(section['sites'])} (seed {section['seed']}); {section['dice']}; "
        f"{section['seconds']}; other processes used {section['foreign_cores']} cores meanwhile.",
        "",
        *table(header, rows),
        "",
        f"Measured choice: {choice['chosen']}, by the rule: {choice['rule']}. The engine's default "
        f"(`UHarmonyLib/model/card.py` MIRROR_PASSES) is {MIRROR_PASSES}: {verdict}.",
    ]


def _dice(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def method_table(rows: list[dict[str, Any]]) -> list[str]:
    """Whole-lesion Dice per arm: mean ± spread over replicates, per replicate, lesion-wise Dice, per site."""
    body = [
        [
            f"`{r['method']}`",
            r.get("scenario", ""),
            r.get("replicates", len(r.get("seed_means", []))),
            f"{_dice(r['dice_mean'])} ± {_dice(r['dice_std'])} ({r['spread']})",
            ", ".join(_dice(m) for m in r.get("seed_means", [])),
            _dice(r.get("lesion_dice_mean")),
            ", ".join(f"{site} {_dice(d)}" for site, d in r["per_site"].items()),
        ]
        for r in rows
    ]
    head = ["arm", "scenario", "replicates", "whole-lesion Dice, mean ± spread", "per replicate", "lesion-wise"]
    return table([*head, "per-site Dice"], body)


def lesionwise_table(rows: list[dict[str, Any]]) -> list[str]:
    """BraTS-style lesion-wise whole-lesion Dice per site, one table per scenario."""
    out: list[str] = []
    for scenario in dict.fromkeys(r.get("scenario") for r in rows):
        mine = [r for r in rows if r.get("scenario") == scenario]
        sites = list(dict.fromkeys(s for r in mine for s in r.get("lesion_dice_per_site", {})))
        body = [[f"`{r['method']}`", *[_dice(r["lesion_dice_per_site"].get(s)) for s in sites]] for r in mine]
        out += ["", *table([f"{scenario}: lesion-wise Dice", *sites], body)]
    return out


def claims_table(claims: list[dict[str, Any]]) -> list[str]:
    body = [
        [
            c["name"],
            f"`{c['b']}` − `{c['a']}`",
            f"{c['diff_mean']:+.4f}",
            f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
            f"> {c['margin']:+.2f}",
            "**holds**" if c["holds"] else "**does not hold**",
            c["replicates"],
            c["cases"],
        ]
        for c in claims
    ]
    return table(["claim", "b − a", "mean", "95 % CI", "holds when CI", "verdict", "replicates", "cases"], body)


def render_reproduce(doc: dict[str, Any]) -> list[str]:
    """benchmarks/reproduce.py: the claims, the table, the gate's honesty and adding a site."""
    rows = doc.get("rows", [])
    out = [f"Evaluation: **{doc.get('evaluation')}** data; figures from `{doc.get('figures_from')}`.", ""]
    out += [
        "The four claims declared in docs/reproduction.md before the run:",
        "",
        *claims_table(doc.get("claims", [])),
    ]
    out += ["", *method_table(rows), *lesionwise_table(rows)]
    gate = doc.get("gate", {})
    scenarios = gate.get("by_scenario", {})
    body = [[name, g["accuracy"], g["ece"], g["cases"]] for name, g in scenarios.items()]
    out += ["", "The gate on the test cases (every replicate; `annotation`: replicate 0):", ""]
    out += table(["scenario", "accuracy", "expected calibration error", "cases"], body)
    picture = Path(doc.get("gate_map", ""))
    if picture.parts[:1] == ("docs",):  # RESULTS.md lives in docs/
        out += ["", f"![Gate map on one test case per site]({picture.relative_to('docs').as_posix()})"]
    threshold = doc.get("unfamiliar_threshold", {})
    keys = ["auroc", "flagged_unseen", "flagged_seen", "dice_unseen", "coverage", "dice_all", "dice_kept"]
    body = [[u["rung"], *[u.get(k) for k in keys]] for u in doc.get("unfamiliar", [])]
    out += [
        "",
        f"The unfamiliar flag on the unseen-site ladder (threshold: false-positive rate "
        f"{threshold.get('false_positive_rate')} on development cases; share of seen test cases flagged "
        f"{threshold.get('seen_test_flagged')}; means over replicates):",
        "",
        *table(["rung", *keys], body),
    ]
    objective = doc.get("addsite_objective", {})
    body = [
        [f"`{a['method']}`", a["cases"], _dice(a["new_site_dice"]), _signed(a["old_site_change"]),
         ", ".join(_dice(d) for d in a["new_site_dice_draws"])]
        for a in doc.get("addsite", [])
    ]  # fmt: skip
    zero = ", ".join(f"{k} {_dice(v)}" for k, v in objective.get("zero_shot", {}).items())
    out += ["", f"Adding a site (zero-shot Dice of the parents on it: {zero}):", ""]
    out += table(["method", "cases", "new-site Dice", "old-site change", "per draw"], body)
    winners = ", ".join(f"{k} case(s): `{v}`" for k, v in objective.get("best_per_case_count", {}).items())
    out += ["", f"Objective (best new-site Dice with old-site change ≥ {objective.get('old_site_limit')}): {winners}."]
    out += ["", "Notes:", "", *[f"- {n}" for n in doc.get("notes", [])], ""]
    out += table(["setting", "value"], [[f"`{k}`", v] for k, v in doc.get("settings", {}).items()])
    minutes = doc.get("seconds", 0) / 60
    out += [
        "",
        f"Command: `{doc.get('command')}`; wall time {minutes:.1f} min. Case scores: `{doc.get('case_scores')}`.",
    ]
    return out


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def render_ablation(doc: dict[str, Any]) -> list[str]:
    """benchmarks/ablation.py: U-Harmony's variants and their rows; the paired differences follow in the section's
    comparison table."""
    variants = [[f"`{k}`", v.get("restore_degree"), v.get("site_params")] for k, v in doc.get("variants", {}).items()]
    out = table(["variant", "restore degree", "site rows"], variants)
    out += ["", *method_table(doc.get("rows", []))]
    out += ["", "Notes:", "", *[f"- {n}" for n in doc.get("notes", [])]]
    minutes = doc.get("seconds", 0) / 60
    return [*out, "", f"Command: `{doc.get('command')}`; wall time {minutes:.1f} min (reused models not retrained)."]


def render_default_model(doc: dict[str, Any]) -> list[str]:
    """benchmarks/default_model.py's figures: Dice per site against the goal, the gate, the flag, the demo's time."""
    per_label = doc.get("dice_per_label", {})
    lesionwise = doc.get("lesion_dice_whole_lesion", {})
    rows = []
    for kind, table_key in (("seen", "dice_whole_lesion_seen"), ("unseen", "dice_whole_lesion_unseen")):
        for site, dice in doc.get(table_key, {}).items():
            labels = {k: v for k, v in per_label.get(site, {}).items() if k != "whole lesion" and v == v}
            goal = ("yes" if dice >= 0.80 else "**no**") if kind == "seen" else ""
            by_label = ", ".join(f"{k} {_dice(v)}" for k, v in labels.items())
            rows.append([site, kind, _dice(dice), _dice(lesionwise.get(site)), goal, by_label])
    out = table(["site", "in training", "whole-lesion Dice", "lesion-wise Dice", "≥ 0.80", "per label"], rows)
    gate = doc.get("gate", {})
    threshold = doc.get("unfamiliar_threshold", {})
    summary = [
        ["gate accuracy, training sites (goal ≥ 0.95)", gate.get("accuracy", doc.get("gate_accuracy_seen"))],
        ["gate expected calibration error, training sites", gate.get("ece")],
        ["mean normalized entropy, training sites", doc.get("entropy_seen_mean")],
        ["mean normalized entropy, unseen sites", doc.get("entropy_unseen_mean")],
        ["mean distance to the gate bank, training sites", doc.get("distance_seen_mean")],
        ["mean distance to the gate bank, unseen sites", doc.get("distance_unseen_mean")],
        ["familiar up to (the model card's distance)", doc.get("familiar_distance")],
        ["share flagged unfamiliar (distance or entropy), training sites", doc.get("unfamiliar_flagged_seen")],
        ["share flagged unfamiliar (distance or entropy), unseen sites", doc.get("unfamiliar_flagged_unseen")],
        ["main-job command (`uharmony demo`), seconds", doc.get("demo_seconds")],
        ["bundle size, MB", doc.get("bundle_mb")],
    ]
    out += ["", *table(["gate and demo", "value"], [r for r in summary if r[1] is not None])]
    if doc.get("unfamiliar"):
        out += [
            "",
            f"The unfamiliar flag's distance threshold, {threshold.get('threshold')}, was set on "
            f"{threshold.get('cases')} {threshold.get('data')} at a false-positive rate of "
            f"{threshold.get('false_positive_rate')}"
            + (" and written into the model card." if threshold.get("written_to_card") else "."),
            "",
        ]
        flag = [
            [u["site"], u["auroc"], u["flagged_unseen"], u["flagged_seen"], _dice(u["dice_all"]), u["coverage"],
             _dice(u["dice_kept"])]
            for u in doc["unfamiliar"]
        ]  # fmt: skip
        heads = ["unseen site", "AUROC", "flagged (unseen)", "flagged (seen)", "Dice, all", "coverage", "Dice, kept"]
        out += table(heads, flag)
    context = ["model", "channels", "cases_per_site", "seed", "evaluation", "spacing_mm", "torch_threads", "seconds"]
    out += ["", *table(["context", "value"], [[k, doc.get(k)] for k in [*context, "command"] if k in doc])]
    return out


def render_diagnose(doc: dict[str, Any]) -> list[str]:
    """scripts/validate_diagnose.py's figures: the outcome advisor's regret per dataset (or, in an older file, the
    screens' right answers and confusion table)."""
    if "datasets" in doc:
        return render_regret(doc)
    confusion = doc.get("confusion", {})
    answers = list(next(iter(confusion.values()), {}))
    out = [f"**{doc.get('correct')} of {doc.get('total')} correct** (goal: {doc.get('goal')}).", ""]
    out += table(["expected \\ recommended", *answers], [[k, *v.values()] for k, v in confusion.items()])
    wrong = [f"{r['scenario']} seed {r['seed']}: {r['recommended']}" for r in doc.get("runs", []) if not r["correct"]]
    out += ["", f"Wrong: {'; '.join(wrong) if wrong else 'none'}."]
    context = ["seeds", "cases_per_site", "spacing_mm", "thresholds", "torch_threads", "seconds", "command"]
    return [*out, "", *table(["context", "value"], [[k, doc.get(k)] for k in context if k in doc])]


def render_regret(doc: dict[str, Any]) -> list[str]:
    """Regret of `diagnose --trials` per generated dataset: each strategy's true Dice, the advice and its cost."""
    strategies = list(next(iter(doc["datasets"]), {}).get("truth", {}))
    leaning = all("leaning" in r for r in doc["datasets"]) and doc.get("regret_leaning_mean") is not None
    body = [
        [
            r["name"],
            *[_dice(r["truth"].get(s)) for s in strategies],
            r["best"],
            r["advised_strategy"],
            f"{r['regret']:.3f}",
            "yes" if r["correct"] else "no",
            *([r["leaning"], f"{r['regret_leaning']:.3f}"] if leaning else []),
        ]
        for r in doc["datasets"]
    ]
    bolder = (
        f" Reading an inconclusive answer by its highest mean gain instead: regret mean "
        f"{doc['regret_leaning_mean']}, max {doc['regret_leaning_max']}."
        if leaning
        else ""
    )
    header = ["dataset", *[f"true Dice: {s}" for s in strategies], "best", "advised", "regret", "correct"]
    out = [
        f"**Regret mean {doc.get('regret_mean')}, max {doc.get('regret_max')}; {doc.get('correct')} of "
        f"{doc.get('total')} advised within 0.01 of the best** (goal: mean <= 0.01, max <= 0.03)"
        + ("" if doc.get("complete") else "; incomplete run: not every dataset finished")
        + "."
        + bolder,
        *(["", f"Confirmation set (fresh seeds): {doc['declared']}."] if doc.get("declared") else []),
        "",
        *table([*header, *(["leaning", "regret (leaning)"] if leaning else [])], body),
        "",
        *table(["setting", "value"], [[f"`{k}`", v] for k, v in doc.get("settings", {}).items()]),
    ]
    spent = f" (the datasets' own: {doc['dataset_seconds']} s)" if "dataset_seconds" in doc else ""
    return [*out, "", f"Command: `{doc.get('command')}`; {doc.get('seconds')} s{spent}."]


def render_adapt_or_harmonize(doc: dict[str, Any]) -> list[str]:
    """benchmarks/adapt_or_harmonize.py: per scenario, the four trainings, the winner and diagnose's advice."""
    out = [
        f"Harmonization method: `{doc.get('method')}`. The winner matches diagnose's recommendation when: harmonize "
        "data → `harmonized`, personalize the model → `uharmony`, both → `both`, neither needed → all four means "
        f"within {doc.get('settings', {}).get('neither_within', 0.02)} of each other."
    ]
    for name, scenario in doc.get("scenarios", {}).items():
        body = [
            [
                f"`{r['config']}`",
                r["norm"],
                r["harmonize"] or "—",
                f"{_dice(r['dice_mean'])} ± {_dice(r['dice_std'])} ({r.get('spread', 'seeds')})",
                ", ".join(f"{site} {_dice(d)}" for site, d in r["per_site"].items()),
            ]
            for r in scenario.get("rows", [])
        ]
        validated = scenario.get("recommendation_validated")
        out += ["", f"### {name}", ""]
        out += table(["config", "norm", "harmonize", "whole-lesion Dice, mean ± spread", "per-site Dice"], body)
        out += [
            "",
            f"Winner: `{scenario.get('winner')}`. Diagnose recommends **{scenario.get('recommendation')}** on this "
            f"training data{f' (validate_diagnose.py: {validated})' if validated else ''}; "
            f"matches: {'yes' if scenario.get('matches') else '**no**'}.",
        ]
    out += ["", *table(["setting", "value"], [[f"`{k}`", v] for k, v in doc.get("settings", {}).items()])]
    minutes = doc.get("seconds", 0) / 60
    return [*out, "", f"Command: `{doc.get('command')}`; wall time {minutes:.1f} min."]


def render_federated(doc: dict[str, Any]) -> list[str]:
    """benchmarks/federated.py: per scenario, each arm's Dice (per site, per replicate), its gap to centralized
    training and the goal; federated U-Harmony against each arm per site; Dice per round; the local-steps sweep."""
    out: list[str] = []
    if doc.get("rounds_plot"):
        out += [f"![Dice on the sites' validation cases against rounds](results/{doc['rounds_plot']})", ""]
    for scenario in doc.get("scenarios", []):
        sites, rows = scenario["sites"], scenario["rows"]
        body = [
            [
                f"`{r['method']}`",
                _dice(r.get("dice_mean")),
                ", ".join(_dice(d) for d in r.get("dice_per_replicate", [])),
                "" if r.get("gap_to_centralized") is None else f"{r['gap_to_centralized']:+.3f}",
                *[_dice(r["per_site"].get(x)) for x in sites],
                r.get("seconds_per_round", ""),
            ]
            for r in rows
        ]
        out += [f"### `{scenario['scenario']}`", ""]
        out += table(["arm", "mean Dice", "per replicate", "gap to centralized", *sites, "s / round"], body)
        for goal in scenario["goal"]:
            met, shown = ("yes" if goal[k] else "**no**" for k in ("met", "shown"))
            out += [
                "",
                f"Goal, federated U-Harmony within {goal['federated_uharmony_within']} Dice of `{goal['against']}`: "
                f"gap {goal['gap']:+.4f} (95 % CI {goal['ci95'][0]:+.4f} to {goal['ci95'][1]:+.4f}); mean within "
                f"the goal: {met}; CI within it: {shown}.",
            ]
        out += [
            "",
            "Federated U-Harmony minus each arm per site (mean, 95 % CI):",
            "",
        ]
        per_site = [
            [f"`{c['a']}`", *[f"{c['per_site'][x]['diff_mean']:+.3f} [{c['per_site'][x]['ci95'][0]:+.3f}, "
                              f"{c['per_site'][x]['ci95'][1]:+.3f}]" for x in sites]]
            for c in scenario["comparisons"]
        ]  # fmt: skip
        out += table(["minus", *sites], per_site)
        curves = [r for r in rows if r.get("dice_per_round")]
        if curves:
            rounds = [p["round"] for p in curves[0]["dice_per_round"]]
            body = [[f"`{r['method']}`", *[_dice(p["dice"]) for p in r["dice_per_round"]]] for r in curves]
            out += ["", "Whole-lesion Dice on the sites' validation cases after each round:", ""]
            out += table(["arm", *[f"round {k}" for k in rounds]], body)
        out += [""]
    sweep = doc.get("local_steps_sweep", [])
    if sweep:
        body = [[r["local_steps"], r["rounds"], _dice(r["dice_mean"]), r.get("seconds_per_round", "")] for r in sweep]
        out += [
            "Federated U-Harmony at other local steps, rounds x local steps kept (first scenario, replicate 0):",
            "",
        ]
        out += [*table(["local steps", "rounds", "mean Dice", "s / round"], body), ""]
    momentum = doc.get("server_momentum_sweep", [])
    if momentum:
        body = [[r["server_momentum"], _dice(r["dice_mean"]), r.get("seconds_per_round", "")] for r in momentum]
        out += [
            "Federated U-Harmony with server momentum (Flower's FedAvgM; 0 is plain averaging, the main row; first "
            "scenario, replicate 0):",
            "",
        ]
        out += [*table(["server momentum", "mean Dice", "s / round"], body), ""]
    rates = doc.get("lr_sweep", [])
    if rates:
        body = [
            [
                f"{r['lr']:g}",
                _dice(r["dice_mean"]),
                _dice(r.get("centralized", {}).get("dice_mean")),
                _dice(r.get("gap_to_centralized")),
                *[_dice(v) for v in r["per_site"].values()],
            ]
            for r in rates
        ]
        out += [
            "Federated and centralized U-Harmony at other peak learning rates (the main rows' rates are the main rows; "
            "first scenario, replicate 0; per site: federated):",
            "",
        ]
        head = ["peak lr", "federated Dice", "centralized Dice", "gap", *rates[0]["per_site"]]
        out += [*table(head, body), ""]
    chosen = {f"{k}_lr": v for k, v in doc.get("rates", {}).items()}  # peak rates (before they were options: none)
    out += table(["setting", "value"], [[f"`{k}`", v] for k, v in {**doc.get("settings", {}), **chosen}.items()])
    out += ["", *[f"- {n}" for n in doc.get("notes", [])]]
    minutes = doc.get("seconds", 0) / 60
    reused = (
        f" (replicates and sweep runs found in `{doc['store']}` were loaded, not trained again)"
        if doc.get("store")
        else ""
    )
    return [*out, "", f"Command: `{doc.get('command')}`; {doc.get('runtime')}; wall time {minutes:.1f} min{reused}."]


def render_case_time(doc: dict[str, Any]) -> list[str]:
    """benchmarks/case_time.py: seconds per case per device, with and without test-time mirroring."""
    body = [
        [r["device"], "on" if r["mirror"] else "off", r["passes"], f"{r['seconds']:.2f}", f"{r['wall_seconds']:.2f}"]
        for r in doc.get("rows", [])
    ]
    out = table(["device", "mirroring", "passes", "engine s (median)", "wall s incl. process start"], body)
    machine = doc.get("machine", {})
    out += [
        "",
        f"Model {doc.get('model')}; case: {doc.get('case')}; {doc.get('repeats')} runs each; "
        f"{machine.get('processor')} ({machine.get('cpu_count')} cores), torch {machine.get('torch')}.",
    ]
    return [*out, "", f"Command: `{doc.get('command')}` ({doc.get('date')})."]


def render_memory(doc: dict[str, Any]) -> list[str]:
    """benchmarks/memory.py: peak memory of `uharmony segment` against the input's size."""
    body = [
        [
            " x ".join(map(str, r["size"])),
            f"{r['voxels'] / 1e6:.1f} M",
            "yes" if r["probabilities"] else "no",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['bytes_per_voxel']:.1f}",
            f"{r['seconds']:.1f}",
        ]
        for r in doc.get("rows", [])
    ]
    header = ["input (1 mm)", "voxels", "--probabilities", "peak RSS MB", "bytes / input voxel", "s"]
    out = table(header, body)
    out += [
        "",
        f"Model `{doc.get('model')}`, `--no-mirror`; baseline (the same command on a 32^3 input) "
        f"{doc.get('baseline_peak_rss_mb')} MB; bytes per voxel = (peak - baseline) / input voxels.",
    ]
    return [*out, "", f"Command: `{doc.get('command')}` ({doc.get('date')}, {doc.get('seconds')} s)."]


def render_gpu_check(doc: dict[str, Any]) -> list[str]:
    """benchmarks/gpu_check.py: training steps per variant, segmentation in float32 and the default precision."""
    training, machine = doc.get("training", {}), doc.get("machine", {})

    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    body = [
        [
            r["layout"],
            "yes" if r["compile"] else "no",
            r.get("precision", "—"),
            r.get("skipped") or r.get("error") or seconds(r.get("first_step_seconds")),
            seconds(r.get("step_seconds")),
            r.get("speedup", "—"),
            r.get("peak_gpu_memory_gib") or "—",
            r["losses"][0] if r.get("losses") else "—",
        ]
        for r in training.get("rows", [])
    ]
    header = ["layout", "torch.compile", "precision", "first step s", "step s (median)", "speedup", "peak GiB"]
    versions = ", ".join(f"{k} {machine[k]}" for k in ("torch", "cuda", "cudnn") if machine.get(k))
    out = [
        f"{doc.get('device')} ({versions}); {training.get('data')}, filters {training.get('filters')}, patch "
        f"{training.get('patch')}, batch {training.get('batch_size')}; one batch cut on the CPU in "
        f"{training.get('batch_seconds')} s.",
        "",
        *table([*header, "first loss"], body),
    ]
    seg = doc.get("segmentation")
    if seg:
        runs = [[k, *(seg[k][f] for f in ("precision", "device", "passes", "seconds", "dice_vs_reference"))]
                for k in ("float32", "default")]  # fmt: skip
        peak = f"; peak GPU memory {seg['peak_gpu_memory_gib']} GiB" if seg.get("peak_gpu_memory_gib") else ""
        out += ["", f"Segmentation: {seg['model']} on {seg['case']}{peak}.", ""]
        out += table(["run", "precision", "device", "passes", "s (median)", "Dice vs reference"], runs)
        agreement = cell(seg["agreement_dice"])
        out += ["", f"Default precision against float32 (Dice): {agreement}; speedup {seg['speedup']}."]
    checks = ", ".join(f"{k} {'yes' if ok else '**no**'}" for k, ok in doc.get("checks", {}).items())
    done = "" if doc.get("complete") else " (incomplete: the run stopped early)"
    command = f"Command: `{doc.get('command')}` ({doc.get('date')}, {doc.get('seconds')} s)."
    return [*out, "", f"Checks: {checks or '—'}{done}.", "", command]


def seed_level(name: str, per_seed: list[float], meaning: str) -> dict[str, Any]:
    """A pre-protocol seed-paired difference as a comparison: bootstrap over the seeds only (no case scores)."""
    interval = hierarchical_ci([[d] for d in per_seed])
    return {
        "name": name,
        "meaning": meaning,
        "diff_mean": round(interval.mean, 4),
        "ci95": [round(interval.low, 4), round(interval.high, 4)],
        "holds": interval.holds,
        "replicates": interval.replicates,
        "cases": 0,
        "kind": SEED_LEVEL,
    }


def legacy_comparisons(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed-paired differences of ablation.json written before the protocol (its paired_gain); empty otherwise."""
    if name != "ablation.json":
        return []
    return [
        seed_level(f"{g['method']} - {g['against']}", g["per_seed"], g.get("meaning", ""))
        for g in doc.get("paired_gain", [])
    ]


def comparisons_of(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A file's claims and comparisons (or, before the protocol, its seed-paired differences)."""
    nested = [  # comparisons kept per scenario (federated.json), named with their scenario
        {**c, "name": f"{x['scenario']}: {c['name']}"}
        for x in doc.get("scenarios", [])
        if isinstance(x, dict)
        for c in x.get("comparisons", [])
    ]
    return [*doc.get("claims", []), *doc.get("comparisons", []), *nested] or legacy_comparisons(name, doc)


def comparison_table(doc: dict[str, Any], found: list[dict[str, Any]]) -> list[str]:
    """The file's paired comparisons: difference, 95 % CI, and whether the claim b > a holds."""
    body = [
        [
            f"`{c['name']}`",
            c.get("meaning") or f"claim: holds when the CI lies above {c.get('margin', 0):+.2f}",
            f"{c['diff_mean']:+.4f}",
            f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
            "yes" if c["holds"] else "**no**",
            c["replicates"],
            c["cases"] or "—",
        ]
        for c in found
    ]
    kind = found[0].get("kind") or f"{doc.get('evaluation', 'development')} data, paired by case within replicates"
    lines = ["", f"Paired comparisons, b − a, hierarchical bootstrap 95 % CI ({kind}):", ""]
    return lines + table(["b − a", "what it measures", "mean", "95 % CI", "holds", "replicates", "cases"], body)


def forest_plot(entries: list[tuple[str, dict[str, Any]]], path: Path = FOREST) -> None:
    """Every comparison of every file as a point with its 95 % CI; hollow points are seed-level only."""
    height = 1.0 + 0.38 * len(entries)
    fig, ax = plt.subplots(figsize=(10, height + 0.3))
    for y, (_, c) in enumerate(reversed(entries)):
        low, high = c["ci95"]
        color = "tab:green" if c["holds"] else "tab:gray"
        ax.plot([low, high], [y, y], color=color, linewidth=2)
        face = "white" if c.get("kind") == SEED_LEVEL else color
        ax.plot(c["diff_mean"], y, "o", color=color, markerfacecolor=face, markersize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(entries)), [label for label, _ in reversed(entries)], fontsize=8)
    ax.set_xlabel("b − a (Dice) with 95 % CI\ngreen: holds (CI above 0); hollow point: seed-level only")
    ax.set_title("Paired comparisons in docs/results", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _site_mean_dice(records: list[dict[str, Any]]) -> float | None:
    """Mean over sites of each site's mean whole-lesion Dice (cases without one left out), as federated.py counts."""
    by_site: dict[str, list[float]] = {}
    for r in records:
        value = r["dice"].get(WHOLE)
        by_site.setdefault(r["site"], []).extend([] if value is None else [value])
    means = [sum(v) / len(v) for v in by_site.values() if v]
    return sum(means) / len(means) if means else None


def render_stored_replicate(doc: dict[str, Any]) -> list[str]:
    """A replicate (or sweep run) benchmarks/federated.py stored for the next run (benchmarks/replicate_store.py):
    what it ran under and each arm's mean whole-lesion Dice; federated.json's tables come from these once every
    replicate is stored."""
    key, payload = doc["key"], doc["payload"]
    scored = payload["scored"]
    arms = [scored] if "records" in scored else list(scored.values())
    settings = key["settings"]
    variant = {"lr": "federated U-Harmony's peak lr", "central_lr": "centralized peak lr",
               "federated_lr": "federations' peak lr", "server_momentum": "server momentum"}  # fmt: skip
    extra = "".join(f"; {label} {key[k]:g}" for k, label in variant.items() if k in key)
    out = [
        f"Stored replicate of `{key['scenario']}` ({key['evaluation']} evaluation, training seed "
        f"{key['training_seed']}, test seed {key['test_seed']}; {settings['rounds']} rounds x "
        f"{settings['local_steps']} local steps{extra}), kept for `benchmarks/federated.py` to reuse.",
        "",
    ]
    rows = [[f"`{a['arm']}`", _dice(_site_mean_dice(a["records"])), len(a["records"])] for a in arms]
    return out + table(["arm", "mean Dice over sites", "cases"], rows)


def render_stored_dataset(doc: dict[str, Any]) -> list[str]:
    """A dataset scripts/validate_diagnose.py finished and stored for the next run (diagnose.json gathers them)."""
    key, r = doc["key"], doc["payload"]
    truth = ", ".join(f"{s} {_dice(d)}" for s, d in r["truth"].items())
    return [
        f"Stored dataset `{r['name']}` (`{key['scenario']}`, seed {key['seed']}; truth at {key['full_steps']} steps "
        f"over {key['truth_seeds']} training seed(s)), kept for `scripts/validate_diagnose.py` to reuse. True Dice: "
        f"{truth}. Advised `{r['advised_strategy']}` ({r['advice']}), best `{r['best']}`: regret {r['regret']:.3f}."
    ]


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "adapt_or_harmonize.json": render_adapt_or_harmonize,
    "adapt_or_harmonize_300steps.json": render_adapt_or_harmonize,
    "case_time.json": render_case_time,
    "default_model.json": render_default_model,
    "diagnose.json": render_diagnose,
    "diagnose_300steps.json": render_diagnose,
    "diagnose_confirmation.json": render_diagnose,
    "diagnose_datasets/*.json": render_stored_dataset,
    "federated.json": render_federated,
    "federated_final.json": render_federated,
    "federated_replicates/*.json": render_stored_replicate,
    "gpu_check.json": render_gpu_check,
    "inference.json": render_inference,
    "memory.json": render_memory,
    "reproduce.json": render_reproduce,
    "ablation.json": render_ablation,
}


def build(folder: Path = RESULTS, forest: Path | None = FOREST) -> str:
    """The whole RESULTS.md text; the forest plot of every comparison is drawn to `forest` (None: not drawn)."""
    lines = [
        "# Results",
        "",
        f"Generated by `{COMMAND}` from the JSON files under `docs/results/`; never edit this file by hand.",
    ]
    found = sorted(p for p in folder.rglob("*.json") if p.is_file()) if folder.is_dir() else []
    files = [p for p in found if not p.name.endswith(".cases.json")]
    if not files:
        lines += ["", "No results yet."]
    sections, entries = [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        data = json.loads(path.read_text(encoding="utf-8"))
        render = RENDERERS.get(name) or RENDERERS.get(f"{path.parent.relative_to(folder).as_posix()}/*.json")
        if render is None or not isinstance(data, dict):
            render = render_generic
        section = ["", f"## {name}", "", f"Source: `docs/results/{name}`", "", *render(data)]
        compared = comparisons_of(name, data) if isinstance(data, dict) else []
        if compared:
            section += comparison_table(data, compared)
            entries += [(f"{path.stem}: {c['name']}", c) for c in compared]
        sections += section
    if entries and forest is not None:
        forest_plot(entries, forest)
        lines += ["", f"![Every paired comparison below, with its 95 % CI]({forest.relative_to(TARGET.parent)})"]
    return "\n".join(lines + sections) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> int:
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(TARGET, build())
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
