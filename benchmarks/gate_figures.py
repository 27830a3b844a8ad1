"""How honest the gate is, from scored case records: accuracy, calibration, and the unfamiliar-case flag.

A gate that is right 95 % of the time but says 99.9 % every time misleads the clinician who reads its
probabilities, so calibration is reported beside accuracy (expected calibration error over confidence bins).
The unfamiliar flag is a distance threshold; it is set on held-out development cases of the known sites to a
declared false-positive rate, never on training cases (which sit closer to the bank than any new case), and is
judged by AUROC of unseen against seen cases, which needs no threshold, and by risk-coverage: the Dice of the
cases that are kept when the flagged ones are set aside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined

Record = dict[str, Any]


def accuracy(records: Sequence[Record]) -> float:
    """Share of cases whose gate chose their true site."""
    return round(float(np.mean([r["chosen"] == r["site"] for r in records])), 4)


def expected_calibration_error(records: Sequence[Record], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the cases in each."""
    confidence = np.array([max(r["probabilities"].values()) for r in records])
    correct = np.array([r["chosen"] == r["site"] for r in records], dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return round(float(error), 4)


def threshold_at(distances: Sequence[float], false_positive_rate: float) -> float:
    """The distance above which only `false_positive_rate` of known-site cases fall."""
    if not 0 < false_positive_rate < 1:
        raise ValueError(f"false-positive rate must lie between 0 and 1, not {false_positive_rate}")
    return float(np.quantile(np.asarray(distances, dtype=float), 1 - false_positive_rate, method="higher"))


def auroc(seen: Sequence[float], unseen: Sequence[float]) -> float:
    """Area under the ROC curve of distance as a score for 'unseen' (0.5: no better than chance)."""
    scores = torch.tensor([*seen, *unseen], dtype=torch.float64)
    truth = torch.tensor([0] * len(seen) + [1] * len(unseen))
    return round(float(np.asarray(compute_roc_auc(scores, truth))), 4)


def dice(records: Sequence[Record]) -> float | None:
    return mean_defined([r["dice"][WHOLE] for r in records])


def flag_figures(seen: Sequence[Record], unseen: Sequence[Record], threshold: float) -> dict[str, float | None]:
    """One rung against the seen cases: AUROC, who is flagged, and Dice before and after setting flagged cases
    aside (risk-coverage, over seen and unseen cases together)."""
    pooled = [*seen, *unseen]
    kept = [r for r in pooled if r["distance"] <= threshold]
    return {
        "auroc": auroc([r["distance"] for r in seen], [r["distance"] for r in unseen]),
        "flagged_unseen": round(float(np.mean([r["distance"] > threshold for r in unseen])), 4),
        "flagged_seen": round(float(np.mean([r["distance"] > threshold for r in seen])), 4),
        "dice_unseen": dice(unseen),
        "coverage": round(len(kept) / len(pooled), 4),
        "dice_all": dice(pooled),
        "dice_kept": dice(kept) if kept else None,
    }
