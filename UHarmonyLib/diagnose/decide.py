"""From evidence to a recommendation, with explicit thresholds (docs/harmonization.md).

Appearance shift (harmonize the data) when, for some channel and site pair, cases of
the two sites differ at least `appearance_ratio` times more than cases of one site do
AND the sites' barycentres lie at least `appearance_distance` robust sd apart (the
floor keeps a tiny but consistent difference from counting), or when their median
signal-to-noise ratios differ at least `snr_fold` times.

Structural shift (personalize the model) when the sites annotate different label sets,
or when a site test (lesion count, size, depth, location) has a permutation p-value at
most `structure_p` (0.01 over the four tests, Bonferroni) AND the sites explain at least
`structure_eta2` of the feature's variance (an effect worth a site-specific model).

A site with fewer than `MIN_CASES_PER_SITE` cases does not change the recommendation but
adds a caution to it: absence of evidence from one or two cases is not evidence of absence.

Calibrated on the generator's scenarios at 4 mm, 3 cases per site, seeds 0-2 (none and
structural: largest ratio 1.5, SNR fold 1.3, smallest p 0.024; appearance and mixed:
ratio >= 2.8, SNR fold >= 3.2; structural: p 0.0005 with eta² >= 0.59). These screens
describe what differs; whether to adapt is advised by the outcome trials (trials.py), whose
regret scripts/validate_diagnose.py measures.
"""

from __future__ import annotations

from typing import Any

from UHarmonyLib.diagnose.compare import PairAppearance, SiteTest

THRESHOLDS: dict[str, float] = {
    "appearance_ratio": 2.0,
    "appearance_distance": 0.05,
    "snr_fold": 2.0,
    "structure_p": 0.0025,
    "structure_eta2": 0.2,
}
MIN_CASES_PER_SITE = 3  # the thresholds were calibrated at 3 cases per site; fewer leave the tests little power
RECOMMENDATIONS = {
    (False, False): "neither needed",
    (True, False): "harmonize data",
    (False, True): "personalize the model",
    (True, True): "both",
}
ADVICE = {
    "neither needed": "The sites look alike in appearance and in lesion structure: plain joint training is enough.",
    "harmonize data": "The sites differ in how their images look, not in what they show: harmonize the images "
    "(`uharmony train --harmonize nyul`, or `uharmony harmonize`) before training.",
    "personalize the model": "The sites differ in lesions or annotation, not in how the images look: keep "
    "site-specific parameters (U-Harmony's harmony layers and gated heads; `uharmony add-site` for a new site).",
    "both": "The sites differ in appearance and in structure: harmonize the images and keep site-specific "
    "parameters (`uharmony train --harmonize nyul` with the default U-Harmony model).",
}


def appearance_findings(pairs: list[PairAppearance]) -> list[str]:
    """Plain-words reasons for an appearance shift (empty when there is none)."""
    t = THRESHOLDS
    out = []
    for p in pairs:
        a, b = p.sites
        if p.ratio is not None and p.ratio >= t["appearance_ratio"] and p.distance >= t["appearance_distance"]:
            out.append(
                f"{p.channel}: {a} vs {b} normal-tissue intensities differ {p.ratio:.1f}x more than within a site "
                f"(W1 {p.distance:.2f} sd; thresholds {t['appearance_ratio']:g}x and {t['appearance_distance']:g} sd)"
            )
        if p.snr_ratio is not None and p.snr_ratio >= t["snr_fold"]:
            out.append(f"{p.channel}: {a} vs {b} signal-to-noise differs {p.snr_ratio:.1f}-fold (>= {t['snr_fold']:g})")
    return out


def structure_findings(tests: list[SiteTest], label_sets: dict[str, list[str]]) -> list[str]:
    """Plain-words reasons for a structural shift (empty when there is none)."""
    t = THRESHOLDS
    out = []
    distinct = {tuple(v) for v in label_sets.values()}
    if len(distinct) > 1:
        sets = "; ".join(f"{s}: {', '.join(v)}" for s, v in label_sets.items())
        out.append(f"the sites annotate different label sets ({sets})")
    for test in tests:
        if test.p is not None and test.p <= t["structure_p"] and (test.eta2 or 0) >= t["structure_eta2"]:
            out.append(
                f"{test.feature} differs between sites (permutation p {test.p:.4f} <= {t['structure_p']:g}; "
                f"sites explain {test.eta2:.0%} of its variance >= {t['structure_eta2']:.0%})"
            )
    return out


def sample_cautions(cases_per_site: dict[str, int]) -> list[str]:
    """A warning naming the sites with fewer cases than the thresholds were calibrated on (empty when none).

    With one case a site has no within-site spread to compare against, and with few cases
    the permutation tests cannot reach their p threshold: "no finding" then may only mean
    "too few cases to tell".
    """
    few = {s: n for s, n in cases_per_site.items() if n < MIN_CASES_PER_SITE}
    if not few:
        return []
    listed = ", ".join(f"{s} ({n} case{'' if n == 1 else 's'})" for s, n in few.items())
    return [
        f"few cases: {listed}; the thresholds assume at least {MIN_CASES_PER_SITE} cases per site, so with fewer "
        "a shift can go undetected: treat the recommendation as provisional and add cases"
    ]


def recommend(appearance: list[str], structure: list[str], cautions: list[str]) -> dict[str, Any]:
    """The recommendation, the findings that drove it, and cautions about how far it can be trusted."""
    choice = RECOMMENDATIONS[(bool(appearance), bool(structure))]
    return {
        "recommendation": choice,
        "advice": ADVICE[choice],
        "appearance_shift": bool(appearance),
        "structural_shift": bool(structure),
        "appearance_findings": appearance,
        "structural_findings": structure,
        "cautions": cautions,
        "thresholds": {**THRESHOLDS, "min_cases_per_site": MIN_CASES_PER_SITE},
    }


# What a diagnosis partly from other sites' summaries (--peer-summaries) can and cannot see: a summary holds
# per-case features, never images and labels, so the screens run but the outcome trials cannot.
CAN_TELL = [
    "appearance shifts: how the sites' normal-tissue intensity distributions differ beyond gain and offset "
    "(contrast between tissues, gamma, blur), their signal-to-noise ratios and bias fields",
    "lesion-statistic shifts: lesions per case, lesion size, depth and location, and the label sets the sites annotate",
]
CANNOT_TELL = [
    "what harmonizing or personalizing would gain: the outcome trials (--trials) train and score on every site's "
    "images and labels in one place, and a summary holds neither (`uharmony federated` trains across sites instead)",
    "whether the relation between image and label differs between sites (annotation style, or a protocol contrast "
    "that intensity normalization cannot undo), which is what decides whether site-specific parameters are needed",
]
PEER_CAUTION = (
    "some sites are known only from their summaries: the advice is the threshold screen's and provisional, since "
    "whether the image-to-label relation differs between sites, which decides whether site-specific parameters are "
    "needed, cannot be seen without their images and labels"
)


def from_summaries(decision: dict[str, Any]) -> dict[str, Any]:
    """The decision, marked provisional, with what summaries can and cannot tell as structured data."""
    return {
        **decision,
        "provisional": True,
        "can_tell": CAN_TELL,
        "cannot_tell": CANNOT_TELL,
        "cautions": [*decision["cautions"], PEER_CAUTION],
    }
