"""Binary mask losses on point logits, and their pairwise (prediction x target) costs for matching.

Notation: ``x`` are logits of shape (M, P) (M masks, P points), ``t`` are targets in [0, 1] of the same shape,
``p = sigmoid(x)``.
"""
import torch
from torch.nn import functional as F


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``sum_m [1 - (2 * sum_j p_mj t_mj + 1) / (sum_j p_mj + sum_j t_mj + 1)] / num_masks``."""
    p = inputs.sigmoid().flatten(1)
    t = targets.flatten(1)
    numerator = 2 * (p * t).sum(-1)
    denominator = p.sum(-1) + t.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``sum_m mean_j BCE(x_mj, t_mj) / num_masks`` with ``BCE(x, t) = -t log p - (1 - t) log(1 - p)``."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.flatten(1).mean(1).sum() / num_masks


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost (Q, M): ``C_qm = 1 - (2 * sum_j p_qj t_mj + 1) / (sum_j p_qj + sum_j t_mj + 1)``."""
    p = inputs.sigmoid().flatten(1)
    t = targets.flatten(1)
    numerator = 2 * p @ t.T
    denominator = p.sum(-1)[:, None] + t.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise BCE cost (Q, M): ``C_qm = mean_j BCE(x_qj, t_mj)``, computed as
    ``[softplus(-x) @ t + softplus(x) @ (1 - t)] / P`` since ``-log p = softplus(-x)``, ``-log(1-p) = softplus(x)``."""
    num_points = inputs.shape[1]
    pos = F.softplus(-inputs)
    neg = F.softplus(inputs)
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points
