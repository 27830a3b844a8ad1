"""UHarmony in the browser: Slicer's MRML, views and Segment Editor served by trame (trame-slicer).

The app runs the desktop module's own MRML logic (UHarmonySlicerLib) and engine (UHarmonyLib),
so a case segmented here gets the same segments, gate table and add-site versions as in Slicer.
UHarmonySlicerLib lives in the Slicer extension's folder, not in an installed package: this is
the one place that puts that folder on sys.path, as Slicer does for its modules.
"""

import importlib.util
import os
import sys
from pathlib import Path

_MODULE_DIR = Path(__file__).resolve().parent.parent / "UHarmonySlicer"
if importlib.util.find_spec("UHarmonySlicerLib") is None and (_MODULE_DIR / "UHarmonySlicerLib").is_dir():
    sys.path.insert(0, str(_MODULE_DIR))

# A Linux server usually has no display: VTK then renders the views off screen through EGL (Mesa's
# llvmpipe without a GPU). Set VTK_DEFAULT_OPENGL_WINDOW to choose another window class.
if sys.platform.startswith("linux"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
