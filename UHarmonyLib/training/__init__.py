"""Training: `train(TrainConfig(...))` turns MSD datasets into a model bundle (`uharmony train`).

The names load on first use (PEP 562), so `uharmony` builds the train command's parser
from TrainConfig without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from UHarmonyLib.training.config import TrainConfig
    from UHarmonyLib.training.loop import train, train_run
    from UHarmonyLib.training.losses import MarginalDiceCELoss, marginal_probabilities

__all__ = ["MarginalDiceCELoss", "TrainConfig", "marginal_probabilities", "train", "train_run"]
_MODULES = {
    "MarginalDiceCELoss": "losses",
    "TrainConfig": "config",
    "marginal_probabilities": "losses",
    "train": "loop",
    "train_run": "loop",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
