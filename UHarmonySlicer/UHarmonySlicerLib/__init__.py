"""MRML-side logic of the UHarmony Slicer module.

Imports MRML classes (through `slicer` and `vtk`) and UHarmonyLib only, never qt or
ctk, so the same code runs in desktop Slicer and headless on the `slicer-core` wheel.
"""

import importlib.util
import sys
from pathlib import Path

# Installed, UHarmonyLib sits next to this package. Run from a source checkout (Slicer's
# "additional module path" set to <repo>/UHarmonySlicer), it sits at the repository root.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent
if importlib.util.find_spec("UHarmonyLib") is None and (_SOURCE_ROOT / "UHarmonyLib").is_dir():
    sys.path.append(str(_SOURCE_ROOT))
