"""Segmentation-only optimizer steps with fixed site weights: the loop add-site, fine-tuning and federated
rounds share (joint training also trains the gate and lives in `loop.py`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from UHarmonyLib.inference.device import autocast
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.training.loop import segmentation_loss
from UHarmonyLib.training.losses import MarginalDiceCELoss
from UHarmonyLib.training.sampling import PatchSampler


def segmentation_steps(
    net: UHarmonyNet,
    sampler: PatchSampler,
    optimizer: torch.optim.Optimizer,
    weights: torch.Tensor,
    steps: range,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """One step per entry of `steps` (the sampler's step numbers); returns each step's loss.

    `weights` are the site weights (rows beyond a short batch are ignored); `penalty` adds a
    term to every step's loss (FedProx); `on_step(k, loss)` reports the k-th step (1-based).
    """
    loss_fn = MarginalDiceCELoss()
    net.train()
    losses = []
    for k, step in enumerate(steps, start=1):
        batch = sampler.batch(step)
        batch.target = batch.target.to(device)
        image = batch.image.to(device)
        with autocast(device, dtype):
            logits = net.segment(image, weights[: len(image)].to(device))
        loss = segmentation_loss(loss_fn, logits.float(), batch)
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(k, losses[-1])
    return losses
