"""`uharmony evaluate`: per-case and per-site scores, the gate's confusion, channel/label mapping by name, refusals.

One synthetic mixed dataset at 4 mm (4 sites, 2 cases each; hospital-c annotates only the
whole lesion), one tiny model trained for 4 steps, real files throughout, one thread.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CliRun, assert_one_line_error, run_main

from UHarmonyLib.cli import build_parser
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.model.weights import load_bundle

SITES = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
WHOLE = "whole lesion"
TINY_ARGS = ["--patch", 32, "--filters", 4, 8, 16, "--spacing", 4, 4, 4]
CASE_KEYS = {
    "case",
    "site",
    "chosen",
    "probabilities",
    "entropy",
    "familiar",
    "distance",
    "dice",
    "hd95_mm",
    "lesion_dice",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "data"
    run = run_main("synth", "--scenario", "mixed", "--cases-per-site", 2, "--spacing", 4, "--seed", 1, "--out", out)
    assert run.code == 0, run
    return out


@pytest.fixture(scope="module")
def model(dataset: Path) -> Path:
    out = dataset.parent / "mixed-model-v1"
    run = run_main("train", "--data", dataset, "--out", out, "--steps", 4, *TINY_ARGS)
    assert run.code == 0, run
    return out


def _evaluate(model: Path, data: Path, out: Path, *extra: Any) -> CliRun:
    """`uharmony evaluate` on the CPU, as the `segment` run it is checked against."""
    return run_main("evaluate", "--model", model, "--data", data, "--out", out, "--device", "cpu", *extra)


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def evaluated(model: Path, dataset: Path) -> tuple[CliRun, Path]:
    """The whole dataset with the gate choosing the site, JSON progress."""
    out = dataset.parent / "report.json"
    run = _evaluate(model, dataset, out, "--progress", "json")
    assert run.code == 0, run.stderr
    return run, out


def _rewrite(
    dataset: Path, folder: Path, keep: list[str] | None = None, edit: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    """A copy of the dataset.json (absolute paths, only the cases in `keep`), changed in place by `edit`."""
    data = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    training = []
    for item in data["training"]:
        if keep is None or Path(item["label"]).name.split(".")[0] in keep:
            paths = {"image": [str(dataset / p) for p in item["image"]], "label": str(dataset / item["label"])}
            training.append({**item, **paths})
    data["training"] = training
    if isinstance(data.get("sites"), list):  # a listed site without cases is refused: list the kept ones only
        data["sites"] = [s for s in data["sites"] if any(t.get("site") == s for t in training)]
    if edit is not None:
        edit(data)
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
    return folder / "dataset.json"


# ---------------------------------------------------------------- the report


def test_report_has_cases_sites_confusion_and_markdown(
    evaluated: tuple[CliRun, Path], model: Path, dataset: Path
) -> None:
    run, out = evaluated
    report = _report(out)
    assert report["model"]["name"] == "mixed-model" and report["model"]["version"] == 1
    assert report["model"]["path"] == str(model.resolve())
    assert report["dataset"]["path"] == str((dataset / "dataset.json").resolve())
    assert report["dataset"]["sha256"] == sha256_file(dataset / "dataset.json")
    assert report["command"].startswith("uharmony evaluate --model ") and report["seconds"] > 0
    assert report["device"] == "cpu" and report["precision"] in ("float32", "bfloat16")
    assert report["site_given"] is False

    cases = report["cases"]
    assert len(cases) == 8 and [c["site"] for c in cases] == [s for s in SITES for _ in range(2)]
    for c in cases:
        assert set(c) >= CASE_KEYS
        assert list(c["probabilities"]) == SITES and sum(c["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert c["distance"] is not None  # trained bundles carry a gate bank
        expected = [WHOLE] if c["site"] == "hospital-c" else ["lesion core", "edema", WHOLE]
        assert list(c["dice"]) == expected == list(c["hd95_mm"]) == list(c["lesion_dice"])
        assert all(d is None or 0 <= d <= 1 for d in c["lesion_dice"].values())

    sites = report["sites"]
    assert list(sites) == SITES
    assert list(sites["hospital-c"]["dice"]) == [WHOLE] == list(sites["hospital-c"]["hd95_mm"])
    assert list(sites["hospital-a"]["dice"]) == ["lesion core", "edema", WHOLE]
    for name, s in sites.items():
        rows = [c for c in cases if c["site"] == name]
        assert s["cases"] == 2 and s["seen"] is True
        assert s["gate_accuracy"] == pytest.approx(np.mean([c["chosen"] == name for c in rows]), abs=1e-4)
        assert s["dice"][WHOLE] == pytest.approx(np.mean([c["dice"][WHOLE] for c in rows]), abs=1e-4)
        lesion_means = np.mean([c["lesion_dice"][WHOLE] for c in rows])
        assert s["lesion_dice"][WHOLE] == pytest.approx(lesion_means, abs=1e-4)

    confusion = report["gate_confusion"]
    assert list(confusion) == SITES and all(list(row) == SITES for row in confusion.values())
    assert {s: sum(row.values()) for s, row in confusion.items()} == {s: sites[s]["cases"] for s in SITES}
    assert sum(confusion[s][s] for s in SITES) / 8 == pytest.approx(report["gate_accuracy"], abs=1e-4)

    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    assert markdown.startswith("# Evaluation of mixed-model v1")
    assert "| Site | Cases | Dice lesion core | Dice edema | Dice whole lesion |" in markdown
    assert "| Lesion-wise Dice lesion core | Lesion-wise Dice edema | Lesion-wise Dice whole lesion |" in markdown
    assert "## Gate confusion" in markdown and "## Per case" in markdown
    assert all(f"| {s} | 2 |" in markdown for s in SITES)

    events = [json.loads(line) for line in run.stdout.splitlines()]
    progress = [e["done"] for e in events if e["event"] == "progress" and e["stage"] == "evaluate"]
    assert progress == list(range(1, 9))
    result = events[-1]
    assert result["event"] == "result" and result["report"] == str(out)
    assert result["markdown"] == str(out.with_suffix(".md"))
    assert result["sites"] == sites


def test_dice_agrees_with_segment_and_numpy(
    evaluated: tuple[CliRun, Path], model: Path, dataset: Path, tmp_path: Path
) -> None:
    case = next(c for c in _report(evaluated[1])["cases"] if c["case"] == "hospital-a_000")
    entry = next(
        e for e in json.loads((dataset / "dataset.json").read_text())["training"] if "hospital-a_000" in e["label"]
    )
    card = json.loads((model / "model.json").read_text(encoding="utf-8"))
    files = {name: dataset / path for name, path in zip(entry["channels"], entry["image"])}
    seg_path = tmp_path / "seg.nii.gz"
    channels = [files[c["name"]] for c in card["channels"]]
    run = run_main("segment", "--model", model, *channels, "--out", seg_path, "--device", "cpu", "--progress", "json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["gate"]["chosen"] == case["chosen"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / entry["label"])))
    values = {lab["name"]: lab["value"] for lab in card["labels"]}

    def dice(p: np.ndarray, t: np.ndarray) -> float:
        return 2 * float((p & t).sum()) / float(p.sum() + t.sum())

    assert case["dice"][WHOLE] == pytest.approx(dice(seg > 0, truth > 0), abs=6e-5)  # the report rounds to 4 digits
    for k, name in enumerate(entry["labels"], start=1):
        assert case["dice"][name] == pytest.approx(dice(seg == values[name], truth == k), abs=6e-5)


def test_channels_and_labels_are_matched_by_name_and_unseen_sites_reported(
    evaluated: tuple[CliRun, Path], model: Path, dataset: Path, tmp_path: Path
) -> None:
    """Reordered channels and labels give the same scores; a site the model never saw is reported as unseen."""
    full = {c["case"]: c for c in _report(evaluated[1])["cases"]}

    def reorder(data: dict[str, Any]) -> None:
        data["channel_names"] = data["modality"] = {"0": "FLAIR", "1": "T2", "2": "T1"}
        data["labels"] = {"0": "background", "1": "edema", "2": "lesion core"}
        data["training"][2]["site"] = "hospital-z"

    data = _rewrite(dataset, tmp_path / "reordered", ["hospital-a_000", "hospital-c_000", "hospital-d_001"], reorder)
    out = tmp_path / "reordered.json"
    run = _evaluate(model, data, out)
    assert run.code == 0, run.stderr
    report = _report(out)
    keys = ("dice", "hd95_mm", "chosen", "probabilities", "entropy")
    for c in report["cases"]:
        assert {k: c[k] for k in keys} == {k: full[c["case"]][k] for k in keys}
    unseen = report["sites"]["hospital-z"]
    assert unseen["seen"] is False and unseen["gate_accuracy"] is None
    assert unseen["unfamiliar_share"] == float(not full["hospital-d_001"]["familiar"])
    assert sum(report["gate_confusion"]["hospital-z"].values()) == 1
    assert report["gate_accuracy"] == np.mean(
        [full[k]["chosen"] == full[k]["site"] for k in ("hospital-a_000", "hospital-c_000")]
    )
    assert "unseen (" in out.with_suffix(".md").read_text(encoding="utf-8")
    assert "hospital-z: 1 cases" in run.stdout
    # --site given cannot name a site the model does not know
    refused = _evaluate(model, data, tmp_path / "given.json", "--site", "given")
    line = assert_one_line_error(refused)
    assert refused.code == 2 and str(data) in line and "hospital-z" in line
    assert not (tmp_path / "given.json").exists() and not (tmp_path / "given.md").exists()


def test_site_given_segments_each_case_with_its_own_site(model: Path, dataset: Path, tmp_path: Path) -> None:
    data = _rewrite(dataset, tmp_path / "one-each", keep=[f"{s}_000" for s in SITES])
    out = tmp_path / "given.json"
    run = _evaluate(model, data, out, "--site", "given")
    assert run.code == 0, run.stderr
    report = _report(out)
    assert report["site_given"] is True and report["gate_confusion"] is None and report["gate_accuracy"] is None
    assert [c["chosen"] for c in report["cases"]] == [c["site"] for c in report["cases"]] == SITES
    bank = load_bundle(model).bank  # a named site is still measured against the gate bank
    assert bank is not None
    threshold = bank.threshold
    assert all(c["distance"] is not None and c["familiar"] == (c["distance"] <= threshold) for c in report["cases"])
    assert all(s["gate_accuracy"] is None for s in report["sites"].values())
    assert "## Gate confusion" not in out.with_suffix(".md").read_text(encoding="utf-8")


def test_report_records_the_whole_command_and_its_summary_shares_its_name(
    model: Path, dataset: Path, tmp_path: Path
) -> None:
    """Every flag given is in report.json's command (which parses back to the same run); REPORT.json gets REPORT.md."""
    out = tmp_path / "eval-a.json"
    run = _evaluate(model, dataset, out, "--no-mirror", "--progress", "json")
    assert run.code == 0, run.stderr
    report = _report(out)
    words = shlex.split(report["command"])
    assert words[:2] == ["uharmony", "evaluate"] and report["passes"] == 1
    for flag in (["--no-mirror"], ["--progress", "json"], ["--device", "cpu"], ["--site", "auto"]):
        assert any(words[i : i + len(flag)] == flag for i in range(len(words))), (flag, words)
    given = ["--model", model, "--data", dataset, "--out", out, "--device", "cpu", "--no-mirror", "--progress", "json"]
    parse = build_parser().parse_args
    assert vars(parse(words[1:])) == vars(parse(["evaluate", *map(str, given)]))
    assert (tmp_path / "eval-a.md").read_text(encoding="utf-8").startswith("# Evaluation of mixed-model v1")
    logs = [json.loads(line) for line in run.stdout.splitlines() if '"log"' in line]
    assert any("without test-time mirroring" in e["message"] for e in logs)


def test_mirror_passes_reach_the_scores(model: Path, dataset: Path, tmp_path: Path) -> None:
    """--mirror-passes 2 segments every case twice (as is, and flipped left-right): the report says so."""
    out = tmp_path / "eval-2.json"
    run = _evaluate(model, dataset, out, "--mirror-passes", "2", "--progress", "json")
    assert run.code == 0, run.stderr
    assert _report(out)["passes"] == 2
    logs = [json.loads(line) for line in run.stdout.splitlines() if '"log"' in line]
    assert any("with test-time mirroring, 2 passes" in e["message"] for e in logs), logs


# ---------------------------------------------------------------- refusals


def _flair_to_pd(data: dict[str, Any]) -> None:
    data["channel_names"] = data["modality"] = {k: v.replace("FLAIR", "PD") for k, v in data["channel_names"].items()}
    for item in data["training"]:
        item["channels"] = [c.replace("FLAIR", "PD") for c in item["channels"]]


def test_refusals_are_one_line_and_write_nothing(model: Path, dataset: Path, tmp_path: Path) -> None:
    pd = _rewrite(dataset, tmp_path / "pd", edit=_flair_to_pd)
    necrosis = _rewrite(dataset, tmp_path / "necrosis", edit=lambda data: data["labels"].update({"3": "necrosis"}))
    dsbn = tmp_path / "dsbn-v1"
    trained = run_main("train", "--data", dataset, "--out", dsbn, "--norm", "dsbn", "--steps", 1, *TINY_ARGS)
    assert trained.code == 0, trained.stderr
    outs = tmp_path / "outs"
    outs.mkdir()
    report = outs / "r.json"
    nowhere = tmp_path / "nowhere"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file where a folder should be\n")
    cases = {
        "channel the model lacks": ((model, pd, report), [str(pd), "'PD'"]),
        "label the model lacks": ((model, necrosis, report), [str(necrosis), "'necrosis'"]),
        "missing dataset": ((model, nowhere, report), [str(nowhere), "not found"]),
        "not .json": ((model, dataset, outs / "r.txt"), [str(outs / "r.txt"), ".json"]),
        "folder is a file": ((model, dataset, a_file / "r.json"), ["is a file, not a folder"]),
        "overwrites the dataset": ((model, dataset, dataset / "dataset.json"), ["dataset file"]),
        "model without a gate": ((dsbn, dataset, report), [str(dsbn), "--site given"]),
    }
    digest = sha256_file(dataset / "dataset.json")
    for name, ((bundle, data, out), words) in cases.items():
        run = _evaluate(bundle, data, out)
        line = assert_one_line_error(run)
        assert run.code == 2 and all(w in line for w in words), (name, line)
    assert list(outs.iterdir()) == [] and sha256_file(dataset / "dataset.json") == digest
    assert not (dataset / "dataset.md").exists()
