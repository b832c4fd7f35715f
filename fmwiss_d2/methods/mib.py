"""MiB on both model families (Cermelli et al., CVPR 2020; the mask-classification form follows CoMFormer,
Cermelli et al., CVPR 2023, where the "no object" logit plays the background's role).

Per-pixel (DeepLabV3), as in the paper:
    loss = UCE(logits, labels; background absorbs old classes) + lambda * UKD(logits, old_logits)
Mask classification (Mask2Former):
    the criterion's class term becomes UCE with both the background class and "no object" absorbing the old
    classes (an unmatched query may be an old object the new labels call background); masks are trained as
    usual; UKD on every query's class distribution, old "no object" <-> new "no object" + new classes.
    Optionally (``INCREMENTAL.MIB.PSEUDO_LABEL``, on in the Mask2Former configs) background pixels that the
    old model assigns to an old class become that class's mask target, CoMFormer's mask-based pseudo
    labelling. Why: with a background *class*, the background's mask target covers the old objects, so the
    background query learns to cover them and the old classes vanish from the semantic inference whatever
    the class-level losses do (measured: 0.0 old mIoU on shapes 6-4 without it; README).
New classifiers start from the background (per-pixel) or "no object" (mask classification) classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling.losses.mib import background_init, unbiased_cross_entropy, unbiased_distillation
from ..modeling.postprocessing import semantic_inference
from .base import METHOD_REGISTRY, IncrementalMethod, is_mask_classification


def old_query_mask_distillation(outputs, old_outputs, old_ids) -> torch.Tensor:
    """Mask distillation for mask classification (after CoMFormer): every query's mask logits are pulled to the
    old model's mask probabilities, weighted by the old model's probability that the query is an old class:

        loss = mean_{n,q,x} w_{nq} * BCE(sigmoid(m_{nq}(x)), sigmoid(m^old_{nq}(x))),  w = sum_{c in old} p^old_c

    Why: in the new labels old objects are background, so without it the masks of old-object queries
    are free to drift while the background's mask grows over them."""
    w = old_outputs["pred_logits"].softmax(-1)[..., list(old_ids)].sum(-1)  # (N, Q)
    target = old_outputs["pred_masks"].sigmoid()
    bce = F.binary_cross_entropy_with_logits(outputs["pred_masks"].float(), target.float(), reduction="none")
    return (w[..., None, None] * bce).mean()


def pseudo_label_old_classes(targets, old_outputs, old_ids, background: int = 0, threshold: float = 0.0):
    """Mask targets with the old classes put back where the new labels say background (CoMFormer, Sec. 3.3).

    The old model's per-pixel class scores are Mask2Former's semantic inference
    ``S_c(x) = sum_q softmax(cls_q)_c * sigmoid(m_q(x))`` (no-object dropped), upsampled to the targets'
    size and normalised over classes. A pixel of the background target whose argmax is an old class ``c``
    with normalised score ``>= threshold`` leaves the background mask and joins a mask of class ``c``;
    new-class and ignored pixels are never changed.

    Args:
        targets: per image ``{"labels": (M,), "masks": (M, H, W)}`` (the criterion's targets).
        old_outputs: the old model's ``pred_logits`` (N, Q, K_old + 1) and ``pred_masks`` (N, Q, h, w).
        old_ids: old class ids (background excluded).
    Returns new target dicts (the inputs are not modified).
    """
    old_ids = [c for c in old_ids if c != background]
    if not old_ids:
        return targets
    out = []
    for b, t in enumerate(targets):
        labels, masks = t["labels"], t["masks"]
        is_bg = labels == background
        if not bool(is_bg.any()):
            out.append(t)
            continue
        scores = semantic_inference(old_outputs["pred_logits"][b].float(), old_outputs["pred_masks"][b].float())
        s = F.interpolate(scores[None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[0]
        s = s / s.sum(0, keepdim=True).clamp_min(1e-6)
        conf, pred = s.max(0)
        bg = masks[is_bg].sum(0) > 0.5
        new_labels, new_masks, taken = [], [], torch.zeros_like(bg)
        for c in old_ids:
            region = bg & (pred == c) & (conf >= threshold)
            if bool(region.any()):
                new_labels.append(c)
                new_masks.append(region)
                taken |= region
        if not new_labels:
            out.append(t)
            continue
        rest = bg & ~taken
        keep = ~is_bg
        labels_out = [labels[keep]]
        masks_out = [masks[keep]]
        if bool(rest.any()):
            labels_out.append(labels.new_tensor([background]))
            masks_out.append(rest[None].to(masks.dtype))
        labels_out.append(labels.new_tensor(new_labels))
        masks_out.append(torch.stack(new_masks).to(masks.dtype))
        out.append({**t, "labels": torch.cat(labels_out), "masks": torch.cat(masks_out)})
    return out


@METHOD_REGISTRY.register()
class MiB(IncrementalMethod):
    needs_old_model = True
    needs_background = True

    def __init__(self, cfg, task, step):
        super().__init__(cfg, task, step)
        c = cfg.INCREMENTAL.MIB
        self.kd_weight = c.KD_WEIGHT
        self.unbiased_ce = c.UNBIASED_CE
        self.init_from_background = c.INIT_FROM_BACKGROUND
        self.mask_kd_weight = c.MASK_KD_WEIGHT
        self.pseudo_label = c.PSEUDO_LABEL
        self.pseudo_label_threshold = c.PSEUDO_LABEL_THRESHOLD

    def init_new_classes(self, model) -> None:
        if not self.init_from_background or self.step == 0:
            return
        clf = model.classifier
        new_layer = clf.cls[self.step]
        bg_layer, row = (clf.no_object, 0) if is_mask_classification(model) else (clf.cls[0], 0)
        weights, biases, bg_bias = background_init(bg_layer.weight[row], bg_layer.bias[row], new_layer.out_features)
        with torch.no_grad():
            new_layer.weight.copy_(weights)
            new_layer.bias.copy_(biases)
            bg_layer.bias[row] = bg_bias

    def losses(self, model, old_model, batched_inputs):
        images = model.preprocess_images(batched_inputs)
        outputs = model.forward_outputs(images.tensor)
        targets = model.prepare_targets(batched_inputs, images)
        if self.step == 0 or old_model is None:
            return model.losses(outputs, targets)
        with torch.no_grad():
            old = old_model.forward_outputs(images.tensor)
        mask_cls = is_mask_classification(model)
        if mask_cls:
            k = outputs["pred_logits"].shape[-1] - 1  # index of "no object"
            if self.pseudo_label:
                targets = pseudo_label_old_classes(targets, old, self.old_ids, threshold=self.pseudo_label_threshold)
            if self.unbiased_ce:
                model.criterion.class_loss = lambda logits, target, weight=None: unbiased_cross_entropy(
                    logits, target, self.old_ids, background=(0, k), dim=1, weight=weight,
                    old_targets_to_background=not self.pseudo_label)
            try:
                losses = model.losses(outputs, targets)
            finally:
                model.criterion.class_loss = None
            kd = unbiased_distillation(outputs["pred_logits"], old["pred_logits"], self.new_ids, background=-1, dim=-1)
            if self.mask_kd_weight > 0:
                losses["loss_mask_kd"] = self.mask_kd_weight * old_query_mask_distillation(outputs, old, self.old_ids)
        else:
            losses = model.losses(outputs, targets)
            if self.unbiased_ce:
                losses["loss_sem_seg"] = model.loss_weight * unbiased_cross_entropy(
                    outputs["pred_logits"].float(), targets, self.old_ids, ignore_index=model.ignore_value)
            kd = unbiased_distillation(outputs["pred_logits"].float(), old["pred_logits"].float(), self.new_ids)
        losses["loss_kd"] = self.kd_weight * kd
        return losses
