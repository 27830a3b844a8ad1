"""The diagnosis as one self-contained HTML page (PNG plots inlined as base64) for people."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from UHarmonyLib.diagnose.features import HIST_EDGES, CaseFeatures


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(cols: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=(width * cols, height), squeeze=False)
    return fig, axes[0]


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
    """Per channel: the site-by-site W1 distance between barycentres, annotated with the cross/within ratio."""
    fig, axes = _figure(len(channels), 4.2, 3.8)
    top = max([p["distance"] for p in pairs] + [0.1])
    for ax, channel in zip(axes, channels):
        grid = np.full((len(sites), len(sites)), np.nan)
        np.fill_diagonal(grid, 0.0)
        for p in (p for p in pairs if p["channel"] == channel):
            i, j = sites.index(p["sites"][0]), sites.index(p["sites"][1])
            grid[i, j] = grid[j, i] = p["distance"]
            if p["ratio"] is not None:
                colour = "k" if p["distance"] > top / 2 else "w"
                for a, b in ((i, j), (j, i)):
                    ax.text(b, a, f"{p['ratio']:.1f}x", ha="center", va="center", fontsize=7, color=colour)
        image = ax.imshow(grid, vmin=0.0, vmax=top, cmap="viridis")
        ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(sites)), sites, fontsize=8)
        ax.set_title(f"{channel}: W1 between sites (sd)")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    return _png(fig)


def lesion_plot(cases: list[CaseFeatures], sites: list[str]) -> str:
    """Per site: lesions per case, each lesion's volume and its distance from the head's centre."""
    fig, axes = _figure(3, 4.0, 3.2)
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
        ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    return _png(fig)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(_cell(v) for v in value))
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>" if items else "<p>none</p>"


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
    "th{background:#f0f0f0}.verdict{font-size:1.4em;padding:0.6em;background:#eef6ee;border-left:6px solid #3a3}"
    "img{max-width:100%}"
)


def render_html(summary: dict[str, Any], cases: list[CaseFeatures]) -> str:
    """The whole report: verdict, findings, plots, tables, thresholds and the command."""
    sites, channels = summary["sites_order"], summary["channels"]
    decision = summary["decision"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>uharmony diagnose: "
        f"{html.escape(summary['dataset']['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Domain-shift diagnosis of {html.escape(summary['dataset']['name'])}</h1>",
        f"<p>{len(cases)} cases from {len(sites)} sites; channels {html.escape(', '.join(channels))}.</p>",
        f"<p class='verdict'>Recommendation: <b>{html.escape(decision['recommendation'])}</b></p>",
        f"<p>{html.escape(decision['advice'])}</p>",
        "<h2>Evidence of an appearance shift</h2>",
        _list(decision["appearance_findings"]),
        "<h2>Evidence of a structural shift</h2>",
        _list(decision["structural_findings"]),
    ]
    if summary.get("model"):
        m = summary["model"]
        parts += [
            f"<h2>Model evidence ({html.escape(m['model'])})</h2>",
            f"<p>Gate accuracy on cases of sites the model knows: {_cell(m['gate_accuracy'])}</p>",
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
            [
                [n, s["cases"], s["channels"], s["spacing_mm"], s["labels"], s["snr"], s["bias"], s["lesions_per_case"]]
                for n, s in summary["sites"].items()
            ],
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
        "<h2>Thresholds</h2>",
        _table(["threshold", "value"], [[k, v] for k, v in decision["thresholds"].items()]),
        f"<p>Command: <code>{html.escape(summary['command'])}</code>; {summary['seconds']:.1f} s; "
        f"{html.escape(summary['software'])}. How the evidence is measured: docs/harmonization.md.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
