"""Model bundles with their network: build a card for a trained net, save and load the weights.

Weights are safetensors (no pickle); the card, its checks and its checksums live in
`model.card`, which this module uses on both the writing and the reading side.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from UHarmonyLib import __version__
from UHarmonyLib.errors import BundleError
from UHarmonyLib.files.atomic import atomic_dir
from UHarmonyLib.files.checksum import sha256_file
from UHarmonyLib.model.card import (
    BANK_NAME,
    CARD_NAME,
    DEFAULT_INFERENCE,
    DEFAULT_PREPROCESSING,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    card_digest,
    read_card,
    validate_card,
    verify_files,
)
from UHarmonyLib.model.signature_bank import SignatureBank, load_bank
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.network import UHarmonyNet


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


@dataclass
class Bundle:
    """A loaded, verified bundle: its folder, its card and its network (in eval mode)."""

    path: Path
    card: dict[str, Any]
    net: UHarmonyNet
    bank: SignatureBank | None = None  # per-site gate vectors (bundles written before banks have none)

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
    validate_card(card, Path(f"{name}-v{version}"))
    return card


def save_bundle(net: UHarmonyNet, card: dict[str, Any], path: Path, bank: SignatureBank | None = None) -> Path:
    """Write the bundle folder atomically; an existing folder is never overwritten."""
    path = Path(path)
    card = json.loads(json.dumps(card))
    card["architecture"] = net.config.to_dict()
    if bank is not None and math.isfinite(bank.threshold):  # infinite (too few cases to calibrate): key left out,
        card["inference"]["familiar_distance"] = round(bank.threshold, 4)  # which loads as "never too far"
    validate_card(card, path)
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
        card["card_sha256"] = card_digest(card)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


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
        bank = load_bank(path / BANK_NAME, net.gate.input_layer.in_features, threshold)
        if bank.num_sites > len(card["sites"]):
            raise BundleError(f"{path / BANK_NAME}: gate bank names more sites than the model card")
    return Bundle(path=path, card=card, net=net, bank=bank)
