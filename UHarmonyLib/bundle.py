"""Model bundles: a folder with safetensors weights and one JSON model card.

No pickle anywhere: weights are safetensors, everything else is JSON. The card carries
checksums of every file and of itself, so a truncated, edited or corrupted bundle is
refused with a message naming the problem instead of producing wrong segmentations.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from UHarmonyLib import __version__
from UHarmonyLib.atomic import atomic_dir
from UHarmonyLib.errors import BundleError
from UHarmonyLib.gate_bank import BANK_NAME, GateBank, load_bank
from UHarmonyLib.harmonize import check_params
from UHarmonyLib.nn.network import NetworkConfig, UHarmonyNet

FORMAT_VERSION = 1
CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "orientation": "RAS",
    "spacing": [1.0, 1.0, 1.0],
    "intensity": {"method": "zscore", "nonzero": True},
}
# Training flips every patch along these model-space axes (RandFlipd), so a trained model is
# indifferent to them and inference may average over mirrored copies (test-time mirroring).
# A card lists its own; a card without the key predates it and was trained with all three.
MIRROR_AXES: tuple[int, ...] = (0, 1, 2)
DEFAULT_INFERENCE: dict[str, Any] = {
    "patch_size": [96, 96, 96],
    "overlap": 0.5,
    "blend": "gaussian",
    "batch_size": 1,
    "familiar_entropy": 0.5,
    "mirror_axes": list(MIRROR_AXES),
}


def unique_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without aliases: MONAI's DynUNet registers its blocks under two names."""
    seen: set[tuple[int, int]] = set()
    state = {}
    for name, tensor in net.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            state[name] = tensor
    return state


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _card_digest(card: dict[str, Any]) -> str:
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Bundle:
    """A loaded, verified bundle: its folder, its card and its network (in eval mode)."""

    path: Path
    card: dict[str, Any]
    net: UHarmonyNet
    bank: GateBank | None = None  # per-site gate vectors (bundles written before banks have none)

    @property
    def config(self) -> NetworkConfig:
        return self.net.config

    @property
    def site_names(self) -> list[str]:
        return [s["name"] for s in self.card["sites"]]

    @property
    def channel_names(self) -> list[str]:
        return [c["name"] for c in self.card["channels"]]

    @property
    def labels(self) -> list[dict[str, Any]]:
        return self.card["labels"]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.card["preprocessing"]

    @property
    def inference(self) -> dict[str, Any]:
        return self.card["inference"]

    @property
    def label_text(self) -> str:
        return f"{self.card['name']} v{self.card['version']}"


def make_card(
    net: UHarmonyNet,
    *,
    name: str,
    version: int,
    channels: list[dict[str, str]],
    labels: list[dict[str, Any]],
    sites: list[dict[str, Any]],
    title: str = "",
    description: str = "",
    preprocessing: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete model card for `net`; checksums are filled in by `save_bundle`."""
    card = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "title": title or name,
        "description": description,
        "architecture": net.config.to_dict(),
        "sites": sites,
        "channels": channels,
        "labels": labels,
        "preprocessing": {**DEFAULT_PREPROCESSING, **(preprocessing or {})},
        "inference": {**DEFAULT_INFERENCE, **(inference or {})},
        "provenance": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software": f"UHarmonyLib {__version__}",
            **(provenance or {}),
        },
        "metrics": metrics or {},
    }
    _validate_card(card, Path(f"{name}-v{version}"))
    return card


def save_bundle(net: UHarmonyNet, card: dict[str, Any], path: Path, bank: GateBank | None = None) -> Path:
    """Write the bundle folder atomically; an existing folder is never overwritten."""
    path = Path(path)
    card = json.loads(json.dumps(card))
    card["architecture"] = net.config.to_dict()
    if bank is not None:
        card["inference"]["familiar_distance"] = round(bank.threshold, 4)
    _validate_card(card, path)
    with atomic_dir(path) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in unique_state(net).items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "uharmony": str(FORMAT_VERSION)})
        if bank is not None:
            bank.save(tmp / BANK_NAME)
        card["files"] = {
            f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in (tmp / WEIGHTS_NAME, tmp / BANK_NAME)
            if f.is_file()
        }
        card["card_sha256"] = _card_digest(card)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


def read_card(path: Path) -> dict[str, Any]:
    """Read and verify a bundle's model card (not its weights)."""
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
    if card.get("card_sha256") != _card_digest(card):
        raise BundleError(f"{card_path}: model card was modified after the bundle was written (checksum mismatch)")
    _validate_card(card, path)
    return card


def _validate_card(card: dict[str, Any], path: Path) -> None:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise BundleError(f"{path}: invalid model card: {what}")

    for key in ("name", "version", "architecture", "sites", "channels", "labels", "preprocessing", "inference"):
        need(key in card, f"missing '{key}'")
    need(isinstance(card["channels"], list) and card["channels"], "'channels' must be a non-empty list")
    for c in card["channels"]:
        need(isinstance(c, dict) and {"name", "modality"} <= set(c), "each channel needs 'name' and 'modality'")
    need(isinstance(card["labels"], list) and card["labels"], "'labels' must be a non-empty list")
    for lab in card["labels"]:
        need(isinstance(lab, dict) and {"value", "name", "color"} <= set(lab), "each label needs value, name, color")
        need(isinstance(lab["value"], int) and lab["value"] > 0, f"label value {lab['value']!r} must be a positive int")
    values = [lab["value"] for lab in card["labels"]]
    need(len(set(values)) == len(values), "label values must be unique")
    need(isinstance(card["sites"], list) and card["sites"], "'sites' must be a non-empty list")
    names = [s.get("name") for s in card["sites"] if isinstance(s, dict)]
    need(len(names) == len(card["sites"]) and all(isinstance(n, str) and n for n in names), "each site needs a name")
    need(len(set(names)) == len(names), "site names must be unique")
    try:
        cfg = NetworkConfig.from_dict(card["architecture"])
    except (TypeError, ValueError) as e:
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
    mirror = card["inference"].get("mirror_axes", list(MIRROR_AXES))
    need(
        isinstance(mirror, list) and len(set(mirror)) == len(mirror) and all(a in (0, 1, 2) for a in mirror),
        f"inference mirror_axes {mirror!r} must list distinct axes among 0, 1, 2",
    )
    spacing = card["preprocessing"].get("spacing")
    need(isinstance(spacing, list) and len(spacing) == 3 and all(s > 0 for s in spacing), "spacing must be 3 positives")
    if "harmonize" in card["preprocessing"]:
        problem = check_params(card["preprocessing"]["harmonize"])
        need(problem is None, f"preprocessing.harmonize: {problem}")


def verify_files(path: Path, card: dict[str, Any]) -> None:
    files = card.get("files") or {}
    if WEIGHTS_NAME not in files:
        raise BundleError(f"{path}: model card lists no {WEIGHTS_NAME} checksum")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: file listed in the model card is missing")
        size = f.stat().st_size
        if size < meta["bytes"]:
            raise BundleError(f"{f}: truncated ({size} of {meta['bytes']} bytes)")
        if size != meta["bytes"]:
            raise BundleError(f"{f}: size {size} differs from the model card's {meta['bytes']} bytes (tampered)")
        if sha256_file(f) != meta["sha256"]:
            raise BundleError(f"{f}: checksum differs from the model card (tampered or corrupted)")


def load_bundle(path: Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a verified bundle; refuse anything truncated, tampered, newer or mismatched."""
    path = Path(path)
    card = read_card(path)
    verify_files(path, card)
    try:
        net = UHarmonyNet(NetworkConfig.from_dict(card["architecture"]))
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. MONAI refuses the layer list
        raise BundleError(f"{path}: unsupported architecture in model card: cannot build it ({e})") from e
    try:
        state = load_file(str(path / WEIGHTS_NAME), device=str(device))
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{path / WEIGHTS_NAME}: unreadable weights ({e})") from e
    expected = unique_state(net)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        which = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BundleError(f"{path}: weights do not fit the card's architecture ({which})")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise BundleError(
                f"{path}: weights do not fit the card's architecture "
                f"({key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)})"
            )
    net.load_state_dict(state, strict=False)
    net.to(device).eval()
    bank = None
    if BANK_NAME in card["files"]:
        threshold = float(card["inference"].get("familiar_distance", float("inf")))
        bank = load_bank(path / BANK_NAME, net.gate.classifier[0].in_features, threshold)
        if bank.num_sites > len(card["sites"]):
            raise BundleError(f"{path / BANK_NAME}: gate bank names more sites than the model card")
    return Bundle(path=path, card=card, net=net, bank=bank)


def find_bundles(folder: Path) -> list[Path]:
    """Bundle folders directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / CARD_NAME).is_file())
