"""The bundled sample case as an entry of Slicer's Sample Data module: its files, node names and checksums.

The sample lives beside the bundled models (Resources/SampleData, a one-case dataset in
the project's layout), so the entry points at local files; Sample Data copies them into
its cache, checks each file's SHA256 and loads them. Each channel's node is named
"<case> <channel>", so the cohort's scene-volume grouping and the channel selectors
recognize it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from UHarmonyLib.resources import SAMPLE_DATA

CATEGORY = "UHarmony"
CASE_NAME = "UHarmony sample"


@dataclass(frozen=True)
class SampleSource:
    """The arguments of `SampleDataLogic.registerCustomSampleDataSource`, one list entry per file."""

    category: str
    name: str
    uris: list[str]
    file_names: list[str]
    node_names: list[str]
    checksums: list[str]
    load_file_types: list[str]


def _sha256(path: Path) -> str:
    return "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_sample(folder: Path = SAMPLE_DATA) -> SampleSource:
    """The sample's channel images (in its dataset's channel order) and its ground truth as a segmentation."""
    data = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    case = data["training"][0]
    images = [folder / p for p in case["image"]]
    label = folder / case["label"]
    files = [*images, label]
    return SampleSource(
        category=CATEGORY,
        name=f"{CASE_NAME} ({case['site']}: {', '.join(case['channels'])})",
        uris=[f.resolve().as_uri() for f in files],
        file_names=[f.name for f in files],
        node_names=[f"{CASE_NAME} {c}" for c in case["channels"]] + [f"{CASE_NAME} ground truth"],
        checksums=[_sha256(f) for f in files],
        load_file_types=["VolumeFile"] * len(images) + ["SegmentationFile"],
    )
