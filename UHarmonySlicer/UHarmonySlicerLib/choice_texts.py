"""Translated words for a combo box that a parameter-node `Choice` fills.

Slicer's connector fills the box with `str(choice)` and reads the chosen index back, never
the text, so the words shown can be replaced after `connectGui` (which refills the box each
time) without changing what the parameter node stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def show_choice_texts(combo: Any, choices: Sequence[str], texts: Mapping[str, str]) -> None:
    """Show `texts[choice]` for each item; refuse a box whose items are not the choices in order."""
    for index, choice in enumerate(choices):
        shown = combo.itemText(index)
        if shown not in (str(choice), texts[choice]):
            raise RuntimeError(f"combo box item {index} reads {shown!r}, not the choice {choice!r}")
        combo.setItemText(index, texts[choice])
    if combo.itemText(len(choices)):
        raise RuntimeError(f"combo box has more items than the {len(choices)} choices")
