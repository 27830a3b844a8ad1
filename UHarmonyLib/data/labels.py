"""The lesion label names the project's datasets use, spelled once."""

from __future__ import annotations

FULL_LABELS = ("lesion core", "edema")  # values 1 and 2 of a full annotation
WHOLE_LABEL = "whole lesion"  # value 1 of a coarse annotation (core and edema merged); the whole-lesion score
KNOWN_COLORS = {FULL_LABELS[0]: "#d62728", FULL_LABELS[1]: "#ffbf00", WHOLE_LABEL: "#1f77b4"}
