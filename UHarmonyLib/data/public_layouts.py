"""Public brain-tumour datasets read as downloaded: BraTS 2023/2024 case folders and MSD Task01_BrainTumour.

Both become the Decathlon structure `datasets.py` reads, in the bundled models' channel
names (flair, t1, t1ce, t2) and label names (lesion core, edema), so a downloaded copy
trains, evaluates or adapts a model with no conversion step and no copied files. Label
files keep their own values; `label_values` (value -> label name, see plan.py) says what
each value is:

    BraTS 2023/2024   1 NCR -> lesion core, 2 SNFH -> edema, 3 ET -> lesion core,
                      4 RC (2024 post-treatment resection cavity) -> background: not tumour
    MSD Task01        1 edema -> edema, 2 non-enhancing tumour -> lesion core,
                      3 enhancing tumour -> lesion core

Only the BraTS 2023 file naming (CASE/CASE-t1n.nii.gz ...) is recognised: BraTS 2017-2021
used 4 for the enhancing tumour, which this table would silently call background.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from UHarmonyLib.data.labels import FULL_LABELS
from UHarmonyLib.data.mr_physics import BRATS_NAMES, PHYSICS_CHANNELS
from UHarmonyLib.errors import InputError

log = logging.getLogger(__name__)

CORE, EDEMA = FULL_LABELS
MODEL_LABELS = {"0": "background", "1": CORE, "2": EDEMA}
CHANNELS = [BRATS_NAMES[c] for c in PHYSICS_CHANNELS]  # flair, t1, t1ce, t2: the bundled models' order
CHANNEL_TABLE = {str(i): c for i, c in enumerate(CHANNELS)}

BRATS_FILES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}  # file suffix -> channel
BRATS_FILE = re.compile(r"(?P<case>.+)-(?P<kind>t1n|t1c|t2w|t2f|seg)\.nii(?:\.gz)?")
BRATS_CASE = re.compile(r"(?P<cohort>.+?)-\d+-\d+")  # BraTS-GLI-00000-000: cohort BraTS-GLI
BRATS_VALUES = {"0": "background", "1": CORE, "2": EDEMA, "3": CORE, "4": "background"}

MSD_LABELS = ["background", "edema", "non-enhancing tumor", "enhancing tumor"]  # Task01, spelled "tumour" there
MSD_VALUES = {"0": "background", "1": EDEMA, "2": CORE, "3": CORE}


def _listing(folder: Path) -> list[Path]:
    """A folder's entries, sorted; an unreadable folder is a one-line error."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise InputError(f"{folder}: cannot list the folder ({e.strerror})") from e


def _case_files(case: Path) -> dict[str, Path]:
    """A case folder's BraTS files by kind (t1n, ..., seg); other files are not ours and are left alone.

    Hidden files are skipped: archives made on macOS hold a `._CASE-t1n.nii.gz` beside each file.
    """
    found: dict[str, Path] = {}
    for path in _listing(case):
        match = BRATS_FILE.fullmatch(path.name)
        if match is None or path.name.startswith("."):
            continue
        kind = match["kind"]
        if match["case"] != case.name:
            raise InputError(f"{path}: file prefix '{match['case']}' differs from its case folder's name '{case.name}'")
        if kind in found:
            raise InputError(f"{case}: two -{kind} files ({found[kind].name}, {path.name})")
        found[kind] = path
    return found


def _brats_entry(case: Path, files: dict[str, Path], absent: list[str]) -> dict[str, Any]:
    """One case folder as a Decathlon training entry (absolute paths); notes its missing channel files."""
    if "seg" not in files:
        raise InputError(f"{case}: no -seg file: a training case needs labels")
    kinds = [k for k in BRATS_FILES if k in files]
    if not kinds:
        raise InputError(f"{case}: no -t1n, -t1c, -t2w or -t2f file beside its -seg file")
    if len(kinds) < len(BRATS_FILES):
        absent.append(f"{case.name} (no {', '.join('-' + k for k in BRATS_FILES if k not in files)})")
    cohort = BRATS_CASE.fullmatch(case.name)
    return {
        "case": case.name,
        "image": [str(files[k]) for k in kinds],
        "label": str(files["seg"]),
        "channels": [BRATS_FILES[k] for k in kinds],
        "site": cohort["cohort"] if cohort else "BraTS",
    }


def read_brats_folder(folder: Path) -> dict[str, Any] | None:
    """A folder of BraTS 2023/2024 case folders as a Decathlon dataset; None if it holds no BraTS case folder.

    A folder beside the case folders that is not one (imagesTr, a renamed case) is refused: one
    dataset folder, one layout. A case lacking channel files has those channels absent, as any
    dataset's case may; the missing files are logged once per read.
    """
    subfolders = [p for p in _listing(Path(folder)) if p.is_dir() and not p.name.startswith(".")]
    cases = {case: _case_files(case) for case in subfolders}
    if not any(cases.values()):
        return None
    other = next((case for case, files in cases.items() if not files), None)
    if other is not None:
        raise InputError(
            f"{folder}: mixes layouts: {other.name} is not a BraTS case folder (no CASE-t1n, -t1c, -t2w, -t2f or "
            "-seg .nii.gz file) but other folders are; keep only BraTS case folders in it"
        )
    absent: list[str] = []
    training = [_brats_entry(case, files, absent) for case, files in cases.items()]
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        log.warning("%s: %d case(s) lack channel files, read as absent channels: %s", folder, len(absent), shown)
    return {
        "name": Path(folder).name,
        "description": "BraTS 2023/2024 case folders, read in place (UHarmonyLib.data.public_layouts)",
        "layout": "brats",
        "channel_names": dict(CHANNEL_TABLE),
        "modality": dict(CHANNEL_TABLE),
        "labels": dict(MODEL_LABELS),
        "label_values": dict(BRATS_VALUES),
        "numTraining": len(training),
        "training": training,
    }


def folder_sha256(folder: Path, data: dict[str, Any]) -> str:
    """A folder dataset's checksum, as a dataset.json's: its cases and files, relative to the folder."""

    def relative(path: str) -> str:
        return Path(os.path.relpath(path, folder)).as_posix()

    training = [
        {**item, "image": [relative(p) for p in item["image"]], "label": relative(item["label"])}
        for item in data["training"]
    ]
    text = json.dumps({**data, "training": training}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_msd_brain(label_names: list[str]) -> bool:
    """Whether a dataset's label names (by value, background first) are MSD Task01_BrainTumour's."""
    return [n.lower().replace("tumour", "tumor") for n in label_names] == MSD_LABELS


def translate_msd_brain(data: dict[str, Any], channel_names: list[str]) -> dict[str, Any]:
    """MSD Task01's dataset.json in the project's names, its label values read through `label_values`.

    Its channels FLAIR, T1w, t1gd, T2w become flair, t1, t1ce, t2 (any other keeps its name).
    """
    table = {str(i): BRATS_NAMES.get(n, n) for i, n in enumerate(channel_names)}
    return {
        **data,
        "layout": "msd-task01",
        "channel_names": table,
        "modality": dict(table),
        "labels": dict(MODEL_LABELS),
        "label_values": dict(MSD_VALUES),
    }
