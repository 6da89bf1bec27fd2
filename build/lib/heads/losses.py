"""Multi-label losses on logits, all averaged over every (image, label) entry.

The mean (not the sum over labels) keeps the gradient scale the same for every loss, so one
learning rate and weight decay serve all three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, y)


def focal(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE down-weighted by (1 - p_t)^gamma on easy entries."""
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce).mean()


def asl(logits: torch.Tensor, y: torch.Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
        clip: float = 0.05) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021): focus on the few positives of each image.

    Negatives are down-weighted by p^gamma_neg and their probability shifted by `clip` (easy
    negatives below the margin give no loss at all); positives keep (almost) plain BCE."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    log_pos = F.logsigmoid(logits)
    log_neg = torch.log((1 - p_neg).clamp(min=1e-8))
    loss_pos = y * (1 - p) ** gamma_pos * log_pos
    loss_neg = (1 - y) * p_neg ** gamma_neg * log_neg
    return -(loss_pos + loss_neg).mean()


LOSSES = {"bce": bce, "asl": asl, "focal": focal}
