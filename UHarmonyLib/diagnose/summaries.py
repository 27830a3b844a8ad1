"""Site summaries: what one site publishes so that sites which cannot pool images can still be diagnosed.

A summary is what leaves the hospital, so it holds exactly the per-case features diagnose
compares (features.py) and nothing from which an image, a file or a patient could be found:
per channel, the normal-tissue intensity quantiles and histogram after the robust z-score
and the SNR (distributions: no voxel and no position); the bias-field strength; voxel sizes;
the label names a case annotates; each lesion's volume and its centre relative to the head's
centre (not scanner coordinates). No voxels, no file paths, no dataset name or checksum, and
no case names, which are often a hospital's record numbers: cases are numbered when read,
in the order written. `measurement` records the settings the features depend on, so summaries
measured differently are refused rather than compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from UHarmonyLib import __version__
from UHarmonyLib.data.names import SITE_NAME, SITE_NAME_RULE
from UHarmonyLib.diagnose.features import (
    BACKGROUND_MARGIN,
    BIAS_SETTINGS,
    HIST_EDGES,
    LESION_MARGIN_MM,
    PROBS,
    CaseFeatures,
    ChannelFeatures,
)
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.files.json_file import read_json

FORMAT = "uharmony-diagnose-summary"
SCHEMA_VERSION = 1  # bump when the fields of a summary change


def measurement() -> dict[str, Any]:
    """The settings the features depend on, as JSON gives them back: equal settings, comparable summaries."""
    settings = {
        "quantile_probs": [float(PROBS[0]), float(PROBS[-1]), len(PROBS)],
        "histogram": [float(HIST_EDGES[0]), float(HIST_EDGES[-1]), len(HIST_EDGES) - 1],
        "lesion_margin_mm": LESION_MARGIN_MM,
        "background_margin_voxels": BACKGROUND_MARGIN,
        "bias": BIAS_SETTINGS,
    }
    return json.loads(json.dumps(settings))


def summary_record(site: str, channels: Sequence[str], cases: list[CaseFeatures]) -> dict[str, Any]:
    """One site's summary: its cases' features without case names, in `channels` order."""
    acquired = [ch for ch in channels if any(ch in c.channels for c in cases)]
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "software": f"UHarmonyLib {__version__}",
        "site": site,
        "channels": acquired,
        "labels": list(dict.fromkeys(n for c in cases for n in c.labels)),
        "case_count": len(cases),
        "measurement": measurement(),
        "cases": [
            {
                "spacing": c.spacing,
                "labels": c.labels,
                "bias": c.bias,
                "channels": {ch: asdict(c.channels[ch]) for ch in acquired if ch in c.channels},
                "lesion_ml": c.lesion_ml,
                "lesions": c.lesions,
            }
            for c in cases
        ],
    }


@dataclass
class PeerSummary:
    """Another site's published cases, as read and checked."""

    file: Path
    site: str
    software: str
    channels: list[str]
    cases: list[CaseFeatures]
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "file": str(self.file),
            "sha256": self.sha256,
            "software": self.software,
            "cases": len(self.cases),
        }


KINDS: dict[Any, str] = {list: "a list", dict: "an object", str: "a text", (int, float): "a number"}


def _need(record: Any, key: str, kind: Any, where: str) -> Any:
    """record[key], refused unless `record` is an object holding a `kind` (a KINDS key) there."""
    if not isinstance(record, dict) or key not in record:
        raise InputError(f"{where}: no {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"{where}: {key!r} is not {KINDS[kind]}")
    return value


def _numbers(values: list[Any], where: str, length: int | None = None) -> list[float]:
    """Finite numbers (exactly `length` of them, if given); JSON's NaN and Infinity are refused."""
    finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not finite or (length is not None and len(values) != length):
        raise InputError(f"{where}: expected {length or 'only'} finite numbers")
    return [float(v) for v in values]


def _number(record: Any, key: str, where: str) -> float:
    return _numbers([_need(record, key, (int, float), where)], f"{where}: {key!r}")[0]


def _texts(values: list[Any], where: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise InputError(f"{where}: expected names (texts)")
    return values


def _channel(record: Any, where: str) -> ChannelFeatures:
    return ChannelFeatures(
        quantiles=_numbers(_need(record, "quantiles", list, where), f"{where}.quantiles", len(PROBS)),
        histogram=_numbers(_need(record, "histogram", list, where), f"{where}.histogram", len(HIST_EDGES) - 1),
        snr=None if record.get("snr") is None else _number(record, "snr", where),
    )


def _lesion(record: Any, where: str) -> dict[str, Any]:
    centre = _numbers(_need(record, "centre_mm", list, where), f"{where}.centre_mm", 3)
    return {"ml": _number(record, "ml", where), "centre_mm": centre}


def _case(record: Any, name: str, site: str, channels: list[str], where: str) -> CaseFeatures:
    """One case's features, every field checked: a summary comes from elsewhere."""
    acquired = _need(record, "channels", dict, where)
    unknown = [ch for ch in acquired if ch not in channels]
    if unknown:
        raise InputError(f"{where}: channel {unknown[0]!r} is not one of the summary's channels")
    if not acquired:
        raise InputError(f"{where}: no channel")
    return CaseFeatures(
        case=name,
        site=site,
        spacing=_numbers(_need(record, "spacing", list, where), f"{where}.spacing", 3),
        labels=_texts(_need(record, "labels", list, where), f"{where}.labels"),
        bias=_number(record, "bias", where),
        channels={ch: _channel(acquired[ch], f"{where}.channels.{ch}") for ch in channels if ch in acquired},
        lesion_ml=_number(record, "lesion_ml", where),
        lesions=[_lesion(r, f"{where}.lesions[{k}]") for k, r in enumerate(_need(record, "lesions", list, where))],
    )


def read_summary(path: Path) -> PeerSummary:
    """A site's summary file, checked before any work; one line naming the file and the problem otherwise."""
    data = read_json(Path(path), "site summary", "not a JSON file")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(
            f"{path}: not a diagnose site summary (a site writes one with `uharmony diagnose --summarize`)"
        )
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"{path}: schema version {data.get('schema_version')!r}, but this UHarmony reads {SCHEMA_VERSION}: "
            f"summarize the site again with UHarmonyLib {__version__}"
        )
    if data.get("measurement") != measurement():
        raise InputError(f"{path}: measured with other settings than UHarmonyLib {__version__}'s: summarize again")
    site = _need(data, "site", str, str(path))
    if not SITE_NAME.fullmatch(site):
        raise InputError(f"{path}: site {site!r}: {SITE_NAME_RULE}")
    channels = _texts(_need(data, "channels", list, str(path)), f"{path}: channels")
    records = _need(data, "cases", list, str(path))
    if not records:
        raise InputError(f"{path}: empty: the summary holds no cases")
    if data.get("case_count") != len(records):
        raise InputError(f"{path}: says {data.get('case_count')!r} cases but holds {len(records)}")
    cases = [_case(r, f"{site} #{k + 1}", site, channels, f"{path}: cases[{k}]") for k, r in enumerate(records)]
    return PeerSummary(Path(path), site, str(data.get("software")), channels, cases, sha256_file(Path(path)))


def check_peers(peers: Sequence[PeerSummary], local_sites: Sequence[str], channels: Sequence[str]) -> None:
    """Each peer is a site of its own (not a local one, not another peer's) and names its channels as DATA does."""
    owner = dict.fromkeys(local_sites, "the local data")
    for peer in peers:
        if peer.site in owner:
            raise InputError(
                f"{peer.file}: site {peer.site!r} is also a site of {owner[peer.site]}; each site counts once"
            )
        owner[peer.site] = str(peer.file)
        unknown = [ch for ch in peer.channels if ch not in channels]
        if unknown:
            raise InputError(
                f"{peer.file}: channel {unknown[0]!r} is not a channel of the local data ({', '.join(channels)}): "
                "every site must name its channels alike"
            )
