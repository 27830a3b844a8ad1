"""`python -m UHarmonyLib` is the same as the `uharmony` command (Slicer runs it this way)."""

import sys

from UHarmonyLib.cli import main

sys.exit(main())
