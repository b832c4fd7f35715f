"""MiB on both model families (Cermelli et al., CVPR 2020; the mask-classification form follows CoMFormer,
Cermelli et al., CVPR 2023, where the "no object" logit plays the background's role).

Per-pixel (DeepLabV3), as in the paper:
    loss = UCE(logits, labels; background absorbs old classes) + lambda * UKD(logits, old_logits)
Mask classification (Mask2Former):
    the criterion's class term becomes UCE with both the background class and "no object" absorbing the old
    classes (an unmatched query may be an old object the new labels call background); masks are trained as
    usual; UKD on every query's class distribution, old "no object" <-> new "no object" + new classes.
New classifiers start from the background (per-pixel) or "no object" (mask classification) classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling.losses.mib import background_init, unbiased_cross_entropy, unbiased_distillation
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


@METHOD_REGISTRY.register()
class MiB(IncrementalMethod):
    needs_old_model = True

    def __init__(self, cfg, task, step):
        super().__init__(cfg, task, step)
        c = cfg.INCREMENTAL.MIB
        self.kd_weight = c.KD_WEIGHT
        self.unbiased_ce = c.UNBIASED_CE
        self.init_from_background = c.INIT_FROM_BACKGROUND
        self.mask_kd_weight = c.MASK_KD_WEIGHT

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
            if self.unbiased_ce:
                model.criterion.class_loss = lambda logits, target, weight=None: unbiased_cross_entropy(
                    logits, target, self.old_ids, background=(0, k), dim=1, weight=weight)
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
