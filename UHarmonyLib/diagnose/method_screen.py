"""Which harmonization method the trials' harmonized strategies use: the one that leaves the sites looking most alike.

For each candidate the screen fits the method on the screened cases as training fits it
(data/harmonization_fit.py), applies it as the model's input does, re-measures every case's
normal-tissue appearance (features.py, on the original image's head mask: Otsu's threshold of
a z-scored, skull-stripped image is not the head) and takes the residual between-site distance:
the mean over site pairs and channels of compare.py's W1 distance between the sites' barycentres,
in robust sd. "none" (no harmonization) is the reference.

The features are robust z-scores of each image, so a per-image affine method (zscore,
percentile, whitestripe) cannot change them: its residual is none's, taken without fitting
it (at 1 mm the three took about 40 % of the screen's time and equalled none to 4 decimals). Ties (residuals within
`TIE` of none's distance of the smallest) go to the simpler method, in the fixed `CANDIDATES`
order: per-image affine, then landmarks learned from the cases (nyul, then the full reference
histogram of match), then N4's spatial bias field. The smallest residual is always chosen (the
harmonized strategies need a method), but it counts as reducing the appearance distance only
if it is at least `MEANINGFUL` below none's and none's is at least decide.py's appearance
floor: below that floor the sites already look alike and what a method removes is case noise.

Cost: at most `CASES_PER_SITE` cases of each site (the first in dataset order), read once
and held in memory (the trials' training holds every case), then one pass per method.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from UHarmonyLib import image_harmonization
from UHarmonyLib.data.cases import LoadedCase, load_case
from UHarmonyLib.data.harmonization_fit import fit_on_cases
from UHarmonyLib.data.plan import Plan
from UHarmonyLib.diagnose.compare import appearance_pairs
from UHarmonyLib.diagnose.decide import THRESHOLDS
from UHarmonyLib.diagnose.features import CaseFeatures, channel_features
from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization.mask import foreground_mask
from UHarmonyLib.progress import Reporter

NONE = "none"
CANDIDATES = ("zscore", "percentile", "whitestripe", "nyul", "match", "n4")  # simplest first: ties go left
AFFINE = ("zscore", "percentile", "whitestripe")  # per-image affine: the robust-z features cannot change
FALLBACK = "nyul"  # when no two sites share a channel there is no distance to rank by
CASES_PER_SITE = 3  # decide.py's thresholds were calibrated at 3 cases per site
MEANINGFUL = 0.05  # a reduction below 5 % of none's distance is not worth a method
TIE = 0.01  # residuals within 1 % of none's distance of each other are a tie
FLOOR = THRESHOLDS["appearance_distance"]  # robust sd: below it diagnose sees no appearance shift
NO_REDUCTION = "no method reduces the appearance distance"


def screen_cases(plan: Plan, per_site: int = CASES_PER_SITE) -> list[int]:
    """The first `per_site` cases of every site (dataset order), as plan case indices."""
    return sorted(i for site in plan.sites for i in site.cases[:per_site])


Heads = Mapping[int, Mapping[int, np.ndarray]]  # case index -> channel index -> head mask of the image as read


def _features(
    plan: Plan, ids: Sequence[int], loaded: Mapping[int, LoadedCase], heads: Heads, params: Any
) -> list[CaseFeatures]:
    """Each case's per-channel appearance after `params` (None: as read), on the original head masks."""
    out = []
    for i in ids:
        case, images = plan.cases[i], loaded[i].images
        where = f"{plan.datasets[0]['path']}: case {case.entry.case}"
        if params is not None:
            images = image_harmonization.apply_channels(images, params, plan.channels, where)
        features = CaseFeatures(case.entry.case, plan.sites[case.site].name, [], case.label_names)
        lesions = loaded[i].groups_zyx > 0
        for c in loaded[i].present:
            name = f"{where} {plan.channels[c]}"
            features.channels[plan.channels[c]] = channel_features(images[c], lesions, name, heads[i][c])
        out.append(features)
    return out


def site_distance(plan: Plan, cases: list[CaseFeatures]) -> float | None:
    """The mean over site pairs and channels of the barycentres' W1 (None: no two sites share a channel)."""
    pairs = appearance_pairs(cases, [s.name for s in plan.sites], plan.channels)
    return float(np.mean([p.distance for p in pairs])) if pairs else None


def _reason(method: str, chosen: str, ranked: Mapping[str, float], tie: float, failure: str | None) -> str:
    """Why `method` was or was not chosen (its row in summary.json and the report)."""
    if failure is not None:
        return f"did not run on these cases: {failure}"
    if method == NONE:
        return "reference: no harmonization"
    if method == chosen:
        reason = "chosen" if method in ranked else "chosen by default: nothing to rank"
    elif method not in ranked:
        reason = "not ranked"
    elif ranked[method] <= ranked[chosen] + tie:
        reason = f"ties with {chosen}, a simpler method"
    else:
        reason = f"larger residual than {chosen}"
    affine = "; per-image affine: leaves the robust-z features unchanged (not measured)"
    return reason + (affine if method in AFFINE else "")


def choose(residuals: Mapping[str, float | None], failures: Mapping[str, str]) -> dict[str, Any]:
    """The choice, whether it counts as reducing the distance, and a row per method, from the residuals
    (none's included; None: not measurable) and the failed methods' errors."""
    ranked = {m: float(v) for m, v in residuals.items() if v is not None}
    base = ranked.get(NONE)
    ran = [m for m in CANDIDATES if m in ranked]
    if base is None or not ran:
        chosen, reduces, tie = FALLBACK, False, 0.0
        verdict = (
            f"{NO_REDUCTION}: the screen could not rank the methods (no two sites share a channel, or no method "
            f"ran); {FALLBACK} by default"
        )
    else:
        best, tie = min(ranked[m] for m in ran), TIE * base
        chosen = next(m for m in ran if ranked[m] <= best + tie)
        reduction = (base - best) / base if base > 0 else 0.0
        reduces = base >= FLOOR and reduction >= MEANINGFUL
        if reduces:
            verdict = (
                f"{chosen} reduces the between-site appearance distance from {base:.3f} to {best:.3f} robust sd "
                f"({-100 * reduction:+.0f} %)"
            )
        elif base < FLOOR:
            verdict = (
                f"{NO_REDUCTION} meaningfully: without harmonization the sites lie {base:.3f} robust sd apart, "
                f"below diagnose's appearance floor of {FLOOR:g}; {chosen} has the smallest residual"
            )
        else:
            verdict = f"{NO_REDUCTION} by {100 * MEANINGFUL:g} % or more; {chosen} has the smallest residual"
    rows = [
        {
            "method": m,
            "residual": round(ranked[m], 4) if m in ranked else None,
            "reduction": round((base - ranked[m]) / base, 4) + 0.0 if m in ranked and base else None,  # no -0.0
            "chosen": m == chosen,
            "reason": _reason(m, chosen, ranked, tie, failures.get(m)),
        }
        for m in (NONE, *CANDIDATES)
    ]
    return {"chosen": chosen, "reduces": reduces, "verdict": verdict, "methods": rows}


def screen_methods(plan: Plan, reporter: Reporter, per_site: int = CASES_PER_SITE) -> dict[str, Any]:
    """Fit, apply and re-measure every candidate on the screened cases; the choice and its evidence.

    Progress: stage "screen", one step per method (none included), each logged with its residual.
    A method that refuses these cases (InputError, e.g. too few distinct intensities) is not chosen.
    """
    started = time.perf_counter()
    ids = screen_cases(plan, per_site)
    loaded = {i: load_case(plan.cases[i], len(plan.channels)) for i in ids}
    heads = {
        i: {
            c: foreground_mask(loaded[i].images[c], f"{plan.cases[i].entry.case} {plan.channels[c]}")
            for c in case.present
        }
        for i, case in loaded.items()
    }
    residuals: dict[str, float | None] = {}
    failures: dict[str, str] = {}
    methods = (NONE, *CANDIDATES)
    for done, m in enumerate(methods, 1):
        t = time.perf_counter()
        try:
            if m in AFFINE:  # a robust z-score of an affine map of the image is the image's own: none's residual
                residuals[m] = residuals[NONE]
            else:
                params = None if m == NONE else fit_on_cases(m, plan, ids, loaded.__getitem__)
                residuals[m] = site_distance(plan, _features(plan, ids, loaded, heads, params))
        except InputError as e:  # only a method's own refusal: the cases as read were measured by diagnose
            residuals[m], failures[m] = None, str(e)
        value = residuals[m]
        outcome = failures.get(m) or ("not ranked" if value is None else f"residual {value:.3f} robust sd")
        reporter.log(f"screen: {m}: {outcome} ({time.perf_counter() - t:.1f} s)")
        reporter.progress("screen", done, len(methods))
    return {
        **choose(residuals, failures),
        "cases": len(ids),
        "cases_per_site": per_site,
        "meaningful": MEANINGFUL,
        "floor": FLOOR,
        "tie": TIE,
        "seconds": round(time.perf_counter() - started, 2),
    }
