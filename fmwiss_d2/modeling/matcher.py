"""Bipartite matching between predicted queries and ground-truth masks (Hungarian algorithm)."""
from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.utils.registry import Registry

from ..utils.errors import registry_get

from .losses.mask_losses import batch_dice_cost, batch_sigmoid_ce_cost

MATCHER_REGISTRY = Registry("MATCHER")
MATCHER_REGISTRY.__doc__ = "Query-to-target matchers, called with ``(cfg)``; selected by MODEL.MASK_FORMER.MATCHER_NAME."

__all__ = ["MATCHER_REGISTRY", "build_matcher", "HungarianMatcher"]


def _sample(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Values of masks (M, H, W) at normalised points (1, P, 2) -> (M, P); border values replicated outside."""
    return point_sample(masks[:, None], coords.expand(masks.shape[0], -1, -1), align_corners=False,
                        padding_mode="border")[:, 0]


def build_matcher(cfg):
    return registry_get(MATCHER_REGISTRY, cfg.MODEL.MASK_FORMER.MATCHER_NAME, "MODEL.MASK_FORMER.MATCHER_NAME")(cfg)


@MATCHER_REGISTRY.register()
class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising, per image,
    ``C_qm = w_class * (-softmax(logits_q)[c_m]) + w_mask * BCE_qm + w_dice * DICE_qm``
    where the mask costs are computed on ``num_points`` points drawn uniformly (the same points for all
    predictions and targets of an image; bilinear sampling, border values replicated outside the map). Unmatched queries are left to the "no object" class."""

    @configurable
    def __init__(self, *, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 0):
        """
        Args:
            cost_class / cost_mask / cost_dice: weights of the three costs.
            num_points: uniformly sampled points per image; 0 = every pixel of the target resolution
                (predictions are bilinearly resized to it).
        """
        super().__init__()
        assert cost_class != 0 or cost_mask != 0 or cost_dice != 0, "all costs can't be 0"
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MASK_FORMER
        return {"cost_class": m.CLASS_WEIGHT, "cost_mask": m.MASK_WEIGHT, "cost_dice": m.DICE_WEIGHT,
                "num_points": m.TRAIN_NUM_POINTS}

    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, target: Dict[str, torch.Tensor]):
        """Cost (Q, M) for one image: logits (Q, K+1), masks (Q, h, w), target labels (M,) and masks (M, H, W)."""
        tgt_ids = target["labels"]
        tgt_mask = target["masks"].to(masks)
        cost_class = -logits.softmax(-1)[:, tgt_ids]
        if self.num_points > 0:
            coords = torch.rand(1, self.num_points, 2, device=masks.device, dtype=masks.dtype)
            out_pts = _sample(masks, coords)
            tgt_pts = _sample(tgt_mask, coords)
        else:
            if masks.shape[-2:] != tgt_mask.shape[-2:]:
                masks = nn.functional.interpolate(masks[None], size=tgt_mask.shape[-2:], mode="bilinear",
                                                  align_corners=False)[0]
            out_pts, tgt_pts = masks.flatten(1), tgt_mask.flatten(1)
        cost_mask = batch_sigmoid_ce_cost(out_pts, tgt_pts)
        cost_dice = batch_dice_cost(out_pts, tgt_pts)
        return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs: Dict, targets: List[Dict]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` (N, Q, K+1) and ``pred_masks`` (N, Q, h, w).
            targets: per image ``labels`` (M,) and ``masks`` (M, H, W).
        Returns:
            per image ``(query_indices, target_indices)``, both int64 of length min(Q, M).
        """
        indices = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(outputs["pred_logits"][b].float(), outputs["pred_masks"][b].float(), target)
            i, j = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
        return indices
