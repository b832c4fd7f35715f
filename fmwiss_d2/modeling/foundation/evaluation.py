"""Quality measures of the foundation models on the synthetic world (used by tools/bench/foundation_quality.py).

* :func:`zero_shot_crop_accuracy` -- CLIP top-1 on single-object crops (``shapes_instance_*`` boxes: the square
  of side ``context`` x the box's longer side, shifted inside the image) against the class-name prompts of the
  10 object classes (chance 10%). ``context = 1.0`` was chosen on the *train* split (the first tiny CLIP,
  trained on whole-image captions, seed 0: top-1 0.746 / 0.677 / 0.614 for context 1.0 / 1.25 / 1.5); tighter
  squares hold fewer neighbours.
* :func:`dense_label_miou` -- CLIP dense maps turned into a segmentation with the image-level labels given:
  each pixel takes the argmax over the labelled classes and the background prompts (any background prompt
  winning = background); mIoU over background + 10 classes against the ground truth (255 ignored).
* :func:`dino_foreground_iou` -- DINO's head-averaged last-layer CLS attention, upsampled to the image and
  thresholded to keep the most-attended pixels holding ``mass`` of the attention (DINO's 60% rule), against
  the ground-truth foreground (mask != 0, 255 ignored).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fmwiss_d2.data.datasets.shapes import STUFF_CLASSES, THING_CLASSES, WorldSpec

__all__ = ["zero_shot_crop_accuracy", "dense_label_miou", "dino_foreground_iou", "attention_foreground",
           "mass_threshold", "foreground_scores", "ideal_attention_iou"]


@torch.no_grad()
def zero_shot_crop_accuracy(clip, spec: WorldSpec, split: str = "val", cache_dir: str | None = None,
                            context: float = 1.0, batch_size: int = 256, max_crops: int | None = None) -> dict:
    from .data import instance_crops

    size = clip.image_size[0]
    crops, labels = instance_crops(spec, split, cache_dir, size, context=context, max_crops=max_crops)
    preds = torch.cat([clip.classify(crops[i:i + batch_size], THING_CLASSES).argmax(1)
                       for i in range(0, len(crops), batch_size)])
    per_class = [float((preds[labels == c] == c).float().mean()) if (labels == c).any() else float("nan")
                 for c in range(len(THING_CLASSES))]
    return {"top1": float((preds == labels).float().mean()), "num_crops": int(len(labels)),
            "per_class_top1": dict(zip(THING_CLASSES, [round(a, 4) for a in per_class]))}


def _confusion(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    valid = gt != 255
    return np.bincount(n * gt[valid].astype(np.int64) + pred[valid], minlength=n * n).reshape(n, n)


@torch.no_grad()
def dense_label_miou(clip, spec: WorldSpec, split: str = "val", cache_dir: str | None = None, *,
                     background_names: Sequence[str] = STUFF_CLASSES, input_size: int | None = None,
                     batch_size: int = 64, max_images: int | None = None) -> dict:
    """mIoU (background + THING_CLASSES) of label-restricted argmax maps; see the module docstring.

    ``input_size``: side the images are resized to before the CLIP (``None`` = native size); maps are
    resized back to the image. Background = the background prompts (default: the world's stuff names,
    which the captions use), which compete with the labelled classes in the argmax.
    """
    from .data import load_world_split

    images, records, masks = load_world_split(spec, split, cache_dir, with_masks=True)
    if max_images:
        images, records, masks = images[:max_images], records[:max_images], masks[:max_images]
    names = list(THING_CLASSES) + list(background_names)
    n_things, n = len(THING_CLASSES), len(THING_CLASSES) + 1
    conf = np.zeros((n, n), np.int64)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float()
        size = tuple(x.shape[-2:])
        if input_size:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        logits = clip.dense_logits(x, names, output_size=size)  # (B, K, H, W)
        for j in range(logits.shape[0]):
            rec = records[i + j]
            allowed = torch.full((len(names),), float("-inf"))
            allowed[[c - 1 for c in rec["image_labels"]]] = 0
            allowed[n_things:] = 0
            arg = (logits[j] + allowed.view(-1, 1, 1)).argmax(0)
            pred = torch.where(arg >= n_things, torch.zeros_like(arg), arg + 1).numpy()
            conf += _confusion(pred, masks[i + j].numpy(), n)
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    return {"miou": float(iou.mean()), "iou_background": float(iou[0]), "miou_things": float(iou[1:].mean()),
            "num_images": len(images), "background": list(background_names), "input_size": input_size}


def mass_threshold(attn: torch.Tensor, mass: float) -> torch.Tensor:
    """Boolean mask of the largest entries of each ``(B, ...)`` map that together hold ``mass`` of its sum."""
    flat = attn.flatten(1)
    flat = flat / flat.sum(1, keepdim=True)
    vals, idx = flat.sort(dim=1, descending=True)
    keep_sorted = (vals.cumsum(1) - vals) < mass  # keep until the mass is reached (the crossing entry included)
    keep = torch.zeros_like(keep_sorted).scatter(1, idx, keep_sorted)
    return keep.view_as(attn)


@torch.no_grad()
def attention_foreground(dino, images: torch.Tensor, mass: float = 0.6, input_size: int | None = None):
    """``(attention, mask)`` at the images' size: head-averaged last-layer CLS attention (bilinear upsampling,
    negatives clamped) and its pixels holding ``mass`` of it. ``input_size``: side the images are resized to
    before the ViT (``None`` = native)."""
    x = images.float()
    size = tuple(x.shape[-2:])
    if input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    attn = dino(x)["attentions"].mean(1, keepdim=True)
    attn = F.interpolate(attn, size=size, mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    return attn, mass_threshold(attn, mass)


def _valid_and_foreground(masks: torch.Tensor):
    """``(valid, foreground)`` boolean maps of semantic masks: 255 is ignored, 0 is background."""
    valid = masks != 255
    return valid, (masks != 0) & valid


def foreground_scores(attn: torch.Tensor, pred: torch.Tensor, masks: torch.Tensor) -> dict:
    """Per-image lists ``iou``, ``precision``, ``recall``, ``fg_mass`` and summed ``inter`` / ``union``.

    ``attn`` float and ``pred`` bool ``(B, H, W)``; ``masks`` the semantic masks (0 background, 255 ignored).
    ``fg_mass``: share of the attention on foreground pixels -- with ``recall`` it tells whether a low IoU comes
    from attention spilling onto the background or from objects left out.
    """
    valid, fg = _valid_and_foreground(masks)
    pred = pred & valid
    inter = (pred & fg).flatten(1).sum(1).float()
    union = (pred | fg).flatten(1).sum(1).float()
    a = (attn * valid).flatten(1)
    return {"iou": (inter / union.clamp_min(1)).tolist(),
            "precision": (inter / pred.flatten(1).sum(1).clamp_min(1)).tolist(),
            "recall": (inter / fg.flatten(1).sum(1).clamp_min(1)).tolist(),
            "fg_mass": ((a * fg.flatten(1)).sum(1) / a.sum(1).clamp_min(1e-12)).tolist(),
            "inter": int(inter.sum()), "union": int(union.sum())}


def ideal_attention_iou(masks: torch.Tensor, grid: int, mass: float = 0.6) -> list[float]:
    """Per-image IoU that a perfect attention map -- uniform over the foreground, seen at a ``grid x grid``
    patch resolution and upsampled like the ViT's -- would score under the ``mass`` rule: the ceiling of the
    measure. Even at pixel resolution it is ``mass`` (the rule keeps that share of a uniform map)."""
    fg = _valid_and_foreground(masks)[1].float()[:, None]
    attn = F.interpolate(F.adaptive_avg_pool2d(fg, grid), size=masks.shape[-2:], mode="bilinear",
                         align_corners=False)[:, 0].clamp_min(0) + 1e-6  # the epsilon orders empty maps
    return foreground_scores(attn, mass_threshold(attn, mass), masks)["iou"]


@torch.no_grad()
def dino_foreground_iou(dino, spec: WorldSpec, split: str = "val", cache_dir: str | None = None, *,
                        mass: float = 0.6, input_size: int | None = None, batch_size: int = 64,
                        max_images: int | None = None) -> dict:
    """Foreground IoU of thresholded head-averaged CLS attention; see the module docstring.

    Returns the mean per-image IoU (``iou``), the dataset-level IoU (``iou_dataset``, summed intersections
    over summed unions), the mean per-image ``precision``, ``recall`` and ``fg_mass`` (see
    :func:`foreground_scores`) and ``ideal_iou``, the measure's ceiling at the ViT's patch grid
    (:func:`ideal_attention_iou`).
    """
    from .data import load_world_split

    images, _, masks = load_world_split(spec, split, cache_dir, with_masks=True)
    if max_images:
        images, masks = images[:max_images], masks[:max_images]
    per_image = ("iou", "precision", "recall", "fg_mass")
    stats = {k: [] for k in per_image + ("ideal_iou",)}
    inter_sum, union_sum = 0, 0
    for i in range(0, len(images), batch_size):
        attn, pred = attention_foreground(dino, images[i:i + batch_size], mass, input_size)
        gt = masks[i:i + batch_size]
        scores = foreground_scores(attn, pred, gt)
        for k in per_image:
            stats[k] += scores[k]
        grid = (input_size or gt.shape[-1]) // dino.patch_size[0]
        stats["ideal_iou"] += ideal_attention_iou(gt, grid, mass)
        inter_sum += scores["inter"]
        union_sum += scores["union"]
    return {**{k: float(np.mean(v)) for k, v in stats.items()}, "iou_dataset": inter_sum / max(union_sum, 1),
            "mass": mass, "input_size": input_size, "num_images": len(images)}
