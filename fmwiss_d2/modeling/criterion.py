"""Set criterion of mask classification: matched class cross-entropy + mask BCE + dice, with deep supervision."""
from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from ..utils.errors import registry_get
from .losses.mask_losses import dice_loss, sigmoid_ce_loss

CRITERION_REGISTRY = Registry("CRITERION")
CRITERION_REGISTRY.__doc__ = """
Mask-classification criteria, called with ``(cfg, matcher)``; selected by MODEL.MASK_FORMER.CRITERION_NAME.
"""

__all__ = ["CRITERION_REGISTRY", "build_criterion", "SetCriterion"]


def build_criterion(cfg, matcher):
    return registry_get(CRITERION_REGISTRY, cfg.MODEL.MASK_FORMER.CRITERION_NAME,
                        "MODEL.MASK_FORMER.CRITERION_NAME")(cfg, matcher)


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a mask logit: ``-|x|`` (highest at the decision boundary)."""
    return -torch.abs(logits)


@CRITERION_REGISTRY.register()
class SetCriterion(nn.Module):
    """Losses of a Mask2Former prediction against a set of target masks.

    With the matching ``sigma`` (query -> target) from the matcher:

    * ``loss_ce = sum_q w_q CE(logits_q, y_q) / sum_q w_q`` where ``y_q`` is the matched target's class, or
      "no object" (index K) for unmatched queries, and ``w_q = eos_coef`` for no-object targets, else 1;
    * ``loss_mask = sum_{matched} mean_points BCE / num_masks``;
    * ``loss_dice = sum_{matched} dice / num_masks``;

    mask terms on ``num_points`` points per mask chosen by importance sampling (``oversample_ratio * P``
    uniform candidates, the ``importance_sample_ratio * P`` most uncertain kept, the rest uniform), or on every
    pixel of the target resolution when ``num_points == 0``. ``num_masks`` is the mean number of target masks
    per process (total over processes / world size). With deep supervision the same terms are added for every
    ``aux_outputs[i]`` with the suffix ``_i``. Returns unweighted terms; weights are in ``weight_dict``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        deep_supervision: bool = True,
        num_aux: int = 0,
    ):
        """
        Args:
            num_classes: K, number of real classes (logits have K+1 entries, the last is "no object").
            matcher: a module mapping (outputs, targets) to per-image (query indices, target indices).
            weight_dict: weight of each loss term (``loss_ce``, ``loss_mask``, ``loss_dice``); aux terms reuse them.
            eos_coef: class-CE weight of the "no object" target.
            num_points / oversample_ratio / importance_sample_ratio: point sampling of the mask terms.
            deep_supervision: also compute the terms on ``aux_outputs``.
            num_aux: number of aux predictions (only used to fill ``weight_dict`` with the ``_i`` keys).
        """
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        if deep_supervision:
            for i in range(num_aux):
                self.weight_dict.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        self.eos_coef = eos_coef
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @classmethod
    def from_config(cls, cfg, matcher):
        m = cfg.MODEL.MASK_FORMER
        num_classes = sum(cfg.MODEL.CLASSES_PER_STEP) or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        return {
            "num_classes": num_classes,
            "matcher": matcher,
            "weight_dict": {"loss_ce": m.CLASS_WEIGHT, "loss_mask": m.MASK_WEIGHT, "loss_dice": m.DICE_WEIGHT},
            "eos_coef": m.NO_OBJECT_WEIGHT,
            "num_points": m.TRAIN_NUM_POINTS,
            "oversample_ratio": m.OVERSAMPLE_RATIO,
            "importance_sample_ratio": m.IMPORTANCE_SAMPLE_RATIO,
            "deep_supervision": m.DEEP_SUPERVISION,
            "num_aux": m.DEC_LAYERS - 1,
        }

    def loss_labels(self, outputs, targets, indices, num_masks, class_loss=None) -> Dict[str, torch.Tensor]:
        """``class_loss`` (default ``F.cross_entropy``) is called as ``class_loss(logits (N, K+1, Q), targets
        (N, Q), weight=(K+1,))``; a method passes e.g. MiB's unbiased cross-entropy."""
        logits = outputs["pred_logits"].float()
        n, q, k1 = logits.shape
        empty_weight = self.empty_weight
        if empty_weight.numel() != k1:  # the classifier grew (incremental step) after construction
            empty_weight = torch.ones(k1, device=logits.device)
            empty_weight[-1] = self.eos_coef
        target_classes = torch.full((n, q), k1 - 1, dtype=torch.int64, device=logits.device)
        for b, (t, (src, tgt)) in enumerate(zip(targets, indices)):
            target_classes[b, src.to(logits.device)] = t["labels"][tgt.to(t["labels"].device)].to(logits.device)
        loss = (class_loss or F.cross_entropy)(logits.transpose(1, 2), target_classes, weight=empty_weight.to(logits))
        return {"loss_ce": loss}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        src_masks = torch.cat([outputs["pred_masks"][b][src] for b, (src, _) in enumerate(indices)]).float()
        tgt_masks = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(src_masks)
        if src_masks.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        if self.num_points > 0:
            with torch.no_grad():
                coords = get_uncertain_point_coords_with_randomness(
                    src_masks[:, None], _uncertainty, self.num_points, self.oversample_ratio,
                    self.importance_sample_ratio,
                )
                point_labels = point_sample(tgt_masks[:, None], coords, align_corners=False,
                                            padding_mode="border")[:, 0]
            point_logits = point_sample(src_masks[:, None], coords, align_corners=False, padding_mode="border")[:, 0]
        else:
            if src_masks.shape[-2:] != tgt_masks.shape[-2:]:
                src_masks = F.interpolate(src_masks[:, None], size=tgt_masks.shape[-2:], mode="bilinear",
                                          align_corners=False)[:, 0]
            point_logits, point_labels = src_masks.flatten(1), tgt_masks.flatten(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def terms(self, outputs, targets, indices, num_masks, class_loss=None) -> Dict[str, torch.Tensor]:
        """All loss terms of one prediction given its matching."""
        losses = self.loss_labels(outputs, targets, indices, num_masks, class_loss)
        losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def num_masks(self, targets: List[Dict], device) -> float:
        """Mean number of target masks per process, at least 1."""
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(n)
        return torch.clamp(n / comm.get_world_size(), min=1).item()

    def forward(self, outputs: Dict, targets: List[Dict], class_loss=None) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits`` (N, Q, K+1), ``pred_masks`` (N, Q, h, w), optional ``aux_outputs``.
            targets: per image ``labels`` (M,) int64 and ``masks`` (M, H, W) in {0, 1}.
            class_loss: replaces the class cross-entropy (see :meth:`loss_labels`).
        """
        num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self.terms(main, targets, self.matcher(main, targets), num_masks, class_loss)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                terms = self.terms(aux, targets, self.matcher(aux, targets), num_masks, class_loss)
                losses.update({f"{k}_{i}": v for k, v in terms.items()})
        return losses
