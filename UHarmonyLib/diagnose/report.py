"""The diagnosis as one self-contained HTML page (PNG plots inlined as base64) for people."""

from __future__ import annotations

import base64
import html
import io
import textwrap
from typing import Any

import numpy as np

from UHarmonyLib.diagnose.compare import PERMUTATIONS
from UHarmonyLib.diagnose.features import HIST_EDGES, LESION_MARGIN_MM, CaseFeatures


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(cols: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, Any]:
    """One row of plots; constrained layout keeps tick labels clear of the neighbouring plot and colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=(width * cols, height), squeeze=False, layout="constrained")
    return fig, axes[0]


WRAP = 12  # characters per line of a site name on a plot axis
CELL_INCHES = 0.45  # room per site along a site axis, so many sites do not crowd their labels


def _tick_font(sites: list[str]) -> float:
    """Points: 8 for a few sites, down to 5 for many."""
    return max(5.0, min(8.0, 48.0 / len(sites)))


def _site_names(sites: list[str]) -> list[str]:
    """Site names wrapped (at hyphens where possible) so long names stack instead of running into each other."""
    return [textwrap.fill(s, WRAP) for s in sites]


def _site_axis(ax: Any, sites: list[str], y: bool = False) -> None:
    """Site names as x tick labels (vertical, wrapped, sized to the site count), and as y tick labels if `y`."""
    names, size = _site_names(sites), _tick_font(sites)
    ax.set_xticks(range(len(sites)), names, rotation=90, fontsize=size)
    if y:
        ax.set_yticks(range(len(sites)), names, fontsize=size)


def histogram_plot(cases: list[CaseFeatures], sites: list[str], channels: list[str]) -> str:
    """Per channel: each site's mean normal-tissue histogram after the per-image robust z-score."""
    fig, axes = _figure(len(channels))
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    for ax, channel in zip(axes, channels):
        for site in sites:
            hists = [c.channels[channel].histogram for c in cases if c.site == site and channel in c.channels]
            if hists:
                ax.plot(centres, np.mean(hists, axis=0), label=site)
        ax.set_title(f"{channel}: normal tissue")
        ax.set_xlabel("robust z (median 0, IQR/1.349 = 1)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    return _png(fig)


def distance_plot(pairs: list[dict[str, Any]], sites: list[str], channels: list[str]) -> str:
    """The distance figure as a base64 PNG."""
    return _png(distance_figure(pairs, sites, channels))


def distance_figure(pairs: list[dict[str, Any]], sites: list[str], channels: list[str]) -> Any:
    """Per channel: the site-by-site W1 distance between barycentres, annotated with the cross/within ratio.

    Each site gets room on both axes, so labels stay readable however many sites there are.
    """
    side = max(3.0, CELL_INCHES * len(sites))
    fig, axes = _figure(len(channels), side + 1.2, side + 1.2)
    top = max([p["distance"] for p in pairs] + [0.1])
    ratio_font = min(7.0, _tick_font(sites))
    for ax, channel in zip(axes, channels):
        grid = np.full((len(sites), len(sites)), np.nan)
        np.fill_diagonal(grid, 0.0)
        for p in (p for p in pairs if p["channel"] == channel):
            i, j = sites.index(p["sites"][0]), sites.index(p["sites"][1])
            grid[i, j] = grid[j, i] = p["distance"]
            if p["ratio"] is not None:
                colour = "k" if p["distance"] > top / 2 else "w"
                for a, b in ((i, j), (j, i)):
                    ax.text(b, a, f"{p['ratio']:.1f}x", ha="center", va="center", fontsize=ratio_font, color=colour)
        image = ax.imshow(grid, vmin=0.0, vmax=top, cmap="viridis")
        _site_axis(ax, sites, y=True)
        ax.set_title(f"{channel}: W1 between sites (sd)")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    return fig


def lesion_plot(cases: list[CaseFeatures], sites: list[str]) -> str:
    """Per site: lesions per case, each lesion's volume and its distance from the head's centre."""
    fig, axes = _figure(3, max(4.0, CELL_INCHES * len(sites) + 1.0), 3.2)
    columns = [
        ("lesions per case", lambda s: [c.lesion_count for c in cases if c.site == s], False),
        ("lesion volume (ml)", lambda s: [les["ml"] for c in cases if c.site == s for les in c.lesions], True),
        (
            "distance from head centre (mm)",
            lambda s: [float(np.linalg.norm(les["centre_mm"])) for c in cases if c.site == s for les in c.lesions],
            False,
        ),
    ]
    rng = np.random.default_rng(0)
    for ax, (title, values, log) in zip(axes, columns):
        for i, site in enumerate(sites):
            v = values(site)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=12, alpha=0.7)
            if v:
                ax.hlines(np.median(v), i - 0.3, i + 0.3, color="k")
        _site_axis(ax, sites)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    return _png(fig)


def trial_dice_plot(trials: dict[str, Any], sites: list[str]) -> str:
    """Per site: each strategy's mean whole-lesion Dice on held-out cases (side by side, one colour each)."""
    fig, axes = _figure(1, max(4.5, 1.6 * CELL_INCHES * len(sites) + 1.5), 3.4)
    ax, means = axes[0], trials["site_means"]
    width = 0.8 / len(means)
    for k, (strategy, figures) in enumerate(means.items()):
        values = [np.nan if figures["sites"][s] is None else figures["sites"][s] for s in sites]
        ax.bar(np.arange(len(sites)) + (k - (len(means) - 1) / 2) * width, values, width, label=strategy)
    _site_axis(ax, sites)
    ax.set_ylabel("whole-lesion Dice (held out)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=len(means))
    return _png(fig)


def forest_plot(comparisons: list[dict[str, Any]], margin: float) -> str:
    """Each strategy minus plain: mean paired Dice difference with its 95 % CI, beside 0 and the margin."""
    shown = [c for c in comparisons if c["mean"] is not None]
    fig, axes = _figure(1, 5.5, 0.5 * len(shown) + 1.2)
    ax = axes[0]
    for y, c in enumerate(shown):
        ax.errorbar(c["mean"], y, xerr=[[c["mean"] - c["low"]], [c["high"] - c["mean"]]], fmt="o", capsize=4)
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.axvline(margin, color="#3a3", linestyle="--", linewidth=0.8, label=f"margin {margin:g}")
    ax.set_yticks(range(len(shown)), [c["name"] for c in shown])
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlabel("whole-lesion Dice difference (95 % CI)")
    ax.legend(fontsize=7)
    return _png(fig)


TRIALS_METHOD = (
    "Each strategy is trained briefly, as `uharmony train` would train it, on part of every site's cases and "
    "scored (whole-lesion Dice, site given, no test-time mirroring) on the rest, which it never saw: per seed, "
    "each site's cases are dealt into folds and every fold is held out once. Strategies are paired case by case "
    "within a seed; the interval of each difference over plain training is a hierarchical bootstrap (seeds, then "
    "cases). A strategy is advised when its interval's lower bound clears the margin (the highest mean among "
    "those); plain training is enough when every upper bound stays below it; anything else is inconclusive. "
    "Short training favours what learns fastest: the trials rank the strategies at this budget, not at "
    "convergence."
)


SCREEN_METHOD = (
    "Each method is fitted on the screened cases as training fits it, applied, and every case's normal-tissue "
    "appearance is measured again on the original head mask; the residual is the mean over site pairs and "
    "channels of the W1 distance between the sites' mean quantile functions (robust sd). The features are robust "
    "z-scores of each image, so per-image affine methods (zscore, percentile, whitestripe) leave them unchanged: "
    "their residual is that of no harmonization. Ties ({tie:g} % of no harmonization's distance) go to the simpler "
    "method, in the table's order; the chosen method reduces the distance only if it is at least {meaningful:g} % "
    "below no harmonization's and that is at least {floor:g} robust sd (below it diagnose sees no appearance shift)."
)


def screen_html(screen: dict[str, Any]) -> list[str]:
    """The harmonization screen: verdict, one row per method (the chosen one marked) and how it was measured."""
    rows = [
        [
            m["method"],
            m["residual"],
            None if m["reduction"] is None else f"{100 * m['reduction']:+.0f} %",
            m["chosen"],
            m["reason"],
        ]
        for m in screen["methods"]
    ]
    method = SCREEN_METHOD.format(tie=100 * screen["tie"], meaningful=100 * screen["meaningful"], floor=screen["floor"])
    return [
        "<h3>Harmonization methods screened</h3>",
        f"<p>{html.escape(screen['verdict'])} ({screen['cases']} cases, at most {screen['cases_per_site']} per "
        f"site, {screen['seconds']:.0f} s).</p>",
        _table(["method", "residual distance (robust sd)", "reduction vs none", "chosen", "reason"], rows),
        f"<p>{html.escape(method)}</p>",
    ]


def trials_html(trials: dict[str, Any], sites: list[str]) -> list[str]:
    """The outcome trials: advice, reason, per-site Dice (table and plot), the CI forest plot and the design."""
    budget, drivers = trials["budget"], trials["drivers"]
    strategies = list(trials["site_means"])
    method = trials["harmonize_method"]
    parts = [
        "<h2>Outcome trials</h2>",
        f"<p class='verdict'>Measured advice: <b>{html.escape(trials['advice'])}</b></p>",
        f"<p>{html.escape(trials['reason'])}.</p>",
        f"<p>{budget['trials']} trials ({len(strategies)} strategies × {len(trials['seeds'])} seeds × "
        f"{trials['folds']} folds) of {trials['steps']} steps; {budget['seconds_per_step']:.3g} s per step and "
        f"{budget['fixed_seconds_per_trial']:.3g} s per trial measured; budget {budget['minutes']:g} min, "
        f"took {trials['seconds'] / 60:.1f} min. Harmonization: {html.escape(method['method'])} "
        f"({html.escape(method['chosen_by'])}).</p>",
    ]
    learning = trials.get("learning")
    if learning is not None and learning["mean"] is not None:
        verdict = "still learning: the order may change" if learning["still_learning"] else "settled enough"
        parts.append(
            f"<p>Learning check (the trials ran fewer steps than the {budget['max_steps']} the advice is for): plain "
            f"training's held-out Dice from {learning['half_steps']} to {learning['steps']} steps "
            f"{learning['mean']:+.3f} (95 % CI {learning['low']:+.3f} to {learning['high']:+.3f}), {verdict}; "
            f"about {budget['full_length_minutes']:g} min buy trials of full length.</p>"
        )
    if method["screen"] is not None:
        parts += screen_html(method["screen"])
    if drivers["sites"]:
        parts += [
            f"<h3>Which sites drive the difference ({html.escape(drivers['strategy'])} - plain)</h3>",
            _table(["site", "mean Dice difference"], [[s, d] for s, d in drivers["sites"].items()]),
        ]
    parts += [
        "<h3>Whole-lesion Dice per site and strategy (held-out cases)</h3>",
        _table(
            ["site", *strategies],
            [[s, *(trials["site_means"][k]["sites"][s] for k in strategies)] for s in sites]
            + [["mean over sites", *(trials["site_means"][k]["mean"] for k in strategies)]],
        ),
        f"<img alt='trial Dice' src='data:image/png;base64,{trial_dice_plot(trials, sites)}'>",
        "<h3>Each strategy minus plain training</h3>",
        _table(
            ["comparison", "mean", "95 % CI low", "95 % CI high", "paired cases", "seeds"],
            [[c["name"], c["mean"], c["low"], c["high"], c["cases"], c["replicates"]] for c in trials["comparisons"]],
        ),
        f"<img alt='forest' src='data:image/png;base64,{forest_plot(trials['comparisons'], trials['margin'])}'>",
        f"<p>{html.escape(TRIALS_METHOD)}</p>",
    ]
    return parts


def _text(value: Any) -> str:
    """A table value for people: numbers to 3 figures, lists joined, a per-channel dict as 'T1 41.2, T2 38.5'."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _voxels(spacings: list[list[float]]) -> str:
    """Voxel sizes as '1×1×3; 2×2×4' (one entry per distinct grid), not a flat list of numbers."""
    return "; ".join("×".join(_text(float(v)) for v in spacing) for spacing in spacings)


def _site_row(name: str, site: dict[str, Any]) -> list[Any]:
    """One row of the Sites table (its header lists the columns)."""
    return [
        name,
        site["cases"],
        site["channels"],
        _voxels(site["spacing_mm"]),
        site["labels"],
        site["snr"],
        site["bias"],
        site["lesions_per_case"],
    ]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>" if items else "<p>none</p>"


# the method in a few sentences: the page is opened away from the repository, so it explains itself
METHOD = [
    "Appearance is measured per case and channel on normal tissue only (the head minus the annotated lesions "
    f"dilated by {LESION_MARGIN_MM:g} mm), after a robust z-score per image, so gain and offset, which every "
    "model's input normalization removes anyway, do not count, and more or larger lesions do not look like "
    "another scanner.",
    "W1 is the Wasserstein distance between two intensity distributions (the mean absolute difference of their "
    "quantile functions, in robust sd). 'cross/within' divides the mean W1 between cases of two sites by the mean "
    "W1 between cases of one site: about 1 when the sites are exchangeable. SNR is (median tissue - median "
    "background) / background sd; a fold is the larger site median over the smaller.",
    f"Structure: permutation tests (F ratio, {PERMUTATIONS} permutations) of lesions per case and of each lesion's log "
    "volume, depth and 3-D position relative to the head's centre; eta² is the share of the feature's variance "
    "the sites explain. Lesions are permuted as if independent, so p-values are approximate.",
    "A shift is declared when a figure passes the thresholds below; with a model, each case is segmented with the "
    "gate choosing the site and with the site given, and the results inform the notes, not the recommendation.",
]
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
    "th{background:#f0f0f0}.verdict{font-size:1.4em;padding:0.6em;background:#eef6ee;border-left:6px solid #3a3}"
    "img{max-width:100%}.caution{padding:0.5em;background:#fff4e0;border-left:6px solid #e90}"
)


def _peer_note(summary: dict[str, Any]) -> str:
    """'; sites A, B from their summaries' when some sites are known only from summaries."""
    peers = summary.get("peers")
    return f"; {html.escape(', '.join(p['site'] for p in peers))} from their site summaries" if peers else ""


def scope_html(summary: dict[str, Any]) -> list[str]:
    """What a diagnosis from site summaries can and cannot tell, and which summaries it read."""
    decision = summary["decision"]
    return [
        "<h2>What site summaries can and cannot tell</h2>",
        "<p>Some sites are known only from their summaries: per-case features, never their images or label maps. The "
        "recommendation above is the threshold screen's and provisional.</p>",
        "<h3>Can tell</h3>",
        _list(decision["can_tell"]),
        "<h3>Cannot tell</h3>",
        _list(decision["cannot_tell"]),
        _table(
            ["site", "cases", "summary file", "sha256", "written by"],
            [[p["site"], p["cases"], p["file"], p["sha256"][:16], p["software"]] for p in summary["peers"]],
        ),
    ]


def render_html(summary: dict[str, Any], cases: list[CaseFeatures]) -> str:
    """The whole report: verdict, findings, plots, tables, thresholds and the command."""
    sites, channels = summary["sites_order"], summary["channels"]
    decision = summary["decision"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>uharmony diagnose: "
        f"{html.escape(summary['dataset']['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Domain-shift diagnosis of {html.escape(summary['dataset']['name'])}</h1>",
        f"<p>{len(cases)} cases from {len(sites)} sites; channels {html.escape(', '.join(channels))}"
        f"{_peer_note(summary)}.</p>",
        f"<p class='verdict'>Recommendation: <b>{html.escape(decision['recommendation'])}</b></p>",
        *(f"<p class='caution'>Caution: {html.escape(c)}</p>" for c in decision["cautions"]),
        f"<p>{html.escape(decision['advice'])}</p>",
        *(scope_html(summary) if summary.get("peers") else []),
        "<h2>Evidence of an appearance shift</h2>",
        _list(decision["appearance_findings"]),
        "<h2>Evidence of a structural shift</h2>",
        _list(decision["structural_findings"]),
    ]
    if summary.get("trials"):
        parts += trials_html(summary["trials"], sites)
    if summary.get("model"):
        m = summary["model"]
        parts += [
            f"<h2>Model evidence ({html.escape(m['model'])})</h2>",
            f"<p>Gate accuracy on cases of sites the model knows: {html.escape(_text(m['gate_accuracy']))}</p>",
            _table(
                ["site", "known", "cases", "gate accuracy", "Dice gated", "Dice given"],
                [
                    [n, s["known_to_model"], s["cases"], s["gate_accuracy"], s["dice_gated"], s["dice_given"]]
                    for n, s in m["sites"].items()
                ],
            ),
            _list(m["notes"]),
        ]
    parts += [
        "<h2>Normal-tissue intensity histograms per site</h2>",
        f"<img alt='histograms' src='data:image/png;base64,{histogram_plot(cases, sites, channels)}'>",
        "<h2>Site-to-site appearance distance</h2>",
        "<p>Colour: W1 between the sites' mean quantile functions (robust sd); text: how many times more cases "
        "of the two sites differ than cases of one site.</p>",
        f"<img alt='distances' src='data:image/png;base64,{distance_plot(summary['pairs'], sites, channels)}'>",
        "<h2>Lesion statistics</h2>",
        f"<img alt='lesions' src='data:image/png;base64,{lesion_plot(cases, sites)}'>",
        "<h2>Sites</h2>",
        _table(
            ["site", "cases", "channels", "voxel (mm)", "labels", "median SNR", "median bias sd", "lesions/case"],
            [_site_row(n, s) for n, s in summary["sites"].items()],
        ),
        "<h2>Site pairs (appearance)</h2>",
        _table(
            ["channel", "sites", "W1 (sd)", "cross/within", "SNR fold", "bias fold"],
            [
                [p["channel"], p["sites"], p["distance"], p["ratio"], p["snr_ratio"], p["bias_ratio"]]
                for p in summary["pairs"]
            ],
        ),
        "<h2>Site tests (structure)</h2>",
        _table(
            ["feature", "permuted", "samples", "F", "p", "eta²"],
            [[t["feature"], t["unit"], t["samples"], t["f"], t["p"], t["eta2"]] for t in summary["structure_tests"]],
        ),
        "<h2>How the evidence is measured</h2>",
        *(f"<p>{html.escape(text)}</p>" for text in METHOD),
        "<h2>Thresholds</h2>",
        _table(["threshold", "value"], [[k, v] for k, v in decision["thresholds"].items()]),
        f"<p>Command: <code>{html.escape(summary['command'])}</code>; {summary['seconds']:.1f} s; "
        f"{html.escape(summary['software'])}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
