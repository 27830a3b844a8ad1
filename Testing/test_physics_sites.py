"""MR-physics sites: a site cannot be told by its channel set or its background, yet its tissue contrast differs.

The classifier is the same leave-one-out nearest-centroid rule for every feature set, so a
feature set that identifies sites (the positive controls) and one that cannot are judged alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from math import comb
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from UHarmonyLib.data.datasets import case_rng, read_dataset
from UHarmonyLib.data.mr_physics import (
    PHYSICS_CHANNELS,
    Physics,
    Sequence,
    nominal_signals,
    signal,
    truncate_kspace,
)
from UHarmonyLib.data.physics_case import TISSUE_VALUES, make_physics_case
from UHarmonyLib.data.scenarios import SCENARIOS
from UHarmonyLib.data.spec import parse_spec, resolve_scenario, site_to_json
from UHarmonyLib.data.spec_checks import Where
from UHarmonyLib.data.template import load_template
from UHarmonyLib.errors import InputError

SPACING = 4.0  # mm: fast, and coarse enough that every feature below is still defined
CASES = 3  # per site


def _synth(tmp_path: Path, scenario: str) -> Path:
    out = tmp_path / scenario
    run = subprocess.run(
        [sys.executable, "-m", "UHarmonyLib", "synth", "--scenario", scenario, "--out", str(out),
         "--cases-per-site", str(CASES), "--spacing", str(SPACING), "--seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def protocols(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(tmp_path_factory.mktemp("physics"), "protocols")


def _arrays(entry_images: list[Path]) -> list[np.ndarray]:
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in entry_images]


def _loo_nearest_centroid(features: np.ndarray, sites: list[str]) -> float:
    """Leave-one-out accuracy of the nearest (z-scored) class centroid; ties go to the first site."""
    x = np.asarray(features, float)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    names = sorted(set(sites))
    y = np.array([names.index(s) for s in sites])
    right = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        centroids = np.stack([x[keep & (y == k)].mean(0) for k in range(len(names))])
        right += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == y[i])
    return right / len(y)


def _chance_bound(n: int, classes: int, alpha: float = 0.05) -> float:
    """The smallest accuracy a guesser reaches with probability < alpha (one-sided binomial)."""
    p = 1.0 / classes
    for k in range(n + 1):
        tail = sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
        if tail < alpha:
            return k / n
    return 1.0


def _features(folder: Path, channels: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per case: which channels are non-zero, border-slab statistics, and in-brain contrast shape."""
    presence, background, contrast, sites = [], [], [], []
    for entry in read_dataset(folder / "dataset.json"):
        images = dict(zip(entry.channels, _arrays(entry.images)))
        present, border, shape = [], [], []
        for c in channels:
            a = images.get(c)
            present.append(float(a is not None and bool(np.any(a))))
            if a is None:
                border += [0.0] * 3
                shape += [0.0] * 3
                continue
            slab = np.concatenate([a[:, :2].ravel(), a[:, -2:].ravel(), a[:, :, :2].ravel(), a[:, :, -2:].ravel()])
            border += [float(slab.mean()), float(slab.std()), float(np.percentile(slab, 99))]
            brain = a[a != 0]
            z = (brain - brain.mean()) / brain.std()
            shape += [float(q) for q in np.percentile(z, [10, 50, 90])]
        presence.append(present)
        background.append(border)
        contrast.append(shape)
        sites.append(entry.site)
    feats = {"presence": np.array(presence), "background": np.array(background), "contrast": np.array(contrast)}
    return feats, sites


def test_protocols_writes_four_channels_with_an_exactly_zero_background(protocols: Path) -> None:
    data = json.loads((protocols / "dataset.json").read_text())
    assert list(data["channel_names"].values()) == list(PHYSICS_CHANNELS)
    assert data["brats_names"] == {"FLAIR": "flair", "T1w": "t1", "t1gd": "t1ce", "T2w": "t2"}
    entries = read_dataset(protocols / "dataset.json")
    assert len({e.site for e in entries}) == 4 and len(entries) == 4 * CASES
    for entry in entries:
        assert entry.channels == list(PHYSICS_CHANNELS), entry.case
        arrays = _arrays(entry.images)
        zero = [a == 0 for a in arrays]
        for a, z in zip(arrays, zero):
            assert (z == zero[0]).all(), f"{entry.case}: channels disagree on the background"
            assert a[:, :2].max() == a[:, -2:].max() == a[:, :, :2].max() == a[:, :, -2:].max() == 0.0
            assert 0.4 < z.mean() < 0.95 and a[~z].min() > 0, entry.case  # a brain inside, nothing negative
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(entry.label)))
        assert not label[zero[0]].any(), f"{entry.case}: a label outside the brain"


def test_site_cannot_be_read_from_channels_or_background_but_contrast_tells_it(protocols: Path) -> None:
    feats, sites = _features(protocols, list(PHYSICS_CHANNELS))
    bound = _chance_bound(len(sites), 4)
    assert not feats["presence"].std(0).any() and not feats["background"].any()
    for name in ("presence", "background"):
        acc = _loo_nearest_centroid(feats[name], sites)
        assert acc < bound, f"{name} features identify the site (accuracy {acc:.2f}, chance bound {bound:.2f})"
    # the same rule does tell the sites apart from in-brain contrast: the protocols differ there
    assert _loo_nearest_centroid(feats["contrast"], sites) >= bound


def test_the_old_mixed_scenario_gives_its_sites_away_by_channel_set(tmp_path: Path) -> None:
    """Positive control: on `mixed` the same classifier reads the site off the channels present."""
    folder = _synth(tmp_path, "mixed")
    feats, sites = _features(folder, ["T1", "T2", "FLAIR"])
    assert _loo_nearest_centroid(feats["presence"], sites) == 1.0


def _tissue_means(site_json: dict, channel: str, cases: int = 6) -> dict[str, float]:
    """Mean stored intensity per main tissue over a few cases (voxels that are mostly that tissue)."""
    site = parse_spec({"sites": [site_json], "defaults": SCENARIOS["protocols"]["defaults"]}, "test").sites[0]
    template = load_template(SPACING)
    sums: dict[str, list[float]] = {t: [] for t in TISSUE_VALUES}
    for k in range(cases):
        case = make_physics_case(template, site, case_rng(1, 0, k), tissue_map=True)
        assert case.tissue_label is not None
        tissues = sitk.GetArrayFromImage(case.tissue_label)
        image = sitk.GetArrayFromImage(case.images[channel])
        for name, value in TISSUE_VALUES.items():
            sums[name] += image[tissues == value].tolist()
    return {n: float(np.mean(v)) for n, v in sums.items() if len(v) > 20}


def test_tissue_contrast_order_flips_between_protocols() -> None:
    """Edema is brighter than grey matter on 3 T MPRAGE and darker on the 1.5 T short-TI MPRAGE (measured)."""
    spec = resolve_scenario("protocols")
    by_name = {s.name: s for s in spec.sites}
    high = nominal_signals(by_name["hospital-3t-3d"].physics, "T1w")  # type: ignore[arg-type]
    low = nominal_signals(by_name["hospital-1.5t-old"].physics, "T1w")  # type: ignore[arg-type]
    assert high["edema"] > high["gm"] * 1.1 and low["gm"] > low["edema"] * 1.1
    sites = {s["name"]: s for s in SCENARIOS["protocols"]["sites"]}
    a = _tissue_means(sites["hospital-3t-3d"], "T1w")
    b = _tissue_means(sites["hospital-1.5t-old"], "T1w")
    assert a["edema"] > a["gm"] and b["gm"] > b["edema"], (a, b)


def test_signal_equations_behave_as_mr_physics_says() -> None:
    pd, t2 = np.array([1.0]), np.array([80.0])
    t1 = np.array([300.0, 900.0, 3000.0])
    se = signal(Sequence("se", 500, 10), pd, t1, t2)
    assert se[0] > se[1] > se[2]  # short TR: short T1 is bright
    null = 3000.0 * np.log(2.0 / (1.0 + np.exp(-9000.0 / 3000.0)))  # the inversion time that nulls T1 = 3000 ms
    ir = signal(Sequence("ir", 9000, 10, ti_ms=null), pd, np.array([3000.0]), t2)
    assert ir[0] < 1e-6
    long_te, short_te = (
        signal(Sequence("se", 5000, te), pd, np.array([900.0]), np.array([60.0, 200.0])) for te in (120, 10)
    )
    assert long_te[1] / long_te[0] > short_te[1] / short_te[0]  # long TE separates T2
    gre = [float(signal(Sequence("spgr", 20, 4, flip_deg=f), pd, np.array([900.0]), t2)[0]) for f in (5, 12, 60)]
    assert gre[1] > gre[0] and gre[1] > gre[2]  # the Ernst angle (~12 deg here) gives the most signal


def test_kspace_truncation_blurs_and_rings() -> None:
    step = np.zeros((8, 8, 64), np.float32)
    step[..., 16:48] = 1.0
    cut = truncate_kspace(step, (1.0, 1.0, 0.4))
    assert cut.max() > 1.05 and cut[..., :12].max() > 0.02  # Gibbs overshoot and ripples outside the edge
    assert 0.2 < cut[0, 0, 16] < 0.8  # the edge is no longer sharp
    assert truncate_kspace(step, (1.0, 1.0, 1.0)) is step


def test_annotation_sites_label_the_same_lesions_differently() -> None:
    base = resolve_scenario("protocols").sites[0]
    template = load_template(SPACING)
    base = replace(base, lesions=replace(base.lesions, count=(2, 2), radius_mm=(10.0, 12.0)))

    def labels(**changes: object) -> np.ndarray:
        case = make_physics_case(template, replace(base, **changes), np.random.default_rng(7))  # type: ignore[arg-type]
        return sitk.GetArrayFromImage(case.label)

    plain, generous, tight = labels(), labels(edema_margin_mm=3.0), labels(edema_margin_mm=-2.0)
    whole, rim = labels(annotation="whole"), labels(rim_label="edema")
    assert (tight > 0).sum() < (plain > 0).sum() < (generous > 0).sum()
    assert ((generous > 0) | ~(plain > 0)).all()  # the generous outline contains the plain one
    assert set(np.unique(whole)) == {0, 1} and ((whole > 0) == (plain > 0)).all()
    assert (rim == 1).sum() < (plain == 1).sum() and ((rim > 0) == (plain > 0)).all()


def test_physics_sites_round_trip_and_bad_values_are_refused_in_one_line(tmp_path: Path) -> None:
    for name in ("protocols", "annotation", "missing-channels", "unseen-ladder"):
        spec = resolve_scenario(name)
        again = parse_spec({"sites": [site_to_json(s) for s in spec.sites]}, name)
        assert again.sites == spec.sites, name
    assert [s.channels.keys() for s in resolve_scenario("missing-channels").sites] != [
        s.channels.keys() for s in resolve_scenario("protocols").sites
    ]
    bad = [
        ({"physics": {"field_strength": 7}}, "field_strength: must be one of 1.5, 3.0, got 7"),
        ({"physics": {}, "channels": {"T1w": {"sequence": "epi"}}}, "channels: T1w: sequence: unknown sequence"),
        ({"physics": {}, "channels": {"T2w": {"TR": 500, "TE": 600}}}, "TE 600 ms must be shorter than TR 500 ms"),
        ({"physics": {}, "channels": {"T2w": {"TI": 900}}}, "channels: T2w: TI: a se sequence has no TI"),
        ({"physics": {}, "channels": {"T1w": {"sequence": "spgr", "TR": 20, "TE": 4}}}, "a spgr sequence needs flip"),
        ({"physics": {}, "channels": ["T1"]}, "unknown channel 'T1' for a physics site"),
        ({"physics": {"kspace": 0.1}}, "kspace: must be >= 0.2, got 0.1"),
        ({"rim_label": "edema"}, "rim_label: only an MR-physics site"),
        ({"physics": {}, "rim_label": "skin"}, "rim_label: must be one of core, edema"),
    ]
    for extra, words in bad:
        with pytest.raises(InputError, match=words.replace("(", r"\(")) as err:
            parse_spec({"sites": [{"name": "s", **extra}]}, "spec.json")
        assert "\n" not in str(err.value) and str(err.value).startswith("spec.json: site 's'")
    with pytest.raises(InputError, match="mix contrast-table and MR-physics sites"):
        parse_spec({"sites": [{"name": "a"}, {"name": "b", "physics": {}}]}, "spec.json")
    assert Where("x").at("y").fail("z").args == ("x: y: z",)


def test_same_seed_same_bytes_for_a_physics_scenario(tmp_path: Path) -> None:
    template = load_template(SPACING)
    site = replace(resolve_scenario("protocols").sites[2], physics=Physics(kspace=(0.7, 0.7, 1.0)))
    a, b = (make_physics_case(template, site, np.random.default_rng(5)) for _ in range(2))
    for channel in a.images:
        assert (sitk.GetArrayFromImage(a.images[channel]) == sitk.GetArrayFromImage(b.images[channel])).all()
    assert (sitk.GetArrayFromImage(a.label) == sitk.GetArrayFromImage(b.label)).all()


def test_brats_naming_renames_channels_only_and_clinics_has_a_site_without_t1ce(tmp_path: Path) -> None:
    """`clinics` (the default model's sites) names channels the BraTS way; the voxels are the protocols' own."""
    clinics, protocols = _synth(tmp_path, "clinics"), _synth(tmp_path, "protocols")
    data = json.loads((clinics / "dataset.json").read_text())
    assert list(data["channel_names"].values()) == ["flair", "t1", "t1ce", "t2"] and "brats_names" not in data
    entries = {e.case: e for e in read_dataset(clinics / "dataset.json")}
    msd = {e.case: e for e in read_dataset(protocols / "dataset.json")}
    assert set(entries) == set(msd)
    for case, entry in entries.items():
        lacks_contrast = entry.site == "hospital-1.5t-old"
        assert entry.channels == (["flair", "t1", "t2"] if lacks_contrast else ["flair", "t1", "t1ce", "t2"]), case
        names = list(data["channel_names"].values())
        assert [p.name[-12:] for p in entry.images] == [f"_{names.index(c):04d}.nii.gz" for c in entry.channels]
        same = [p for p in msd[case].images if p.name in {q.name for q in entry.images}]
        for a, b in zip(_arrays(entry.images), _arrays(same)):
            assert (a == b).all(), case  # renaming never changes a voxel
    assert parse_spec(data, "dataset.json").channel_naming == "brats"  # read back as written
    with pytest.raises(InputError, match="channel_naming: must be one of msd, brats"):
        parse_spec({"channel_naming": "nnunet", "sites": [{"name": "s", "physics": {}}]}, "spec.json")
    refused = subprocess.run(
        [sys.executable, "-m", "UHarmonyLib", "synth", "--scenario", "mixed", "--channel-naming", "brats",
         "--out", str(tmp_path / "refused")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and not (tmp_path / "refused").exists()
    assert refused.stderr.strip().splitlines()[-1].endswith("MR-physics channels; these sites use contrast tables")
