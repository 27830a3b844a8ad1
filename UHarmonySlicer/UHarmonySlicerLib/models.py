"""The model bundles the panel offers: the ones shipped with the extension and a per-user folder."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from UHarmonyLib.resources import BUNDLED_MODELS, user_models_dir

CARD_NAME = "model.json"


def read_card(path: Path) -> tuple[dict[str, Any], bool]:
    """(card, verified): UHarmonyLib's checked reader, or the raw JSON before PyTorch is installed.

    The engine's reader imports torch; until the first Apply has installed it, the panel
    still shows the cards, unverified. The engine verifies the card again on every run.
    """
    try:
        from UHarmonyLib.bundle import read_card as verified_card
    except ImportError:
        card = json.loads((Path(path) / CARD_NAME).read_text(encoding="utf-8"))
        if not isinstance(card, dict):
            raise ValueError(f"{path / CARD_NAME}: model card must be a JSON object") from None
        return card, False
    return verified_card(Path(path)), True


@dataclass(frozen=True)
class ModelInfo:
    """One bundle folder and its card, or why it cannot be used."""

    path: Path
    card: dict[str, Any]
    verified: bool = True
    problem: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.name))

    @property
    def version(self) -> int:
        return int(self.card.get("version", 0))

    @property
    def title(self) -> str:
        return str(self.card.get("title") or self.name)

    @property
    def site_names(self) -> list[str]:
        return [s["name"] for s in self.card.get("sites", [])]

    @property
    def channels(self) -> list[dict[str, str]]:
        return list(self.card.get("channels", []))

    @property
    def channel_names(self) -> list[str]:
        return [c["name"] for c in self.channels]

    @property
    def labels(self) -> list[dict[str, Any]]:
        return list(self.card.get("labels", []))

    @property
    def familiar_entropy(self) -> float:
        return float(self.card.get("inference", {}).get("familiar_entropy", 0.5))

    @property
    def display_name(self) -> str:
        """What the model selector shows."""
        if self.problem:
            return f"{self.path.name} (unusable)"
        return f"{self.title} — {self.name} v{self.version}"

    def summary(self) -> str:
        """The card in a few plain lines for the panel."""
        if self.problem:
            return f"This bundle cannot be used: {self.problem}"
        channels = ", ".join(f"{c['name']} ({c.get('modality', '?')})" for c in self.channels)
        labels = ", ".join(f"{lab['value']} {lab['name']}" for lab in self.labels)
        lines = [
            self.title,
            f"Version: {self.name} v{self.version}",
            f"Sites: {', '.join(self.site_names)}",
            f"Channels: {channels}",
            f"Labels: {labels}",
        ]
        if not self.verified:
            lines.append("Card not yet verified (the engine checks it before every run).")
        return "\n".join(lines)


def read_model(path: Path) -> ModelInfo:
    """A bundle's card; a broken bundle is listed with its problem rather than hidden."""
    path = Path(path)
    try:
        card, verified = read_card(path)
    except Exception as e:  # a broken bundle must not break the model list
        return ModelInfo(path, {}, verified=False, problem=str(e))
    return ModelInfo(path, card, verified)


def bundle_folders(folder: Path) -> list[Path]:
    """Bundle folders directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / CARD_NAME).is_file())


def discover(folders: Iterable[Path]) -> list[ModelInfo]:
    """Every bundle in the given folders (bundled models first by convention of the caller)."""
    return [read_model(p) for folder in folders for p in bundle_folders(folder)]


def default_folders(user_folder: Path | None = None) -> list[Path]:
    """The extension's bundled models, then the user's models folder."""
    return [BUNDLED_MODELS, Path(user_folder) if user_folder else user_models_dir()]


def next_version_folder(parent: ModelInfo, folders: Iterable[Path], user_folder: Path) -> Path:
    """`<name>-v<N+1>` in the user folder, N the highest version of that name anywhere: versions never clash."""
    pattern = re.compile(rf"{re.escape(parent.name)}-v(\d+)")
    versions = [parent.version]
    for folder in [*folders, user_folder]:
        for path in bundle_folders(folder):
            info = read_model(path)
            if info.usable and info.name == parent.name:
                versions.append(info.version)
        if Path(folder).is_dir():
            versions += [int(m.group(1)) for p in Path(folder).iterdir() if (m := pattern.fullmatch(p.name))]
    return Path(user_folder) / f"{parent.name}-v{max(versions) + 1}"
