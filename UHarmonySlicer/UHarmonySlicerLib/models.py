"""The model bundles the panel offers: the ones shipped with the extension and a per-user folder.

Cards are read and checked by the engine's torch-free card module, so the panel lists
verified models before PyTorch is installed; the engine checks the weights on every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from UHarmonyLib.data.labels import terminology_type
from UHarmonyLib.model.card import expected_time_text, find_bundles, read_card
from UHarmonyLib.resources import BUNDLED_MODELS, user_models_dir


@dataclass(frozen=True)
class ModelInfo:
    """One bundle folder and its card, or why it cannot be used."""

    path: Path
    card: dict[str, Any]
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
        labels = ", ".join(
            f"{lab['value']} {lab['name']}"
            + (f" ({code})" if (code := terminology_type(lab.get("terminology", ""))) else "")
            for lab in self.labels
        )
        description = str(self.card.get("description", "")).split(". ")[0].rstrip(".")
        spacing = self.card.get("preprocessing", {}).get("spacing", [])
        patch = self.card.get("inference", {}).get("patch_size", [])
        metrics = self.card.get("metrics", {})
        lines = [
            self.title,
            f"Version: {self.name} v{self.version}",
            *([f"About: {description}."] if description else []),
            f"Sites: {', '.join(self.site_names)}",
            f"Channels: {channels}",
            f"Labels: {labels}",
            f"Grid: {' x '.join(f'{s:g}' for s in spacing)} mm; windows of {' x '.join(map(str, patch))} voxels",
            f"Time per case: {expected_time_text(self.card)}",
        ]
        if metrics.get("mean_dice_whole_lesion") is not None:
            lines.append(
                f"Checked when trained: whole-lesion Dice {metrics['mean_dice_whole_lesion']:.3f} on "
                f"{metrics.get('validation_cases', '?')} held-out cases, gate accuracy {metrics.get('gate_accuracy')}"
            )
        return "\n".join(lines)


def read_model(path: Path) -> ModelInfo:
    """A bundle's card; a broken bundle is listed with its problem rather than hidden."""
    path = Path(path)
    try:
        card = read_card(path)
    except Exception as e:  # a broken bundle must not break the model list
        return ModelInfo(path, {}, problem=str(e))
    return ModelInfo(path, card)


def discover(folders: Iterable[Path]) -> list[ModelInfo]:
    """Every bundle in the given folders (bundled models first by convention of the caller)."""
    return [read_model(p) for folder in folders for p in find_bundles(folder)]


def default_folders(user_folder: Path | None = None) -> list[Path]:
    """The extension's bundled models, then the user's models folder."""
    return [BUNDLED_MODELS, Path(user_folder) if user_folder else user_models_dir()]


def next_version_folder(parent: ModelInfo, folders: Iterable[Path], user_folder: Path) -> Path:
    """`<name>-v<N+1>` in the user folder, N the highest version of that name anywhere: versions never clash."""
    pattern = re.compile(rf"{re.escape(parent.name)}-v(\d+)")
    versions = [parent.version]
    for folder in [*folders, user_folder]:
        for path in find_bundles(folder):
            info = read_model(path)
            if info.usable and info.name == parent.name:
                versions.append(info.version)
        if Path(folder).is_dir():
            versions += [int(m.group(1)) for p in Path(folder).iterdir() if (m := pattern.fullmatch(p.name))]
    return Path(user_folder) / f"{parent.name}-v{max(versions) + 1}"
