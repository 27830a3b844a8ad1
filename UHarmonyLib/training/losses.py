"""Segmentation loss over a union label space for sites that annotate it differently.

A site that labels only "whole lesion" (core and edema merged), or that never labels a
class, still trains the full model: the softmax runs over the union classes and the
probabilities of every union class that one of the site's labels covers are summed
(the marginal), then Dice + cross-entropy are computed against the site's own coarse
label. Classes a site does not annotate join its background group, so predicting them
where the site says "background" is not punished: they never count as background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

Groups = Sequence[Sequence[int]]  # groups[g] = union class indices summed into the site's label value g


def _assignment(groups: Groups, classes: int, like: torch.Tensor) -> torch.Tensor:
    """(G, K) 0/1 matrix: row g marks the union classes of group g."""
    m = torch.zeros(len(groups), classes, dtype=like.dtype, device=like.device)
    for g, members in enumerate(groups):
        m[g, list(members)] = 1
    return m


def marginal_probabilities(probs: torch.Tensor, groups: Groups) -> torch.Tensor:
    """(B, K, *spatial) union-class probabilities -> (B, G, *spatial) probabilities of each group."""
    flat = probs.flatten(2)
    return torch.einsum("gk,bkn->bgn", _assignment(groups, probs.shape[1], probs), flat).reshape(
        probs.shape[0], len(groups), *probs.shape[2:]
    )


def marginal_log_probabilities(log_probs: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Log of the marginal probabilities from union log-probabilities (logsumexp: no underflow)."""
    return torch.stack([torch.logsumexp(log_probs[:, list(members)], dim=1) for members in groups], dim=1)


class MarginalDiceCELoss(torch.nn.Module):
    """Dice + cross-entropy of grouped (marginal) class probabilities against a site's own labels.

    `target` holds group indices (B, 1, *spatial): 0 = the site's background group, g = its
    label value g. With one group per union class this is MONAI's DiceCELoss with softmax.
    """

    def __init__(self, batch_dice: bool = True) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=False, batch=batch_dice)

    def from_probabilities(
        self, probs: torch.Tensor, target: torch.Tensor, groups: Groups, log_marginal: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss on union probabilities (what the hand-made check in the tests computes)."""
        marginal = marginal_probabilities(probs, groups)
        if log_marginal is None:
            log_marginal = torch.log(marginal.clamp_min(torch.finfo(marginal.dtype).tiny))
        ce = F.nll_loss(log_marginal, target[:, 0].long())
        return self.dice(marginal, target) + ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor, groups: Groups) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=1)
        return self.from_probabilities(
            log_probs.exp(), target, groups, log_marginal=marginal_log_probabilities(log_probs, groups)
        )
