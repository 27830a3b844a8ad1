"""Data-side harmonization: each method on real files, parameters through a trained model card, refusals.

Phantoms are small (3 mm, about 40^3) heads with known tissue: white matter (the
brightest, T1-like), grey matter, CSF and a noisy background; the model-card test trains
a tiny network for 2 steps on a 4 mm synthetic dataset. One thread throughout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import assert_one_line_error, run_main

from UHarmonyLib import image_harmonization
from UHarmonyLib.files.volumes import read_volume
from UHarmonyLib.image_harmonization import matching, nyul, whitestripe
from UHarmonyLib.image_harmonization.mask import foreground_mask
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.inference.preprocessing import ModelSpace, model_input, normalize, stack_channels
from UHarmonyLib.model.weights import Bundle, load_bundle

SHAPE = (40, 44, 36)  # z, y, x
TISSUE = {"wm": 0.80, "gm": 0.55, "csf": 0.15}
TWO_SITES = {
    "name": "two-sites",
    "sites": [
        {"name": "north", "channels": ["FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}},
        {
            "name": "south",
            "channels": ["FLAIR"],
            "gamma": 1.5,
            "scale": 400.0,
            "offset": 30.0,
            "lesions": {"count": [2, 2], "radius_mm": [8, 10]},
        },
    ],
}
TINY_TRAIN = ["--patch", 32, "--filters", 4, 8, 16, "--spacing", 4, 4, 4, "--steps", 2, "--batch", 1]


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")


def phantom(
    seed: int = 0, gamma: float = 1.0, scale: float = 1.0, offset: float = 0.0, bias: float = 0.0, noise: float = 0.03
) -> tuple[sitk.Image, np.ndarray]:
    """(image, white-matter mask): concentric tissue shells, Gaussian tissue noise, Rayleigh background."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid()
    r = np.sqrt(x**2 + y**2 + z**2)
    wm = r < 0.55
    tissue = np.where(wm, TISSUE["wm"], np.where(r < 0.72, TISSUE["gm"], np.where(r < 0.85, TISSUE["csf"], 0.0)))
    image = np.abs(tissue + rng.normal(0.0, noise, SHAPE)) ** gamma
    image *= np.exp(bias * (x + 0.6 * y**2))  # a smooth multiplicative coil field
    image = image * scale + offset
    out = sitk.GetImageFromArray(image.astype(np.float32))
    out.SetSpacing((3.0, 3.0, 3.0))
    out.SetOrigin((-60.0, -66.0, -54.0))
    return out, wm


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def cov(image: sitk.Image, mask: np.ndarray) -> float:
    values = sitk.GetArrayFromImage(image)[mask]
    return float(values.std() / values.mean())


# ---------------------------------------------------------------- methods


def test_n4_removes_a_planted_bias_field(tmp_path: Path) -> None:
    image, wm = phantom(bias=0.3, noise=0.01)
    source = write(image, tmp_path / "biased.nii.gz")
    run = run_main("harmonize", "--method", "n4", "--in", source, "--out", tmp_path / "n4.nii.gz")
    assert run.code == 0, run.stderr
    corrected = read_volume(tmp_path / "n4.nii.gz")
    before, after = cov(read_volume(source), wm), cov(corrected, wm)
    assert after < 0.4 * before, (before, after)
    assert corrected.GetSpacing() == image.GetSpacing() and corrected.GetOrigin() == image.GetOrigin()


def test_nyul_maps_learned_landmarks_onto_the_standard_scale(tmp_path: Path) -> None:
    images = [phantom(seed=i, gamma=g, scale=s)[0] for i, (g, s) in enumerate([(1.0, 1.0), (0.7, 300.0), (1.4, 50.0)])]
    paths = [write(im, tmp_path / f"t1_{i}.nii.gz") for i, im in enumerate(images)]
    params = image_harmonization.fit("nyul", {"T1": [(str(p), read_volume(p)) for p in paths]})
    params = json.loads(json.dumps(params))  # plain JSON survives a round trip
    standard = np.asarray(params["channels"]["T1"]["standard"])
    assert standard[0] == 0.0 and standard[-1] == 100.0 and np.all(np.diff(standard) > 0)
    for path in paths:
        image = read_volume(path)
        out = image_harmonization.apply(image, params, "T1", str(path))
        mask = foreground_mask(image, str(path))
        landmarks = np.percentile(sitk.GetArrayFromImage(out)[mask], nyul.SETTINGS["percentiles"])
        np.testing.assert_allclose(landmarks, standard, atol=0.5)


def test_histogram_matching_reproduces_the_reference_histogram(tmp_path: Path) -> None:
    reference, _ = phantom(seed=1, gamma=0.8, scale=200.0, offset=10.0)
    others = [phantom(seed=2, gamma=1.3, scale=5.0)[0], phantom(seed=3, noise=0.05)[0]]
    params = image_harmonization.fit("match", {"FLAIR": [("ref", reference), ("a", others[0]), ("b", others[1])]})
    ref_quantiles = np.asarray(params["channels"]["FLAIR"]["reference"])
    probs = np.linspace(0.0, 1.0, len(ref_quantiles))
    for i, image in enumerate(others):
        source = write(image, tmp_path / f"src{i}.nii.gz")
        out = image_harmonization.apply(read_volume(source), params, "FLAIR", str(source))
        values = np.sort(sitk.GetArrayFromImage(out)[foreground_mask(image, "src")])
        cdf = np.searchsorted(values, ref_quantiles, side="right") / values.size
        assert np.abs(cdf - probs)[1:-1].max() < 0.02  # Kolmogorov-Smirnov distance to the reference
        np.testing.assert_allclose(np.median(values), np.median(ref_quantiles), rtol=0.01)
    assert 0 <= params["channels"]["FLAIR"]["reference_index"] < 3
    assert matching.SETTINGS["match_points"] > 1


def test_whitestripe_gives_normal_white_matter_mean_0_sd_1(tmp_path: Path) -> None:
    for gamma, scale in [(1.0, 1.0), (0.6, 900.0)]:
        image, wm = phantom(gamma=gamma, scale=scale, noise=0.04)
        source = write(image, tmp_path / f"t1_{scale:g}.nii.gz")
        run = run_main(
            "harmonize", "--method", "whitestripe", "--channel", "T1", "--in", source, "--out", tmp_path / "ws.nii.gz"
        )
        assert run.code == 0, run.stderr
        out = sitk.GetArrayFromImage(read_volume(tmp_path / "ws.nii.gz"))
        head = foreground_mask(image, "t1")
        stripe = whitestripe.stripe(out[head].astype(np.float64), "last", whitestripe.SETTINGS)
        assert abs(stripe.mean()) < 1e-3 and abs(stripe.std() - 1.0) < 1e-3
        white = out[wm].astype(np.float64)
        assert abs(white.mean()) < 0.15 * white.std()  # the stripe sits on the white matter's peak
        assert float(np.median(out[head & ~wm])) < -3  # grey matter and CSF are darker on T1
    assert whitestripe.rule_for("T2w") == "first" and whitestripe.rule_for("FLAIR") == "largest"


def test_scaling_undoes_gain_and_offset_and_zeros_stay_zero(tmp_path: Path) -> None:
    image, _ = phantom(seed=4)
    shifted = image * 250.0 + 40.0
    head = foreground_mask(image, "a")
    for name in ("zscore", "percentile"):
        params = image_harmonization.fit(name, {})
        a = sitk.GetArrayFromImage(image_harmonization.apply(image, params, "T1", "a"))
        b = sitk.GetArrayFromImage(image_harmonization.apply(shifted, params, "T1", "b"))
        np.testing.assert_allclose(a, b, atol=1e-3)
        if name == "zscore":
            q1, q2, q3 = np.percentile(a[head], [25, 50, 75])
            assert abs(q2) < 1e-6 and abs((q3 - q1) - 1.349) < 1e-3
        else:
            np.testing.assert_allclose(np.percentile(a[head], [1, 99]), [0.0, 1.0], atol=1e-6)
    stripped = sitk.Mask(image, sitk.Cast(image > 0.3, sitk.sitkUInt8))  # zero outside the brain
    for name in ("zscore", "n4", "whitestripe"):
        out = sitk.GetArrayFromImage(
            image_harmonization.apply(stripped, image_harmonization.fit(name, {}), "T1", "stripped")
        )
        assert np.array_equal(out == 0, sitk.GetArrayFromImage(stripped) == 0), name  # "no data" stays 0


# ---------------------------------------------------------------- through a trained model card


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two-sites")
    spec = folder / "spec.json"
    spec.write_text(json.dumps(TWO_SITES), encoding="utf-8")
    run = run_main("synth", "--scenario", spec, "--out", folder / "data", "--spacing", 4, "--cases-per-site", 2)
    assert run.code == 0, run.stderr
    return folder / "data"


@pytest.fixture(scope="module")
def nyul_model(two_sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nyul") / "nyul-model-v1"
    run = run_main("train", "--data", two_sites, "--out", out, "--harmonize", "nyul", *TINY_TRAIN)
    assert run.code == 0, run.stderr
    return out


def _card(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "model.json").read_text(encoding="utf-8"))


def test_fitted_parameters_round_trip_through_the_card(nyul_model: Path, two_sites: Path, tmp_path: Path) -> None:
    card = _card(nyul_model)
    params = card["preprocessing"]["harmonize"]
    assert params["method"] == "nyul" and list(params["channels"]) == ["FLAIR"]
    assert params["channels"]["FLAIR"]["images"] == 4  # every training case (no site has 3 for validation)
    assert "--harmonize nyul" in card["provenance"]["command"]
    bundle = load_bundle(nyul_model)
    path = two_sites / "imagesTr" / "south_001_0000.nii.gz"
    raw = read_volume(path)
    manual = image_harmonization.apply(raw, params, "FLAIR", str(path))
    space = ModelSpace.for_image(raw, bundle.preprocessing)
    engine = model_input(space, [raw], bundle.preprocessing, bundle.channel_names)
    expected = normalize(stack_channels(space, [manual]), bundle.preprocessing["intensity"])
    torch.testing.assert_close(engine, expected)
    # the engine end to end: the card's model on raw input == the same weights, card without harmonize, on manual input
    plain = json.loads(json.dumps(bundle.card))
    del plain["preprocessing"]["harmonize"]
    a = segment_volumes(bundle, [raw], site="south", want_probabilities=True)
    b = segment_volumes(Bundle(bundle.path, plain, bundle.net), [manual], site="south", want_probabilities=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.probabilities), sitk.GetArrayFromImage(b.probabilities))
    # `uharmony harmonize --params BUNDLE` repeats the card's harmonization on a file
    run = run_main("harmonize", "--params", nyul_model, "--in", path, "--out", tmp_path / "h.nii.gz")
    assert run.code == 0, run.stderr
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_volume(tmp_path / "h.nii.gz")), sitk.GetArrayFromImage(manual)
    )


def test_segment_needs_no_flag_and_refuses_a_contradicting_one(
    nyul_model: Path, two_sites: Path, tmp_path: Path
) -> None:
    image = two_sites / "imagesTr" / "north_000_0000.nii.gz"
    run = run_main("segment", "--model", nyul_model, image, "--out", tmp_path / "a.nii.gz", "--site", "north")
    assert run.code == 0, run.stderr
    run = run_main("segment", "--model", nyul_model, image, "--out", tmp_path / "b.nii.gz", "--harmonize", "nyul")
    assert run.code == 0, run.stderr
    run = run_main("segment", "--model", nyul_model, image, "--out", tmp_path / "c.nii.gz", "--harmonize", "zscore")
    assert "trained with nyul harmonization" in assert_one_line_error(run)


def test_old_cards_refuse_harmonize_on_segment(tiny_bundle: Path, volume_file: Path, tmp_path: Path) -> None:
    assert "harmonize" not in _card(tiny_bundle)["preprocessing"]
    run = run_main("segment", "--model", tiny_bundle, volume_file, "--out", tmp_path / "s.nii.gz", "--harmonize", "n4")
    assert "trained without harmonization" in assert_one_line_error(run)


# ---------------------------------------------------------------- refusals


def test_bad_inputs_are_refused_with_one_line(two_sites: Path, tmp_path: Path) -> None:
    image, _ = phantom()
    good = write(image, tmp_path / "good.nii.gz")
    empty = write(sitk.Image(image) * 0, tmp_path / "empty.nii.gz")
    specks = np.zeros(SHAPE, np.float32)
    specks[20, 20, 20:23] = 5.0  # no head: a few bright voxels
    speck_file = write(sitk.GetImageFromArray(specks), tmp_path / "specks.nii.gz")
    out = tmp_path / "out.nii.gz"
    cases = [
        (["--method", "zscore", "--in", empty, "--out", out], "volume is constant"),
        (["--method", "zscore", "--in", speck_file, "--out", out], "no foreground found"),
        (["--method", "nyul", "--in", good, "--out", out], "add --fit"),
        (["--method", "histeq", "--in", good, "--out", out], "unknown harmonization method 'histeq'"),
        (["--method", "nyul", "--fit", two_sites, "--channel", "T1", "--in", good, "--out", out], "no channel 'T1'"),
        (["--method", "nyul", "--fit", tmp_path / "nowhere.json", "--in", good, "--out", out], "not found"),
        (["--method", "zscore", "--in", good, "--out", good], "overwrite the input"),
        (["--params", good, "--in", good, "--out", out], "not valid JSON"),
    ]
    for args, message in cases:
        line = assert_one_line_error(run_main("harmonize", *args))
        assert message in line, (args, line)
    assert str(speck_file) in assert_one_line_error(
        run_main("harmonize", "--method", "zscore", "--in", speck_file, "--out", out)
    )
    assert not out.exists()
    run = run_main("train", "--data", two_sites, "--out", tmp_path / "m-v1", "--harmonize", "histeq", *TINY_TRAIN)
    assert "--harmonize histeq: unknown method" in assert_one_line_error(run)
