"""Opening a case: the bundled sample, a folder on the server, or files sent from the browser.

A case is its image volumes in the scene; which volume is which model channel is decided when a
model runs, by the volume names (`CASE_0000`, `CASE_flair`, "UHarmony sample flair"), as the
desktop module's cohort runs decide it, so one case can go through models with other channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import slicer
from trame_slicer.core import SlicerApp
from trame_slicer.core.volumes_reader import VolumesReader
from UHarmonySlicerLib.cohort import image_stem, split_channel
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.sample_data import CASE_NAME, bundled_sample


@dataclass
class Case:
    """One open case: its image volumes in load order, and whether they came from DICOM files (then which).

    The DICOM files are kept so a DICOM SEG export can reference the very images it segments.
    """

    name: str
    volumes: list[slicer.vtkMRMLScalarVolumeNode]
    dicom: bool = False
    files: list[Path] = field(default_factory=list)

    @property
    def reference(self) -> slicer.vtkMRMLScalarVolumeNode:
        """The volume shown in the slice views and edited against (the first one)."""
        return self.volumes[0]


def load_files(app: SlicerApp, paths: Sequence[Path], name: str = "") -> Case:
    """Image files (NIfTI, NRRD, MetaImage, or the files of a DICOM series) as one case."""
    files = [str(p) for p in paths]
    if not files:
        raise InputRefused("No file was given.")
    dicom = VolumesReader.contains_dcm_volume(files)
    nodes = app.io_manager.load_volumes(files)
    volumes = [n for n in nodes if n is not None and n.GetClassName() == "vtkMRMLScalarVolumeNode"]
    if not volumes:
        raise InputRefused(f"No image volume could be read from {', '.join(Path(f).name for f in files[:3])}.")
    if not dicom:  # one file per volume: name each after its file, as the channel matching expects
        for node, path in zip(volumes, paths):
            node.SetName(image_stem(Path(path)) or Path(path).name)
    dicom_files = [Path(f) for f in files] if dicom else []
    return Case(name or case_name([v.GetName() for v in volumes]), volumes, dicom, dicom_files)


def load_sample(app: SlicerApp) -> Case:
    """The bundled sample case (its channel images; its ground truth stays out of the editor)."""
    sample = bundled_sample()
    images = [
        (Path(url2pathname(urlparse(uri).path)), node_name)
        for uri, node_name, kind in zip(sample.uris, sample.node_names, sample.load_file_types)
        if kind == "VolumeFile"
    ]
    case = load_files(app, [path for path, _ in images], CASE_NAME)
    for node, (_, node_name) in zip(case.volumes, images):
        node.SetName(node_name)
    return case


def folder_files(folder: Path) -> list[Path]:
    """The image files directly inside a server folder, else all its files (a DICOM series)."""
    if not folder.is_dir():
        raise InputRefused(f"{folder} is not a folder on the server.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if image_stem(p) is not None]
    if not (images or files):
        raise InputRefused(f"{folder} holds no files.")
    return images or files


def case_name(names: Sequence[str]) -> str:
    """What the channels' names share ("BraTS_001" of "BraTS_001_flair", "BraTS_001_t1"), else the first name."""
    shared = names[0]
    for name in names[1:]:
        while not name.startswith(shared):
            shared = shared[:-1]
    if any(name != shared for name in names):  # cut back to a separator: "case_000" of "case_0000", "case_0001"
        shared = shared[: max(shared.rfind(c) for c in "_- .")] if any(c in shared for c in "_- .") else ""
    return shared.rstrip("_- .") or names[0]


def channel_volumes(case: Case, channel_names: Sequence[str]) -> list[slicer.vtkMRMLScalarVolumeNode | None]:
    """The case's volume for each model channel (None: the case lacks it and the model sees zeros).

    Names decide (`_0000`-style indices or channel names); a case whose names say nothing gives
    its volumes in load order when there are exactly as many as the model has channels.
    """
    slots: list[slicer.vtkMRMLScalarVolumeNode | None] = [None] * len(channel_names)
    for volume in case.volumes:
        found = split_channel(volume.GetName(), channel_names)
        if found is not None and slots[found[1]] is None:
            slots[found[1]] = volume
    if any(slots):
        return slots
    if len(case.volumes) == len(channel_names):
        return list(case.volumes)
    raise InputRefused(
        f"Cannot tell which of the case's {len(case.volumes)} images is which of the model's channels "
        f"({', '.join(channel_names)}): name the files CASE_0000, CASE_0001, ... or CASE_{channel_names[0]}, ..."
    )
