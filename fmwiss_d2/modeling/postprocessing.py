"""Turning one image's query predictions into semantic, panoptic and instance outputs (Mask2Former, Sec. 4).

Inputs are ``mask_cls`` (Q, K+1) class logits (last = "no object") and ``mask_pred`` (Q, H, W) mask logits.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from detectron2.structures import BitMasks, Boxes, Instances

__all__ = ["semantic_inference", "panoptic_inference", "instance_inference"]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-class scores (K, H, W): ``S_k(x) = sum_q softmax(cls_q)[k] * sigmoid(mask_q(x))`` (no-object dropped)."""
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Non-overlapping segments.

    1. keep queries whose best class is not "no object" and whose class probability exceeds
       ``object_mask_threshold``;
    2. each pixel goes to the kept query maximising ``score_q * sigmoid(mask_q(x))``;
    3. a query keeps the pixels it won where its own mask is >= 0.5; it is dropped when these are fewer than
       ``overlap_threshold`` times its own mask area (pixels with mask >= 0.5) or none;
    4. segments of the same stuff class are merged into one.

    Returns ``(panoptic_seg (H, W) int32 with 0 = void, segments_info)`` where segment ids count from 1 and each
    info is ``{"id", "isthing", "category_id"}`` (contiguous class id).
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    masks = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep]
    h, w = masks.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=masks.device)
    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info
    winner = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    thing_ids = set(int(t) for t in thing_ids)
    stuff_segment: Dict[int, int] = {}
    segment_id = 0
    for k in range(cur_classes.shape[0]):
        cls = int(cur_classes[k])
        isthing = cls in thing_ids
        won = winner == k
        own = cur_masks[k] >= 0.5
        mask = won & own
        won_area, own_area, area = int(won.sum()), int(own.sum()), int(mask.sum())
        if won_area == 0 or own_area == 0 or area == 0:
            continue
        if won_area / own_area < overlap_threshold:
            continue
        if not isthing and cls in stuff_segment:
            panoptic_seg[mask] = stuff_segment[cls]
            continue
        segment_id += 1
        panoptic_seg[mask] = segment_id
        if not isthing:
            stuff_segment[cls] = segment_id
        segments_info.append({"id": segment_id, "isthing": bool(isthing), "category_id": cls})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    topk: int = 100,
    thing_ids: Optional[Sequence[int]] = None,
) -> Instances:
    """Top-``topk`` (query, class) pairs by class probability (no-object dropped), optionally only thing
    classes; each instance gets the binary mask ``mask_q > 0`` and the score
    ``p(class) * mean_{x in mask} sigmoid(mask_q(x))``. Boxes are the masks' bounding boxes."""
    q, k1 = mask_cls.shape
    num_classes = k1 - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).unsqueeze(0).expand(q, -1).flatten()
    flat = scores.flatten()
    topk = min(topk, flat.numel())
    top_scores, top_idx = flat.topk(topk, sorted=True)
    top_labels = labels[top_idx]
    query_idx = top_idx // num_classes
    masks = mask_pred[query_idx]
    if thing_ids is not None:
        is_thing = torch.as_tensor([int(c) in set(int(t) for t in thing_ids) for c in top_labels.tolist()],
                                   dtype=torch.bool, device=mask_cls.device)
        top_scores, top_labels, masks = top_scores[is_thing], top_labels[is_thing], masks[is_thing]
    result = Instances(mask_pred.shape[-2:])
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary > 0).get_bounding_boxes() if len(binary) else Boxes(binary.new_zeros(0, 4))
    result.scores = top_scores * mask_scores
    result.pred_classes = top_labels
    return result
