"""`uharmony synth`: determinism, labels, site effects, the Decathlon layout, refusals. Real files, coarse grids."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_one_line_error, run_main
from monai.data import load_decathlon_datalist

from UHarmonyLib.data.datasets import read_dataset
from UHarmonyLib.data.scenarios import SCENARIOS
from UHarmonyLib.data.spec import parse_spec
from UHarmonyLib.data.synth import LesionSpec, SiteSpec, make_case
from UHarmonyLib.data.template import MNI_NOTICE, load_template

BIG_LESIONS = {"count": [2, 2], "radius_mm": [8, 10]}  # survive a 4 mm grid, so both classes are present


def write_spec(path: Path, sites: list[dict[str, Any]], **top: Any) -> Path:
    path.write_text(json.dumps({"sites": sites, **top}), encoding="utf-8")
    return path


def synth(spec: Path | str, out: Path, *extra: Any, spacing: float = 4, cases: int = 1) -> None:
    run = run_main("synth", "--scenario", spec, "--out", out, "--spacing", spacing, "--cases-per-site", cases, *extra)
    assert run.code == 0, run


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_sites_independent(tmp_path: Path) -> None:
    two = [{"name": "a", "channels": ["T1", "FLAIR"]}, {"name": "b", "channels": ["T2"], "noise": 0.05}]
    spec2 = write_spec(tmp_path / "two.json", two)
    spec3 = write_spec(tmp_path / "three.json", [*two, {"name": "c", "channels": ["FLAIR"]}])
    synth(spec2, tmp_path / "first", "--seed", 7)
    synth(spec2, tmp_path / "again", "--seed", 7)
    synth(spec3, tmp_path / "more", "--seed", 7)
    synth(spec2, tmp_path / "other", "--seed", 8)
    first = files(tmp_path / "first")
    assert first == files(tmp_path / "again")  # every byte, dataset.json included
    more = files(tmp_path / "more")
    assert all(more[k] == v for k, v in first.items() if k != "dataset.json")  # adding a site changes no other
    other = files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[k] != v for k, v in first.items() if k.startswith("imagesTr"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "first", "more", "other", "three.json", "two.json"]


def test_stream_per_stage_keeps_lesions_when_appearance_changes() -> None:
    template = load_template(4.0)
    plain = make_case(template, SiteSpec("s"), np.random.default_rng(3))
    changed = make_case(template, SiteSpec("s", noise=0.1, gamma=2.0, scale=9.0), np.random.default_rng(3))
    assert np.array_equal(sitk.GetArrayFromImage(plain.label), sitk.GetArrayFromImage(changed.label))
    assert plain.lesions == changed.lesions


def test_lesion_region_is_respected() -> None:
    template = load_template(4.0)
    for region, sign in (("left", -1), ("right", 1)):
        site = SiteSpec("s", lesions=LesionSpec(count=(4, 4), region=(region,)))
        for seed in range(3):
            case = make_case(template, site, np.random.default_rng(seed))
            assert len(case.lesions) == 4
            assert all(sign * les["centre_ras_mm"][0] > 0 for les in case.lesions), case.lesions


# ---------------------------------------------------------------- layout, labels and site effects


@pytest.fixture(scope="module")
def effects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[str]]:
    """One case per site; each site changes one thing relative to 'ref'."""
    folder = tmp_path_factory.mktemp("effects")
    base = {"channels": ["FLAIR"], "bias": 0.0, "noise": 0.02, "lesions": BIG_LESIONS}
    sites = [
        {"name": "ref"},
        {"name": "scaled", "scale": 2.0},
        {"name": "noisy", "noise": 0.08},
        {"name": "offset", "offset": 100.0},
        {"name": "aniso", "spacing": [4, 4, 8]},
        {"name": "cropped", "fov_crop": [1, 1, [0.5, 1]]},
        {"name": "lps", "orientation": "LPS"},
        {"name": "coarse", "annotation": "whole"},
        {"name": "t1only", "channels": ["T1"]},
        {"name": "noflair", "channels": {"T1": {}, "T2": {"csf": 0.9}}},
    ]
    spec = write_spec(folder / "effects.json", sites, defaults=base)
    run = run_main("synth", "--scenario", spec, "--out", folder / "ds", "--spacing", 4, "--cases-per-site", 1,
                   "--progress", "json")  # fmt: skip
    assert run.code == 0, run
    events = [json.loads(line) for line in run.stdout.splitlines()]
    return folder / "ds", events, [s["name"] for s in sites]


def site_file(ds: Path, site: str, channel: int = 0) -> Path:
    return ds / "imagesTr" / f"{site}_000_{channel:04d}.nii.gz"


def foreground_median(a: np.ndarray) -> float:
    return float(np.median(a[a > 0.4 * np.percentile(a, 99)]))


def test_progress_protocol_and_result(effects: tuple[Path, dict[str, Any], list[str]]) -> None:
    ds, events, names = effects
    progress = [e for e in events if e["event"] == "progress"]
    assert [(e["stage"], e["done"], e["total"]) for e in progress] == [("synth", i, 10) for i in range(11)]
    result = events[-1]
    assert result["event"] == "result"
    assert result["dataset"] == str(ds / "dataset.json") and result["cases"] == 10
    assert 0 < result["seconds_per_case"] < 30
    assert result["sites"] == names


def test_dataset_json_read_by_monai_and_read_dataset(effects: tuple[Path, dict[str, Any], list[str]]) -> None:
    ds, _, names = effects
    data = json.loads((ds / "dataset.json").read_text())
    assert MNI_NOTICE in data["description"]
    assert data["channel_names"] == data["modality"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    assert data["labels"] == {"0": "background", "1": "lesion core", "2": "edema"}
    assert data["label_sets"]["coarse"] == {"0": "background", "1": "whole lesion"}
    assert data["merges"] == {"whole lesion": ["lesion core", "edema"]}
    assert data["numTraining"] == len(data["training"]) == 10
    assert (data["seed"], data["spacing"], data["scenario"]) == (0, 4.0, "effects.json")
    monai = load_decathlon_datalist(str(ds / "dataset.json"), data_list_key="training")
    ours = read_dataset(ds)
    assert [e.site for e in ours] == [m["site"] for m in monai] == names
    for entry, item in zip(ours, monai):
        assert [str(p) for p in entry.images] == item["image"]
        assert str(entry.label) == item["label"] and entry.label.is_file()
        assert entry.channels == item["channels"] and len(entry.images) == len(entry.channels)
        assert all(p.is_absolute() and p.is_file() for p in entry.images)
    by_site = {e.site: e for e in ours}
    assert by_site["t1only"].channels == ["T1"] and by_site["t1only"].images[0].name.endswith("_0000.nii.gz")
    assert by_site["noflair"].channels == ["T1", "T2"]
    assert by_site["ref"].images[0].name == "ref_000_0002.nii.gz"  # FLAIR is channel 2 of the dataset
    assert by_site["coarse"].labels == ["whole lesion"] and by_site["ref"].labels == ["lesion core", "edema"]
    # the resolved sites are a spec again and parse back to the same sites
    again = parse_spec(data, "dataset.json")
    assert [s.name for s in again.sites] == names and again.sites[4].spacing == (4.0, 4.0, 8.0)


def test_label_classes(effects: tuple[Path, dict[str, Any], list[str]]) -> None:
    ds, _, names = effects
    for name in names:
        values = set(np.unique(array(ds / "labelsTr" / f"{name}_000.nii.gz")).tolist())
        assert values == ({0, 1} if name == "coarse" else {0, 1, 2}), (name, values)


def test_site_effects_are_applied(effects: tuple[Path, dict[str, Any], list[str]]) -> None:
    ds, _, _ = effects
    ref, scaled = array(site_file(ds, "ref", 2)), array(site_file(ds, "scaled", 2))
    assert 1.8 < foreground_median(scaled) / foreground_median(ref) < 2.2
    background = (slice(None), slice(None), slice(0, 3))  # x columns left of the brain
    noisy = array(site_file(ds, "noisy", 2))
    assert noisy[background].std() > 3 * ref[background].std()
    offset = array(site_file(ds, "offset", 2))
    assert 99.9 < np.median(offset[background]) < 100.2 and np.median(ref[background]) < 0.1
    aniso = sitk.ReadImage(str(site_file(ds, "aniso", 2)))
    assert aniso.GetSpacing() == (4.0, 4.0, 8.0)
    assert sitk.ReadImage(str(ds / "labelsTr" / "aniso_000.nii.gz")).GetSpacing() == (4.0, 4.0, 8.0)
    ref_img = sitk.ReadImage(str(site_file(ds, "ref", 2)))
    assert abs(aniso.GetSize()[2] - ref_img.GetSize()[2] / 2) <= 1
    cropped = sitk.ReadImage(str(site_file(ds, "cropped", 2)))
    assert cropped.GetSize()[:2] == ref_img.GetSize()[:2]
    assert abs(cropped.GetSize()[2] - ref_img.GetSize()[2] / 2) <= 1
    assert cropped.GetOrigin()[2] > ref_img.GetOrigin()[2] + 40  # the superior half was kept
    for path in (site_file(ds, "lps", 2), ds / "labelsTr" / "lps_000.nii.gz"):
        image = sitk.ReadImage(str(path))
        assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "LPS"
    assert ref_img.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS
    # contrast: T1 white matter is brighter than the CSF-rich ventricles, FLAIR lesions brighter than tissue
    label = array(ds / "labelsTr" / "ref_000.nii.gz")
    assert np.median(ref[label == 2]) > 1.3 * foreground_median(ref)


def test_builtin_scenarios_resolve() -> None:
    run = run_main("synth", "--list-scenarios")
    assert run.code == 0, run
    assert [line.split()[0] for line in run.stdout.splitlines()] == list(SCENARIOS)
    assert run_main("synth", "--scenario", "list").stdout == run.stdout
    assert {"none", "appearance", "structural", "mixed"} <= set(SCENARIOS)
    for name in SCENARIOS:
        spec = parse_spec(SCENARIOS[name], name)
        assert len(spec.sites) >= 4
    mixed = parse_spec(SCENARIOS["mixed"], "mixed").sites
    assert any("FLAIR" not in s.channels for s in mixed) and any(s.annotation == "whole" for s in mixed)
    none = parse_spec(SCENARIOS["none"], "none").sites
    assert all(dataclasses.replace(s, name="x") == dataclasses.replace(none[0], name="x") for s in none)


def test_json_defaults_match_python_defaults() -> None:
    """A JSON site with one FLAIR channel is exactly SiteSpec's default (the Python API's default channel)."""
    assert parse_spec({"sites": [{"name": "a", "channels": ["FLAIR"]}]}, "spec").sites[0] == SiteSpec("a")
    full = parse_spec({"sites": [{"name": "a"}]}, "spec").sites[0]
    assert list(full.channels) == ["T1", "T2", "FLAIR"]


def test_mixed_scenario_end_to_end(tmp_path: Path) -> None:
    synth("mixed", tmp_path / "mixed")
    entries = read_dataset(tmp_path / "mixed")
    assert len(entries) == len(SCENARIOS["mixed"]["sites"])
    for e in entries:
        values = set(np.unique(array(e.label)).tolist())
        assert values <= set(range(len(e.labels) + 1))
        assert [sitk.ReadImage(str(p)).GetSize() for p in e.images] == [sitk.ReadImage(str(e.label)).GetSize()] * len(
            e.images
        )


# ---------------------------------------------------------------- refusals


def _site(**over: Any) -> list[dict[str, Any]]:
    return [{"name": "a", **over}]


BAD_SPECS = [
    ({"sites": _site(colour="red")}, "unknown key 'colour'"),
    ({"sites": _site(noise=-0.1)}, "site 'a' (sites[0]): noise: must be >= 0"),
    ({"sites": _site(scale=-2)}, "scale: must be > 0"),
    ({"sites": _site(lesions={"radius_mm": [-1, 3]})}, "lesions: radius_mm: must be > 0"),
    ({"sites": [{"noise": 0.1}]}, 'sites[0]: every site needs a non-empty "name"'),
    ({"sites": [{"name": ""}]}, 'non-empty "name"'),
    ({"sites": [{"name": "a"}, {"name": "b"}, {"name": "A"}]}, "duplicate site name 'A' (also sites[0])"),
    ({"sites": []}, '"sites" must be a non-empty list'),
    ({"name": "x"}, '"sites" must be a non-empty list'),
    ({"sites": _site(channels=["T1", "DWI"])}, "unknown channel 'DWI'"),
    ({"sites": _site(channels={"T1": {"bone": 1.0}})}, "channels: T1: unknown tissue 'bone'"),
    ({"sites": _site(orientation="RAR")}, "orientation: must be a 3-letter code"),
    ({"sites": _site(annotation="partial")}, "annotation: must be one of full, whole"),
    ({"sites": _site(lesions={"region": ["left", "right"]})}, "'left' and 'right' cannot both hold"),
    ({"sites": _site(spacing=[1, 2])}, "spacing: must be null, one number or [x, y, z]"),
    ({"sites": _site(name="a b")}, "site name 'a b' must be letters"),
]


@pytest.mark.parametrize(("spec", "expected"), BAD_SPECS, ids=[e for _, e in BAD_SPECS])
def test_bad_spec_refused_nothing_written(tmp_path: Path, spec: dict[str, Any], expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    run = run_main("synth", "--scenario", path, "--out", tmp_path / "out")
    line = assert_one_line_error(run)
    assert run.code == 2
    assert str(path) in line and expected in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["bad.json"]


def test_bad_json_and_arguments_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    cases = [
        (["--scenario", tmp_path / "broken.json", "--out", tmp_path / "o"], "not a readable JSON spec"),
        (["--scenario", tmp_path / "absent.json", "--out", tmp_path / "o"], "spec file not found"),
        (["--scenario", "nonsense", "--out", tmp_path / "o"], "unknown scenario 'nonsense'"),
        (["--scenario", "none"], "needs --out DIR"),
        (["--out", tmp_path / "o"], "needs --scenario"),
        (["--scenario", "none", "--out", tmp_path / "o", "--spacing", 0.5], "--spacing must be from 1 to 8"),
        (["--scenario", "none", "--out", tmp_path / "broken.json" / "o"], "broken.json is a file, not a folder"),
    ]
    for args, expected in cases:
        run = run_main("synth", *args)
        assert expected in assert_one_line_error(run) and run.code == 2, (args, run)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.json"]


def test_existing_folder_refused_and_overwrite_only_replaces_ours(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.json", [{"name": "a", "channels": ["FLAIR"]}, {"name": "b", "channels": ["T1"]}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        run = run_main("synth", "--scenario", spec, "--out", out, "--spacing", 4, *extra)
        line = assert_one_line_error(run)
        assert run.code == 2 and ("--overwrite" in line if not extra else "refusing to clear" in line), line
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "notes.txt").unlink()
    synth(spec, out, cases=2)  # an existing empty folder is fine
    (out / "notes.txt").write_text("mine")
    assert len(list((out / "imagesTr").iterdir())) == 4
    assert "--overwrite" in assert_one_line_error(run_main("synth", "--scenario", spec, "--out", out))
    synth(spec, out, "--overwrite", cases=1)
    assert (out / "notes.txt").read_text() == "mine"
    # the dataset's channels are T1, FLAIR: FLAIR is channel 1 here
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_000_0001.nii.gz", "b_000_0000.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr", "notes.txt"]
    assert len(read_dataset(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.json"]


def test_read_dataset_errors_name_the_file(tmp_path: Path) -> None:
    from UHarmonyLib.errors import InputError

    with pytest.raises(InputError, match=r"dataset\.json: dataset file not found"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(InputError, match=r"dataset\.json: not valid JSON"):
        read_dataset(tmp_path / "dataset.json")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": ["x.nii.gz"], "label": "y.nii.gz"}]}))
    with pytest.raises(InputError, match=r"training\[0\]: file .*x.nii.gz not found"):
        read_dataset(tmp_path)


def test_missing_output_folders_are_created(tmp_path: Path) -> None:
    """`--out` inside folders that do not exist yet: they are created and the dataset written there."""
    out = tmp_path / "new" / "deeper" / "data"
    run = run_main("synth", "--scenario", "none", "--out", out, "--spacing", 8, "--cases-per-site", 1)
    assert run.code == 0, run
    assert (out / "dataset.json").is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
