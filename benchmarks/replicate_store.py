"""Finished replicates kept beside the figures, so that a benchmark longer than one session grows across sessions.

A replicate of `benchmarks/federated.py` trains for 25 to 60 minutes on two cores, and its
models live in a temporary work folder that a new machine does not have. Once a replicate
is finished, its scored case records and its federations' curves (no models: they are
large and a replicate's figures need none) are written to `{folder}/{name}.json` with the
key it ran under (settings, seeds, evaluation). A later run asking for the same name loads
it when the key matches, and trains only the replicates it lacks; a run cut off loses
only the replicate in progress. A different key is refused in one line (delete the file, or
choose another --store, to train it again): mixing two settings in one table would mislead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol import Scored

from UHarmonyLib.files.atomic import write_text_atomic


def _path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def load(folder: Path | None, name: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored payload of `name`, or None when there is none (or no store)."""
    if folder is None or not _path(folder, name).is_file():
        return None
    path = _path(folder, name)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        stored_key, payload = doc["key"], doc["payload"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a stored replicate ({exc}); delete it to train the replicate again") from None
    if stored_key != key:
        differ = sorted(k for k in {*stored_key, *key} if stored_key.get(k) != key.get(k))
        raise SystemExit(f"{path}: stored with other {', '.join(differ)}; delete it or choose another --store")
    return dict(payload)


def save(folder: Path | None, name: str, key: dict[str, Any], payload: dict[str, Any]) -> None:
    """Write `payload` under `key` atomically (nothing when there is no store)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(_path(folder, name), json.dumps({"key": key, "payload": payload}) + "\n")


def scored_to_json(scored: Scored) -> dict[str, Any]:
    return {"arm": scored.arm, "replicate": scored.replicate, "records": scored.records, "gate": scored.gate_accuracy}


def scored_from_json(doc: dict[str, Any]) -> Scored:
    return Scored(doc["arm"], doc["replicate"], list(doc["records"]), doc["gate"])
