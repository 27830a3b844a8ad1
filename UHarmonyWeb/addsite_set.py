"""The local add-site set: corrected cases kept on the server until there are enough to add a site.

Cases arrive one at a time (each opened, segmented, corrected, then saved), so the set lives on
disk in the layout `uharmony add-site` reads: `imagesTr/`, `labelsTr/` and one `dataset.json`.
Each case is written by the desktop module's own exporter (UHarmonySlicerLib.addsite.export_dataset)
and then joined to the set. Running add-site writes the model's next version into the user models
folder; the parent bundle is never modified.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import slicer
from UHarmonySlicerLib.addsite import Pair, add_site_steps, export_dataset, segment_labels
from UHarmonySlicerLib.engine import EventCallback, Job
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.models import ModelInfo, next_version_folder
from UHarmonySlicerLib.volumes import check_channels

from UHarmonyWeb.workspace import slug

DATASET = "dataset.json"


def set_folder(sets: Path, site: str) -> Path:
    return sets / slug(site, "site")


def read_set(folder: Path) -> dict[str, Any] | None:
    """The set's dataset.json, or None while no case has been saved."""
    path = folder / DATASET
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def case_count(folder: Path) -> int:
    dataset = read_set(folder)
    return len(dataset["training"]) if dataset else 0


def save_case(scene: slicer.vtkMRMLScene, folder: Path, pair: Pair, site: str, model: ModelInfo) -> int:
    """Add one corrected case to the site's set (created on first use); returns how many cases it holds.

    The case's files get the next free number; the set must have the model's channels, so a set is
    never mixed from models that read different images.
    """
    if not site.strip():
        raise InputRefused("Name the new site first.")
    check_channels(pair.volumes, model.channel_names)
    segment_labels(pair.segmentation, model.labels)  # segments named like the model's labels, or refused
    dataset = read_set(folder)
    if dataset is not None:
        channels = list(dataset["channel_names"].values())
        if channels != model.channel_names:
            raise InputRefused(
                f"The set of site {dataset['name']} holds cases with channels {', '.join(channels)}; "
                f"the model {model.display_name} reads {', '.join(model.channel_names)}."
            )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving-") as temp:
        one = json.loads(
            export_dataset(scene, Path(temp) / "case", [pair], site, model.channels, model.labels).read_text()
        )
        if dataset is None:
            dataset = {**one, "training": []}
        entry = one["training"][0]
        old_case = Path(entry["label"]).name.removesuffix(".nrrd")
        new_case = f"{slug(site, 'site')}_{len(dataset['training']):03d}"
        moved = {}
        for rel in [*entry["image"], entry["label"]]:
            target = rel.replace(old_case, new_case, 1)
            (folder / target).parent.mkdir(exist_ok=True)
            shutil.move(Path(temp) / "case" / rel, folder / target)
            moved[rel] = target
    dataset["training"].append(
        {**entry, "image": [moved[rel] for rel in entry["image"]], "label": moved[entry["label"]]}
    )
    dataset["numTraining"] = len(dataset["training"])
    dataset["description"] = f"Cases of site {site} corrected in the UHarmony browser edition."
    (folder / DATASET).write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return len(dataset["training"])


def add_site_set_job(
    model: ModelInfo,
    folder: Path,
    site: str,
    user_folder: Path,
    model_folders: Sequence[Path] = (),
    steps: int = 150,
    device: str = "auto",
    on_event: EventCallback | None = None,
) -> Job:
    """A job that fine-tunes `model` for the set's site and returns the new version (`AddSiteResult`)."""
    if not model.usable:
        raise InputRefused(f"The model {model.path.name} cannot be used: {model.problem}")
    if site in model.site_names:
        raise InputRefused(f"The model already has a site named '{site}'; choose another name.")
    if case_count(folder) == 0:
        raise InputRefused(f"No case of site {site} has been saved yet: correct a segmentation and save it first.")
    if steps < 1:
        raise InputRefused("Training needs at least 1 step.")
    out = next_version_folder(model, model_folders, user_folder)

    return Job(lambda _temp: add_site_steps(model, folder / DATASET, site, out, steps, device), on_event, device)
