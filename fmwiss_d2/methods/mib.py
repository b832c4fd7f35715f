"""MiB on both model families (Cermelli et al., CVPR 2020; the mask-classification form follows CoMFormer,
Cermelli et al., CVPR 2023, where the "no object" logit plays the background's role).

    loss = model losses with UCE as the class loss (the model's background logits absorb the old classes)
           + lambda * UKD(logits, old logits)      (old background <-> new background + new classes)

Per-pixel models (DeepLabV3) have one background logit (class 0); mask-classification models (Mask2Former) two,
the background class and "no object" (an unmatched query may be an old object the new labels call
background), and distil their "no object" (see :class:`~fmwiss_d2.modeling.meta_arch.base.SegmentorBase`).
Optionally (``METHOD.MIB.PSEUDO_LABEL``, on in the Mask2Former configs) background pixels that the old model
assigns to an old class get that class as label, through the ``OldModelSource`` pseudo-label source: CoMFormer's
pseudo labelling. Why: with a background *class*, the background's mask target covers the old objects, so the
background query learns to cover them and the old classes vanish from the semantic inference whatever the
class-level losses do (measured: 0.0 old mIoU on shapes 6-4 without it; docs/experiments.md).
New classifiers start from the background (per-pixel) or "no object" (mask classification) classifier.
"""
from __future__ import annotations

import functools
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable

from ..data.dataset_mappers.semantic import semantic_to_instances
from ..modeling.losses.mib import background_init, unbiased_cross_entropy, unbiased_distillation
from ..pseudo_labels import PseudoLabelContext, PseudoLabels
from ..pseudo_labels.sources import OldModelSource
from .base import METHOD_REGISTRY, Method, MethodConfigError


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


def pseudo_label_background(labels: torch.Tensor, pseudo: PseudoLabels, classes, background: int = 0
                            ) -> torch.Tensor:
    """Label maps with pseudo labels put back where the step's labels say background (CoMFormer, Sec. 3.3).

    A pixel labelled ``background`` whose pseudo label is valid and one of ``classes`` takes that class; every
    other pixel (new classes, ignored ones, other pseudo labels) keeps its label. ``labels`` (N, H, W) may be
    smaller than the pseudo labels' (N, H', W') padded batch: the top-left corner is used."""
    h, w = labels.shape[-2:]
    hard = pseudo.hard(ignore_label=-1)[:, :h, :w].to(labels.device)
    take = (labels == background) & torch.isin(hard, torch.as_tensor(list(classes), device=labels.device))
    return torch.where(take, hard, labels)


@METHOD_REGISTRY.register()
class MiB(Method):
    needs_old_model = True
    needs_background = True

    @configurable
    def __init__(self, model, *, task=None, step: int = 0, max_iter: int = 0, kd_weight: float,
                 unbiased_ce: bool, init_from_background: bool, mask_kd_weight: float,
                 pseudo_label_source: OldModelSource | None, ignore_label: int = 255):
        """
        Args:
            kd_weight: weight of the unbiased distillation (MiB's lambda).
            unbiased_ce: the model's background logits absorb the old classes in the class loss.
            init_from_background: new classifiers start from the background's (see :meth:`start_step`).
            mask_kd_weight: mask classification only: distil old-class queries' masks (0 = off).
            pseudo_label_source: old-model pseudo labels on background pixels (None = off).
            ignore_label: label of ignored pixels.
        """
        super().__init__(model, task=task, step=step, max_iter=max_iter)
        self.kd_weight = kd_weight
        self.unbiased_ce = unbiased_ce
        self.init_from_background = init_from_background
        self.mask_kd_weight = mask_kd_weight
        self.pseudo_label_source = pseudo_label_source
        self.ignore_label = ignore_label
        if mask_kd_weight > 0 and not hasattr(model, "criterion"):
            raise MethodConfigError(f"METHOD.MIB.MASK_KD_WEIGHT > 0 needs a mask-classification model; "
                                    f"{type(model).__name__} predicts per pixel. Set it to 0.")

    @classmethod
    def from_config(cls, cfg, model, *, task=None, step: int = 0):
        c = cfg.METHOD.MIB
        return {
            **super().from_config(cfg, model, task=task, step=step),
            "kd_weight": c.KD_WEIGHT, "unbiased_ce": c.UNBIASED_CE, "init_from_background": c.INIT_FROM_BACKGROUND,
            "mask_kd_weight": c.MASK_KD_WEIGHT,
            "pseudo_label_source": OldModelSource(cfg) if c.PSEUDO_LABEL else None,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def start_step(self) -> None:
        if not self.init_from_background or self.step == 0:
            return
        clf = self.model.classifier
        new_layer = clf.cls[self.step]
        bg_layer, row = clf.logit_layer(self.model.distillation_background)  # the background the old model knew
        weights, biases, bg_bias = background_init(bg_layer.weight[row], bg_layer.bias[row], new_layer.out_features)
        with torch.no_grad():
            new_layer.weight.copy_(weights)
            new_layer.bias.copy_(biases)
            bg_layer.bias[row] = bg_bias

    def _with_pseudo_labels(self, batched_inputs: List[Dict], images, old_outputs) -> List[Dict]:
        """The batch with old-class pseudo labels on its background pixels (``sem_seg``, and ``instances``
        rebuilt from it when present)."""
        context = PseudoLabelContext(class_names=self.task.seen_classes(self.step), old_model=self.old_model,
                                     old_outputs=old_outputs)
        pseudo = self.pseudo_label_source(images.tensor * self.model.pixel_std + self.model.pixel_mean,
                                          [torch.zeros(0, dtype=torch.long)] * len(batched_inputs), context)
        out = []
        for b, x in enumerate(batched_inputs):
            sem = pseudo_label_background(x["sem_seg"][None], PseudoLabels(pseudo.scores[b: b + 1],
                                                                           pseudo.valid[b: b + 1]), self.old_ids)[0]
            x = {**x, "sem_seg": sem}
            if "instances" in x:
                x["instances"] = semantic_to_instances(sem, self.ignore_label)
            out.append(x)
        return out

    def losses(self, batched_inputs):
        model = self.model
        images = model.preprocess_images(batched_inputs)
        outputs = model.forward_outputs(images.tensor)
        if self.step == 0 or self.old_model is None:
            return model.losses(outputs, model.prepare_targets(batched_inputs, images))
        with torch.no_grad():
            old = self.old_model.forward_outputs(images.tensor)
        if self.pseudo_label_source is not None:
            batched_inputs = self._with_pseudo_labels(batched_inputs, images, old)
        class_loss = None
        if self.unbiased_ce:
            class_loss = functools.partial(unbiased_cross_entropy, old_ids=self.old_ids,
                                           background=model.background_logits,
                                           old_targets_to_background=self.pseudo_label_source is None)
        losses = model.losses(outputs, model.prepare_targets(batched_inputs, images), class_loss=class_loss)
        kd = unbiased_distillation(outputs["pred_logits"].float(), old["pred_logits"].float(), self.new_ids,
                                   background=model.distillation_background, dim=model.class_dim)
        losses["loss_kd"] = self.kd_weight * kd
        if self.mask_kd_weight > 0:
            losses["loss_mask_kd"] = self.mask_kd_weight * old_query_mask_distillation(outputs, old, self.old_ids)
        return losses
