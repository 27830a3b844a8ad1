"""Training: `train(TrainConfig(...))` turns MSD datasets into a model bundle (`uharmony train`)."""

from UHarmonyLib.training.config import TrainConfig
from UHarmonyLib.training.loop import train, train_run
from UHarmonyLib.training.losses import MarginalDiceCELoss, marginal_probabilities

__all__ = ["MarginalDiceCELoss", "TrainConfig", "marginal_probabilities", "train", "train_run"]
