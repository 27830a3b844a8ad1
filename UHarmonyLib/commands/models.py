"""`uharmony models info|list`: what a bundle is, and which bundles are installed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from UHarmonyLib.errors import BundleError
from UHarmonyLib.options import Option, Verbs, add_command
from UHarmonyLib.resources import BUNDLED_MODELS, user_models_dir

INFO_OPTIONS = [Option("path", type=Path), Option("--json", action="store_true", help="print the card as JSON")]
LIST_OPTIONS = [Option("folders", nargs="*", type=Path), Option("--json", action="store_true")]
TERMINOLOGY_OPTIONS = [Option("path", type=Path, help="model bundle folder, rewritten in place")]
PIN_OPTIONS = [Option("path", type=Path, help="model bundle folder to trust as it is now")]


def add_parser(verbs: Verbs) -> None:
    sub = verbs.add_parser("models", help="inspect model bundles").add_subparsers(dest="models_verb", required=True)
    add_command(sub, "info", "print a bundle's model card", INFO_OPTIONS)
    add_command(sub, "list", "list bundles in the bundled and user model folders", LIST_OPTIONS)
    add_command(
        sub,
        "terminology",
        "give labels with known names their SNOMED CT codes (weights unchanged)",
        TERMINOLOGY_OPTIONS,
    )
    add_command(
        sub,
        "pin",
        "record a verified bundle's digest as trusted: a changed bundle of that name and version is then refused",
        PIN_OPTIONS,
    )


def format_card(card: dict[str, Any], path: Path) -> str:
    from UHarmonyLib.data.labels import terminology_type
    from UHarmonyLib.model.card import expected_time_text

    arch = card["architecture"]
    pre, inf, prov = card["preprocessing"], card["inference"], card.get("provenance", {})
    lines = [
        f"{card.get('title') or card['name']}  ({card['name']} v{card['version']}, format {card['format_version']})",
        f"  path:          {path}",
    ]
    if card.get("description"):
        lines.append(f"  description:   {card['description']}")
    lines += [
        f"  architecture:  {arch['backbone']} with {arch['norm']} normalization"
        + (f", polynomial degree {arch['degree']}" if arch["norm"] == "uharmony" else "")
        + (", site-gated heads" if arch.get("gated_heads") else ""),
        "  channels:      " + ", ".join(f"{c['name']} ({c['modality']})" for c in card["channels"]),
        "  labels:        "
        + ", ".join(
            f"{lab['value']}={lab['name']} {lab['color']}"
            + (f" ({terminology_type(lab['terminology'])})" if lab.get("terminology") else "")
            for lab in card["labels"]
        ),
        "  sites:",
    ]
    for s in card["sites"]:
        extra = ", ".join(f"{k} {v}" for k, v in s.items() if k != "name" and v not in (None, "", []))
        lines.append(f"    - {s['name']}" + (f" ({extra})" if extra else ""))
    lines += [
        f"  preprocessing: orientation {pre['orientation']}, spacing {pre['spacing']} mm, "
        f"intensity {pre['intensity'].get('method')}",
        f"  inference:     patch {inf['patch_size']}, overlap {inf['overlap']}, "
        f"familiar if gate entropy <= {inf.get('familiar_entropy')}",
        f"  time per case: {expected_time_text(card)}",
        f"  provenance:    created {prov.get('created', '?')} by {prov.get('software', '?')}",
    ]
    if prov.get("command"):
        lines.append(f"                 command: {prov['command']}")
    for k, v in (card.get("metrics") or {}).items():
        lines.append(f"  metric {k}: {v}")
    for name, meta in card.get("files", {}).items():
        lines.append(f"  file {name}: {meta['bytes']} bytes, sha256 {meta['sha256'][:16]}... verified")
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> None:
    from UHarmonyLib.model.card import find_bundles
    from UHarmonyLib.model.pins import pin_key, read_pins
    from UHarmonyLib.model.weights import load_bundle

    if args.models_verb == "terminology":
        from UHarmonyLib.data.labels import terminology_type
        from UHarmonyLib.model.card import set_known_terminology

        card, missing = set_known_terminology(args.path)
        for lab in card["labels"]:
            code = terminology_type(lab.get("terminology", "")) or "no standard code known for this name"
            print(f"{lab['value']} {lab['name']}: {code}")
        if missing:
            print(f"left without a code: {', '.join(missing)} (set one in Slicer's Segment Editor before DICOM export)")
        return
    if args.models_verb == "pin":
        from UHarmonyLib.model.card import read_card, verify_files
        from UHarmonyLib.model.pins import pin, pin_key, pins_file, read_pins

        card = read_card(args.path, check_pins=False)  # a changed bundle may be pinned anew, on purpose
        verify_files(args.path, card)  # but only once every checksum holds
        before = read_pins().get(pin_key(card))
        entry = pin(card, args.path)
        print(f"pinned {pin_key(card)} (card digest {entry['card_sha256'][:16]}...) in {pins_file()}")
        if isinstance(before, dict) and before.get("card_sha256") != entry["card_sha256"]:
            print(f"replaced the pin of {before.get('pinned', '?')}, which had another digest")
        return
    if args.models_verb == "info":
        card = load_bundle(args.path).card
        print(json.dumps(card, indent=2) if args.json else format_card(card, args.path))
        return
    folders = args.folders or [BUNDLED_MODELS, user_models_dir()]
    pins = read_pins()
    rows = []
    for folder in folders:
        for path in find_bundles(folder):
            try:
                card = load_bundle(path).card
                rows.append(
                    {
                        "path": str(path),
                        "name": card["name"],
                        "version": card["version"],
                        "title": card.get("title", ""),
                        "sites": [s["name"] for s in card["sites"]],
                        "pinned": pin_key(card) in pins,
                        "ok": True,
                    }
                )
            except BundleError as e:
                rows.append({"path": str(path), "ok": False, "problem": str(e)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no model bundles found in " + ", ".join(str(f) for f in folders))
    for r in rows:
        if r["ok"]:
            pinned = "  pinned" if r["pinned"] else ""
            print(f"{r['name']} v{r['version']}  {r['title']}  sites: {', '.join(r['sites'])}  [{r['path']}]{pinned}")
        else:
            print(f"UNUSABLE  {r['path']}: {r['problem']}")
