"""The diagnose report's distance plot stays readable with many sites and long site names."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from UHarmonyLib.diagnose.report import distance_figure

CHANNELS = ["T1", "T2", "FLAIR"]


def _boxes(texts: list[Any], renderer: Any) -> list[Any]:
    return [t.get_window_extent(renderer) for t in texts if t.get_text()]


def _overlapping(boxes: list[Any]) -> int:
    return sum(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


@pytest.mark.parametrize("count", [3, 10, 20])
def test_distance_plot_labels_stay_apart(count: int) -> None:
    """Site names (ticks) overlap neither each other nor a neighbouring plot; ratio annotations stay apart."""
    sites = [f"hospital-{i}-siemens-prisma-3t-research" for i in range(count)]
    pairs = [
        {"channel": c, "sites": [a, b], "distance": 0.1 + 0.01 * k, "ratio": 2.5}
        for c in CHANNELS
        for k, (a, b) in enumerate(itertools.combinations(sites, 2))
    ]
    fig = distance_figure(pairs, sites, CHANNELS)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(plots) == len(CHANNELS) and len(fig.axes) == len(CHANNELS) + 1
    for ax in plots:
        xs, ys = _boxes(ax.get_xticklabels(), renderer), _boxes(ax.get_yticklabels(), renderer)
        assert len(xs) == len(ys) == count
        assert _overlapping(xs) == 0 and _overlapping(ys) == 0
        assert _overlapping(_boxes(ax.texts, renderer)) == 0
        others = [a.get_window_extent(renderer) for a in fig.axes if a is not ax]
        assert not any(label.overlaps(other) for label in xs + ys for other in others)
