"""`uharmony diagnose` across sites that cannot pool images: `--summarize` at each site, `--peer-summaries` at one.

One `mixed` dataset (4 sites, 3 cases each, 4 mm: a FLAIR-less site, a T1-only site, a site that
annotates the whole lesion only) is diagnosed pooled, and again as hospital-a's own cases plus
the other three sites' summaries; the screens must agree number for number.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, run_main

from UHarmonyLib.diagnose.decide import CAN_TELL, CANNOT_TELL, PEER_CAUTION
from UHarmonyLib.diagnose.summaries import read_summary, summary_record

LOCAL, PEERS = "hospital-a", ("hospital-b", "hospital-c", "hospital-d")
MAX_BYTES_PER_CASE = 8000  # 3 channels of 99 quantiles and 100 histogram bins, whatever the image size


@dataclass(frozen=True)
class Sites:
    pooled: Path  # the dataset folder, every site
    local: Path  # hospital-a's cases only (a dataset.json beside the pooled one)
    summaries: dict[str, Path]  # the peers' summaries, by site


def _one_site(pooled: Path, site: str) -> Path:
    data = json.loads((pooled / "dataset.json").read_text(encoding="utf-8"))
    training = [case for case in data["training"] if case["site"] == site]
    sites = [s for s in data["sites"] if s["name"] == site]
    path = pooled / f"{site}.json"
    path.write_text(json.dumps({**data, "training": training, "sites": sites, "numTraining": len(training)}))
    return path


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Sites:
    root = tmp_path_factory.mktemp("sites")
    pooled = root / "data"
    run = run_main("synth", "--scenario", "mixed", "--out", pooled, "--cases-per-site", 3, "--spacing", 4, "--seed", 0)
    assert run.code == 0, run.stderr
    summaries = {}
    for site in PEERS:
        summaries[site] = root / "shared" / f"{site}.json"
        run = run_main("diagnose", "--data", pooled, "--site", site, "--summarize", summaries[site])
        assert run.code == 0, run.stderr
        assert f"3 cases of site {site}" in run.stdout
    return Sites(pooled, _one_site(pooled, LOCAL), summaries)


def _diagnose(out: Path, *args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary.json, the result event) of a diagnose run with --progress json."""
    run = run_main("diagnose", *args, "--out", out, "--progress", "json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["event"] == "result"
    return json.loads((out / "summary.json").read_text(encoding="utf-8")), result


@pytest.fixture(scope="module")
def pooled(sites: Sites, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _diagnose(tmp_path_factory.mktemp("pooled") / "report", "--data", sites.pooled)[0]


@pytest.fixture(scope="module")
def federated(sites: Sites, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(report folder, summary.json, result event) of hospital-a's diagnosis with the peers' summaries."""
    out = tmp_path_factory.mktemp("federated") / "report"
    summary, result = _diagnose(out, "--data", sites.local, "--peer-summaries", *sites.summaries.values())
    return out, summary, result


def test_summaries_give_the_pooled_screens(pooled: dict[str, Any], federated: tuple[Path, Any, Any]) -> None:
    """Every screen from summaries equals the pooled run's: pairs, structure tests, site table, findings."""
    summary = federated[1]
    for key in ("sites_order", "channels", "sites", "pairs", "structure_tests"):
        assert summary[key] == pooled[key], key
    assert summary["sites_order"] == [LOCAL, *PEERS] and len(summary["pairs"]) >= 6
    assert any(t["p"] is not None for t in summary["structure_tests"])
    decision, before = summary["decision"], pooled["decision"]
    for key in ("recommendation", "appearance_findings", "structural_findings", "thresholds"):
        assert decision[key] == before[key], key
    assert before["appearance_findings"] and before["structural_findings"]  # both screens have numbers to compare
    assert decision["cautions"] == [*before["cautions"], PEER_CAUTION]
    without_names = [{k: v for k, v in case.items() if k != "case"} for case in summary["cases"]]
    assert without_names == [{k: v for k, v in case.items() if k != "case"} for case in pooled["cases"]]
    assert [c["case"] for c in summary["cases"][3:6]] == ["hospital-b #1", "hospital-b #2", "hospital-b #3"]


def _lists(value: Any) -> list[list[Any]]:
    """Every list inside a JSON value."""
    if isinstance(value, dict):
        return [found for v in value.values() for found in _lists(v)]
    if isinstance(value, list):
        return [value, *(found for v in value for found in _lists(v))]
    return []


def test_a_summary_holds_case_features_only(sites: Sites) -> None:
    """No voxels (no list longer than a histogram), no path, file or case name, a few kB per case."""
    file = sites.summaries["hospital-b"]
    text = file.read_text(encoding="utf-8")
    summary = json.loads(text)
    assert set(summary) == {
        "format", "schema_version", "software", "site", "channels", "labels", "case_count", "measurement", "cases",
    }  # fmt: skip
    assert (summary["site"], summary["case_count"], summary["channels"]) == (
        "hospital-b",
        3,
        ["T1", "T2"],
    )  # FLAIR-less
    for case in summary["cases"]:
        assert set(case) == {"spacing", "labels", "bias", "channels", "lesion_ml", "lesions"}
        assert all(set(lesion) == {"ml", "centre_mm"} for lesion in case["lesions"])
        assert all(set(channel) == {"quantiles", "histogram", "snr"} for channel in case["channels"].values())
    assert max(len(found) for found in _lists(summary)) == 100  # the histogram: 100 bins, no image
    dataset = json.loads((sites.pooled / "dataset.json").read_text(encoding="utf-8"))
    names = [Path(p).name.split(".")[0] for case in dataset["training"] for p in [*case["image"], case["label"]]]
    for leak in [str(sites.pooled), "imagesTr", "labelsTr", ".nii", dataset["name"], *names]:
        assert leak not in text, leak
    assert len(text.encode("utf-8")) < MAX_BYTES_PER_CASE * summary["case_count"]
    assert sorted(p.name for p in file.parent.iterdir()) == [f"{site}.json" for site in PEERS]  # no temporary left


def test_a_one_site_dataset_needs_no_site_name(sites: Sites, tmp_path: Path) -> None:
    """DATA of one site is summarized without --site; --progress json ends with the result event."""
    out = tmp_path / "a" / "summary.json"
    run = run_main("diagnose", "--data", sites.local, "--summarize", out, "--progress", "json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["event"] == "result" and (result["site"], result["cases"]) == (LOCAL, 3)
    assert result["bytes"] == out.stat().st_size and read_summary(out).site == LOCAL


def test_a_summary_reads_back_as_written(sites: Sites) -> None:
    """Read and written again, a summary is the same record: quantiles, histograms and lesions survive as written."""
    for file in sites.summaries.values():
        peer = read_summary(file)
        assert summary_record(peer.site, peer.channels, peer.cases) == json.loads(file.read_text(encoding="utf-8"))


def test_the_report_says_what_summaries_can_and_cannot_tell(federated: tuple[Path, Any, Any]) -> None:
    """summary.json, the result event and the page state the can/cannot lists and that the advice is provisional."""
    out, summary, result = federated
    decision = summary["decision"]
    assert decision["provisional"] is True
    assert decision["can_tell"] == result["can_tell"] == CAN_TELL
    assert decision["cannot_tell"] == result["cannot_tell"] == CANNOT_TELL
    assert any("trials" in line for line in CANNOT_TELL) and any("image and label" in line for line in CANNOT_TELL)
    assert [p["site"] for p in summary["peers"]] == list(PEERS) and all(p["cases"] == 3 for p in summary["peers"])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>What site summaries can and cannot tell</h2>" in page and "provisional" in page
    for line in [*CAN_TELL, *CANNOT_TELL, PEER_CAUTION]:
        assert html.escape(line) in page, line
    assert "hospital-b, hospital-c, hospital-d from their site summaries" in page


def test_a_pooled_report_is_unchanged(pooled: dict[str, Any]) -> None:
    """Without --peer-summaries, neither the decision nor the summary gains the summaries' caveats."""
    assert "peers" not in pooled and not {"provisional", "can_tell", "cannot_tell"} & set(pooled["decision"])
    assert PEER_CAUTION not in pooled["decision"]["cautions"]


# ---------------------------------------------------------------- refusals


def _edited(change: Callable[[dict[str, Any]], None]) -> Callable[[Sites, Path], list[Path]]:
    """A bad summary: hospital-b's, changed, written as bad.json (the summaries given: [bad.json])."""

    def write(sites: Sites, folder: Path) -> list[Path]:
        summary = json.loads(sites.summaries["hospital-b"].read_text(encoding="utf-8"))
        change(summary)
        (folder / "bad.json").write_text(json.dumps(summary), encoding="utf-8")
        return [folder / "bad.json"]

    return write


def _text(text: str) -> Callable[[Sites, Path], list[Path]]:
    def write(_sites: Sites, folder: Path) -> list[Path]:
        (folder / "bad.json").write_text(text, encoding="utf-8")
        return [folder / "bad.json"]

    return write


def _renamed_channel(summary: dict[str, Any]) -> None:
    summary["channels"] = ["t1", "T2", "FLAIR"]
    for case in summary["cases"]:
        case["channels"]["t1"] = case["channels"].pop("T1")


def _empty(summary: dict[str, Any]) -> None:
    summary.update(cases=[], case_count=0)


def _twice(sites: Sites, folder: Path) -> list[Path]:
    """hospital-b's summary, and a copy of it under another file name."""
    copy = folder / "bad.json"
    copy.write_bytes(sites.summaries["hospital-b"].read_bytes())
    return [sites.summaries["hospital-b"], copy]


BAD_SUMMARIES: dict[str, tuple[Callable[[Sites, Path], list[Path]], str]] = {
    "not-json": (_text("{'site': 'hospital-b',"), "not a JSON file"),
    "a-dataset-json": (_text('{"training": [], "labels": {"0": "background"}}'), "not a diagnose site summary"),
    "missing-file": (lambda _sites, folder: [folder / "bad.json"], "site summary not found"),
    "other-schema-version": (_edited(lambda s: s.update(schema_version=2)), "schema version 2, but this UHarmony"),
    "other-measurement": (
        _edited(lambda s: s["measurement"].update(lesion_margin_mm=2.0)),
        "measured with other settings",
    ),
    "channel-named-otherwise": (
        _edited(_renamed_channel),
        "channel 't1' is not a channel of the local data (T1, T2, FLAIR)",
    ),
    "a-local-site": (_edited(lambda s: s.update(site=LOCAL)), "site 'hospital-a' is also a site of the local data"),
    "a-site-twice": (_twice, "site 'hospital-b' is also a site of"),
    "empty": (_edited(_empty), "empty: the summary holds no cases"),
    "case-count-wrong": (_edited(lambda s: s.update(case_count=4)), "says 4 cases but holds 3"),
    "quantiles-cut": (
        _edited(lambda s: s["cases"][1]["channels"]["T2"].update(quantiles=[0.0] * 5)),
        "cases[1].channels.T2.quantiles: expected 99 finite numbers",
    ),
    "bias-not-a-number": (_edited(lambda s: s["cases"][0].update(bias="high")), "cases[0]: 'bias' is not a number"),
    "site-name-a-path": (_edited(lambda s: s.update(site="../../x")), "site '../../x': use 1-64 letters"),
}


@pytest.mark.bad_input("diagnose --peer-summaries", words={k: v[1] for k, v in BAD_SUMMARIES.items()})
@pytest.mark.parametrize("case", list(BAD_SUMMARIES))
def test_a_bad_summary_is_refused(sites: Sites, tmp_path: Path, case: str) -> None:
    """Refused before any measuring: one error line naming the summary file and the problem, exit code 2, no report."""
    make, words = BAD_SUMMARIES[case]
    summaries = make(sites, tmp_path)
    out = tmp_path / "report"
    run = run_main("diagnose", "--data", sites.local, "--peer-summaries", *summaries, "--out", out)
    line = assert_one_line_error(run)
    assert run.code == 2 and line.startswith(f"uharmony: error: {summaries[-1]}: ") and words in line, line
    assert not out.exists()


def _options(sites: Sites, folder: Path) -> dict[str, list[Any]]:
    b, summary, out = sites.summaries["hospital-b"], folder / "site.json", folder / "report"
    return {
        "trials-with-peer-summaries": ["--data", sites.local, "--peer-summaries", b, "--out", out, "--trials"],
        "summarize-with-out": ["--data", sites.pooled, "--site", PEERS[0], "--summarize", summary, "--out", out],
        "summarize-with-peer-summaries": ["--data", sites.local, "--summarize", summary, "--peer-summaries", b],
        "site-without-summarize": ["--data", sites.pooled, "--site", PEERS[0], "--out", out],
        "summarize-several-sites": ["--data", sites.pooled, "--summarize", summary],
        "summarize-an-unknown-site": ["--data", sites.pooled, "--site", "hospital-z", "--summarize", summary],
        "no-out-nor-summarize": ["--data", sites.pooled],
    }


REFUSED_OPTIONS = {
    "trials-with-peer-summaries": "--trials cannot use --peer-summaries",
    "summarize-with-out": "--out does not go with --summarize",
    "summarize-with-peer-summaries": "--peer-summaries does not go with --summarize",
    "site-without-summarize": "--site names the site to summarize: add --summarize",
    "summarize-several-sites": "name the one to summarize with --site",
    "summarize-an-unknown-site": "no site named 'hospital-z' (its sites: hospital-a, hospital-b",
    "no-out-nor-summarize": "--out REPORT_DIR is required",
}


@pytest.mark.bad_input("diagnose --summarize, --peer-summaries: options", words=REFUSED_OPTIONS)
@pytest.mark.parametrize("case", list(REFUSED_OPTIONS))
def test_options_that_do_not_go_together_are_refused(sites: Sites, tmp_path: Path, case: str) -> None:
    """Refused before any measuring: one error line naming the option or DATA's sites, exit code 2, nothing written."""
    run = run_main("diagnose", *_options(sites, tmp_path)[case])
    assert run.code == 2 and REFUSED_OPTIONS[case] in assert_one_line_error(run)
    assert list(tmp_path.iterdir()) == []


def test_trials_need_pooled_images_and_point_to_federated(sites: Sites, tmp_path: Path) -> None:
    """--trials with --peer-summaries says why (trials need every site's images and labels) and what to use."""
    args = _options(sites, tmp_path)["trials-with-peer-summaries"]
    line = assert_one_line_error(run_main("diagnose", *args))
    assert "every site's images and labels in one place" in line and "`uharmony federated`" in line
