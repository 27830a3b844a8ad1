"""Where bundled resources and user models live."""

from __future__ import annotations

import os
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
BUNDLED_MODELS = RESOURCES / "Models"
SAMPLE_DATA = RESOURCES / "SampleData"
DEFAULT_MODEL_NAME = "uharmony-default-v6"


def user_models_dir() -> Path:
    """Per-user model folder (new site versions land here); UHARMONY_MODELS overrides it."""
    return Path(os.environ.get("UHARMONY_MODELS", Path.home() / ".uharmony" / "models"))


def default_model() -> Path:
    return BUNDLED_MODELS / DEFAULT_MODEL_NAME
