"""Pinned bundles: digests a user recorded for the bundles they trust, checked whenever a card is read.

Why: a bundle's checksums are computed by whoever wrote it, so they catch corruption, not a
changed bundle whose author re-signed it. A pin is the user's own record of the card digest
(which covers the weights' and the bank's checksums too); a bundle of the same name and
version with another digest is then refused.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import BundleError
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.files.json_file import read_json
from UHarmonyLib.resources import user_models_dir

PINS_NAME = "pinned.json"


def pins_file() -> Path:
    return user_models_dir() / PINS_NAME


def read_pins() -> dict[str, Any]:
    path = pins_file()
    if not path.is_file():
        return {}
    pins = read_json(path, "pins file")
    if not isinstance(pins, dict):
        raise BundleError(f"{path}: pins file must be a JSON object")
    return pins


def pin_key(card: dict[str, Any]) -> str:
    return f"{card['name']} v{card['version']}"


def check_pin(card: dict[str, Any], path: Path) -> bool:
    """True if the card is pinned; refuses a bundle whose name and version are pinned with another digest."""
    pin = read_pins().get(pin_key(card))
    if pin is None:
        return False
    if not isinstance(pin, dict) or pin.get("card_sha256") != card.get("card_sha256"):
        when = pin.get("pinned", "?") if isinstance(pin, dict) else "?"
        raise BundleError(
            f"{path}: {pin_key(card)} differs from the bundle you pinned on {when} ({pins_file()}); "
            "it was changed after you trusted it"
        )
    return True


def pin(card: dict[str, Any], path: Path) -> dict[str, Any]:
    """Record a verified card's digest as trusted (an existing pin of the same name and version is replaced)."""
    pins = read_pins()
    entry = {
        "card_sha256": card["card_sha256"],
        "path": str(Path(path).resolve()),
        "pinned": dt.date.today().isoformat(),
    }
    pins[pin_key(card)] = entry
    pins_file().parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(pins_file(), json.dumps(pins, indent=2, sort_keys=True) + "\n")
    return entry
