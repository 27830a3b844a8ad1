"""The signature bank: per-site gate vectors: the gate's memory of every site, without images.

A bundle keeps the scanner signature of every training window (`gate_bank.safetensors`:
vectors, their site and foreground weight). It serves two purposes. A softmax gate is
confidently wrong off its training distribution, so familiarity is judged by distance
instead: a case whose signature lies far from every site's vectors is flagged
unfamiliar. And `add-site` retrains the gate on these vectors plus the new site's, so
old sites stay recognized although their images are gone.

Distances live in the gate's own standardized feature space: per site, a weighted mean
and spread of its windows; a case's distance to a site is the root-mean-square z-score
of its foreground-weighted mean signature. The familiarity threshold is calibrated on
the training cases themselves, each measured against its site with its own windows
left out, so it reflects how far a new case of a known site may honestly fall.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from UHarmonyLib.errors import BundleError
from UHarmonyLib.nn.gate_network import DomainGate

SPREAD_FLOOR = 0.25  # in standardized units: a feature constant within a site still tolerates small shifts
THRESHOLD_MARGIN = 1.25  # above the largest leave-one-case-out distance of the training cases


@dataclass
class SignatureBank:
    """Gate-input vectors of training windows, with their site, case and foreground weight."""

    vectors: torch.Tensor  # (N, F) raw scanner signatures
    sites: torch.Tensor  # (N,) site index
    cases: torch.Tensor  # (N,) case index (for leave-one-case-out calibration)
    weights: torch.Tensor  # (N,) foreground fraction of the window
    threshold: float = float("inf")  # a case is familiar when its distance is at most this

    @property
    def num_sites(self) -> int:
        return int(self.sites.max()) + 1 if len(self.sites) else 0

    def site_stats(self, gate: DomainGate, exclude_case: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-site weighted mean and spread of standardized vectors: (S, F) each; NaN for an empty site."""
        z = standardize(gate, self.vectors)
        w = self.weights.double().numpy() + 1e-3
        sites, cases = self.sites.numpy(), self.cases.numpy()
        mean = np.full((self.num_sites, z.shape[1]), np.nan)
        spread = np.full_like(mean, np.nan)
        for s in range(self.num_sites):
            keep = (sites == s) & (cases != (-1 if exclude_case is None else exclude_case))
            if not keep.any():
                continue
            ws = w[keep] / w[keep].sum()
            mean[s] = ws @ z[keep]
            spread[s] = np.sqrt(ws @ (z[keep] - mean[s]) ** 2)
        return mean, np.maximum(spread, SPREAD_FLOOR)

    def distances(self, gate: DomainGate, case_vector: np.ndarray) -> np.ndarray:
        """RMS z-distance of one case's mean signature to every site: (S,)."""
        mean, spread = self.site_stats(gate)
        return _rms(standardize(gate, torch.as_tensor(case_vector)[None])[0], mean, spread)

    def calibrate(self, gate: DomainGate) -> float:
        """Set the threshold from the training cases' leave-one-case-out distances to their own site."""
        w = self.weights.double().numpy() + 1e-3
        z = standardize(gate, self.vectors)
        found = []
        for c in np.unique(self.cases.numpy()):
            rows = self.cases.numpy() == c
            site = int(self.sites.numpy()[rows][0])
            mean, spread = self.site_stats(gate, exclude_case=int(c))
            if np.isnan(mean[site]).any():
                continue  # the site's only case: nothing to compare with
            case = (w[rows] / w[rows].sum()) @ z[rows]
            found.append(_rms(case, mean, spread)[site])
        self.threshold = float(max(found) * THRESHOLD_MARGIN) if found else float("inf")
        return self.threshold

    def extended(self, other: SignatureBank) -> SignatureBank:
        """This bank plus another one's vectors (whose sites and cases are numbered after ours)."""
        offset_case = int(self.cases.max()) + 1 if len(self.cases) else 0
        return SignatureBank(
            torch.cat([self.vectors, other.vectors]),
            torch.cat([self.sites, other.sites]),
            torch.cat([self.cases, other.cases + offset_case]),
            torch.cat([self.weights, other.weights]),
            self.threshold,
        )

    def save(self, path: Path) -> None:
        tensors = {
            "vectors": self.vectors.float().contiguous(),
            "sites": self.sites.long().contiguous(),
            "cases": self.cases.long().contiguous(),
            "weights": self.weights.float().contiguous(),
        }
        save_file(tensors, str(path))


def load_bank(path: Path, width: int, threshold: float) -> SignatureBank:
    """Read a bundle's bank (its threshold lives in the model card); refuse one that does not fit the gate."""
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable gate bank ({e})") from e
    need = {"vectors", "sites", "cases", "weights"}
    if set(t) != need or t["vectors"].ndim != 2 or t["vectors"].shape[1] != width:
        raise BundleError(f"{path}: gate bank does not fit the gate ({width} features expected)")
    return SignatureBank(t["vectors"], t["sites"], t["cases"], t["weights"], threshold)


def standardize(gate: DomainGate, vectors: torch.Tensor) -> np.ndarray:
    mean, std = gate.feature_mean.double().cpu(), gate.feature_std.double().cpu()
    return ((vectors.double().cpu() - mean) / std).numpy()


def _rms(case: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.mean(((case[None] - mean) / spread) ** 2, axis=1))
    return np.where(np.isnan(d), np.inf, d)


def case_vector(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A case's signature: its windows' vectors weighted by foreground, as the gate's probabilities are."""
    w = np.asarray(weights, dtype=float) + 1e-3
    return (np.asarray(vectors, dtype=float) * w[:, None]).sum(0) / w.sum()
