"""The lesion label names the project's datasets use, spelled once."""

from __future__ import annotations

FULL_LABELS = ("lesion core", "edema")  # values 1 and 2 of a full annotation
WHOLE_LABEL = "whole lesion"  # value 1 of a coarse annotation (core and edema merged); the whole-lesion score
KNOWN_COLORS = {FULL_LABELS[0]: "#d62728", FULL_LABELS[1]: "#ffbf00", WHOLE_LABEL: "#1f77b4"}

# Slicer's terminology entries (its "3D Slicer General Anatomy list", SNOMED CT codes), so a segmentation carries
# standard codes into DICOM SEG: category Morphologically Altered Structure (49755003); types Neoplasm
# (108369006) for the core, Edema (79654002), Lesion (52988006) for the whole lesion.
_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ALTERED = "SCT^49755003^Morphologically Altered Structure"
_ANATOMY = "Anatomic codes - DICOM master list~^^~^^"
KNOWN_TERMINOLOGY = {
    name: f"{_CONTEXT}~{_ALTERED}~SCT^{code}^{meaning}~^^~{_ANATOMY}"
    for name, code, meaning in (
        (FULL_LABELS[0], "108369006", "Neoplasm"),
        (FULL_LABELS[1], "79654002", "Edema"),
        (WHOLE_LABEL, "52988006", "Lesion"),
    )
}


def terminology_type(entry: str) -> str:
    """The segment type of a Slicer terminology entry in words, e.g. 'SNOMED CT 108369006 Neoplasm' ('' if none)."""
    fields = entry.split("~")
    scheme, code, meaning = ([*(fields[2] if len(fields) > 2 else "").split("^"), "", "", ""])[:3]
    if not code:
        return ""
    return f"{'SNOMED CT' if scheme == 'SCT' else scheme} {code} {meaning}".strip()
