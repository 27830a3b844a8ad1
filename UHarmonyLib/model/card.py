"""Model cards: read, check and list bundles without torch or MONAI.

A bundle is a folder with safetensors weights and one JSON model card. No pickle
anywhere. The card carries checksums of every file and of itself, so a truncated, edited
or corrupted bundle is refused with a message naming the problem instead of producing
wrong segmentations. This module is all the Slicer panel needs to list and describe
models; `model.weights` loads the network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from UHarmonyLib.data.labels import KNOWN_TERMINOLOGY
from UHarmonyLib.errors import BundleError
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.image_harmonization import check_params
from UHarmonyLib.model.card_schema import schema_problem
from UHarmonyLib.model.pins import check_pin
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.options import MIRRORED_PASSES

FORMAT_VERSION = 1
CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
BANK_NAME = "gate_bank.safetensors"  # the gate's signature bank (model/signature_bank.py)

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "orientation": "RAS",
    "spacing": [1.0, 1.0, 1.0],
    "intensity": {"method": "zscore", "nonzero": True},
}
# Training flips every patch along these model-space axes (RandFlipd), so a trained model is
# indifferent to them and inference may average over mirrored copies (test-time mirroring).
# A card lists its own; a card without the key predates it and was trained with all three.
MIRROR_AXES: tuple[int, ...] = (0, 1, 2)
# Test-time mirroring passes when none are asked for (`inference.engine.mirror_flips`). benchmarks/inference.py's
# "passes" section weighs 1, 2, 4 and 8 passes (Dice against seconds per case) and chooses by a declared rule: on
# the default model's development cases no count of passes beat one pass by 0.005 whole-lesion Dice with
# confidence (4 passes: about half a Dice point on average, at 4.6 times the time), so one pass is the default.
# docs/RESULTS.md says whether this default still matches the measured choice.
MIRROR_PASSES = 1
DEFAULT_INFERENCE: dict[str, Any] = {
    "patch_size": [96, 96, 96],
    "overlap": 0.5,
    "blend": "gaussian",
    "batch_size": 1,
    "familiar_entropy": 0.5,
    "mirror_axes": list(MIRROR_AXES),
}


def card_digest(card: dict[str, Any]) -> str:
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_card(path: Path, check_pins: bool = True) -> dict[str, Any]:
    """Read and verify a bundle's model card (not its weights); `check_pins=False` only to pin it anew."""
    path = Path(path)
    card_path = path / CARD_NAME
    if not path.exists():
        raise BundleError(f"{path}: model bundle not found")
    if not card_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {CARD_NAME})")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{card_path}: model card is not valid JSON ({e}); the file may be truncated") from e
    if not isinstance(card, dict):
        raise BundleError(f"{card_path}: model card must be a JSON object")
    version = card.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{card_path}: model card has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this reader ({FORMAT_VERSION}); update UHarmony"
        )
    if card.get("card_sha256") != card_digest(card):
        raise BundleError(f"{card_path}: model card was modified after the bundle was written (checksum mismatch)")
    validate_card(card, path)
    if check_pins:
        check_pin(card, path)
    return card


def rewrite_card(path: Path, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `edit` to a verified bundle's card and re-sign it atomically.

    Why a rewrite and not a new version: only descriptive fields change (when the warning shows,
    terminology codes, measured times); the weights, the bank and every segmentation stay
    byte-identical. A damaged bundle is refused, never re-signed.
    """
    path = Path(path)
    card = read_card(path)
    verify_files(path, card)
    edit(card)
    card["card_sha256"] = card_digest(card)
    validate_card(card, path)
    write_text_atomic(path / CARD_NAME, json.dumps(card, indent=2) + "\n")
    return card


def set_familiar_distance(path: Path, threshold: float, calibration: dict[str, Any]) -> dict[str, Any]:
    """Set the bank distance beyond which a case is called unfamiliar, and record how it was chosen."""

    def edit(card: dict[str, Any]) -> None:
        if BANK_NAME not in card["files"]:
            raise BundleError(f"{path}: has no gate bank, so no distance to calibrate")
        card["inference"]["familiar_distance"] = round(float(threshold), 4)
        card["metrics"] = {**card.get("metrics", {}), "familiar_calibration": calibration}

    return rewrite_card(path, edit)


def set_known_terminology(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Give every label the project knows by name its SNOMED CT entry; returns the card and the names left without.

    Labels that already carry an entry keep it (a site may have chosen a more specific code).
    """
    missing: list[str] = []

    def edit(card: dict[str, Any]) -> None:
        for label in card["labels"]:
            if label.get("terminology"):
                continue
            entry = KNOWN_TERMINOLOGY.get(str(label["name"]).lower())
            if entry:
                label["terminology"] = entry
            else:
                missing.append(str(label["name"]))

    return rewrite_card(path, edit), missing


def set_expected_seconds(path: Path, device: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Record the measured time per case on one kind of device; other devices' figures are kept."""

    def edit(card: dict[str, Any]) -> None:
        card["inference"]["expected_seconds"] = {**card["inference"].get("expected_seconds", {}), device: figures}

    return rewrite_card(path, edit)


def validate_card(card: dict[str, Any], path: Path) -> None:
    def need(cond: object, what: str) -> None:
        if not cond:
            raise BundleError(f"{path}: invalid model card: {what}")

    need(not (problem := schema_problem(card)), str(problem))
    need(
        "familiar_distance" not in card["inference"] or BANK_NAME in card.get("files", {BANK_NAME: None}),
        f"it sets an unfamiliar-case distance but lists no {BANK_NAME}, so the warning would be off",
    )
    values = [lab["value"] for lab in card["labels"]]
    need(len(set(values)) == len(values), "label values must be unique")
    names = [s["name"] for s in card["sites"]]
    need(len(set(names)) == len(names), "site names must be unique")
    try:
        cfg = NetworkConfig.from_dict(card["architecture"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise BundleError(f"{path}: unsupported architecture in model card: {e}") from e
    need(cfg.in_channels == len(card["channels"]), "architecture in_channels differs from the channel list")
    need(cfg.out_channels == len(card["labels"]) + 1, "architecture out_channels differs from labels + background")
    need(cfg.num_sites == len(card["sites"]), "architecture num_sites differs from the site list")
    patch = card["inference"].get("patch_size")
    need(isinstance(patch, list) and len(patch) == cfg.spatial_dims, "inference patch_size must list one size per axis")
    step = 32 if cfg.backbone == "swinunetr" else 2 ** (len(cfg.filters) - 1)
    smallest = 64 if cfg.backbone == "swinunetr" else step
    need(
        all(isinstance(p, int) and p % step == 0 and p >= smallest for p in patch),
        f"patch_size {patch} must be multiples of {step}, at least {smallest}, for this {cfg.backbone}",
    )
    if "harmonize" in card["preprocessing"]:
        problem = check_params(card["preprocessing"]["harmonize"])
        need(problem is None, f"preprocessing.harmonize: {problem}")


def verify_files(path: Path, card: dict[str, Any]) -> None:
    files = card.get("files") or {}
    if WEIGHTS_NAME not in files:
        raise BundleError(f"{path}: model card lists no {WEIGHTS_NAME} checksum")
    for name, meta in files.items():
        f = path / name
        if f.is_symlink() or (f.exists() and not f.is_file()):
            raise BundleError(f"{f}: not a regular file inside the bundle (links and special files are refused)")
        if not f.is_file():
            raise BundleError(f"{f}: file listed in the model card is missing")
        size = f.stat().st_size
        if size < meta["bytes"]:
            raise BundleError(f"{f}: truncated ({size} of {meta['bytes']} bytes)")
        if size != meta["bytes"]:
            raise BundleError(f"{f}: size {size} differs from the model card's {meta['bytes']} bytes (tampered)")
        if sha256_file(f) != meta["sha256"]:
            raise BundleError(f"{f}: checksum differs from the model card (tampered or corrupted)")


def find_bundles(folder: Path) -> list[Path]:
    """Bundle folders directly inside `folder`, sorted by name; hidden ones are unfinished writes, never bundles."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p / CARD_NAME).is_file())


DEVICE_NAMES = {"cpu": "CPU", "cuda": "NVIDIA GPU (CUDA)", "mps": "Apple GPU (MPS)"}


def expected_time_text(card: dict[str, Any]) -> str:
    """The card's measured time per case in one line, naming the devices nobody measured on."""
    figures = card["inference"].get("expected_seconds", {})
    parts = []
    for device, name in DEVICE_NAMES.items():
        f = figures.get(device)
        if not f:
            parts.append(f"{name} not measured")
            continue
        where = f"{f.get('threads')} threads of {f.get('machine')}" if device == "cpu" else str(f.get("machine"))
        parts.append(
            f"{name} about {f['no_mirror_seconds']:.0f} s ({f['seconds']:.0f} s with {MIRRORED_PASSES} mirrored "
            f"passes, {f['wall_seconds']:.0f} s of them with process start), measured on {where} for "
            f"{f.get('case', 'one case')}"
        )
    return "; ".join(parts)
