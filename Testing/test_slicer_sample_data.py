"""The bundled sample as a Sample Data entry: every file exists, its checksum matches, and its node names group
into one case for the default model's channels."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from slicer_helpers import MODULE_DIR  # noqa: F401  (puts the module folder on sys.path)
from UHarmonySlicerLib.cohort import group_cases
from UHarmonySlicerLib.models import read_model
from UHarmonySlicerLib.sample_data import CASE_NAME, bundled_sample

from UHarmonyLib.resources import default_model


def test_the_sample_entry_points_at_the_bundled_files_with_their_checksums() -> None:
    source = bundled_sample()
    n = len(source.uris)
    assert n == len(source.file_names) == len(source.node_names) == len(source.checksums) == len(
        source.load_file_types)  # fmt: skip
    assert source.load_file_types[-1] == "SegmentationFile" and set(source.load_file_types[:-1]) == {"VolumeFile"}
    for uri, name, checksum in zip(source.uris, source.file_names, source.checksums):
        path = Path(url2pathname(urlparse(uri).path))
        assert path.name == name and checksum == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_sample_nodes_form_one_case_of_the_default_model() -> None:
    channels = read_model(default_model()).channel_names
    source = bundled_sample()
    volumes = list(zip(source.node_names[:-1], source.file_names[:-1]))
    cases = group_cases(volumes, channels)
    assert [c.name for c in cases] == [CASE_NAME] and len(cases[0].sources) == len(channels)
    assert all(node.endswith(channel) for node, channel in zip(source.node_names, channels))
