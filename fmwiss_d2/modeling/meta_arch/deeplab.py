"""Per-pixel DeepLabV3 meta-architecture (ResNet, output stride 16, ASPP head)."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ASPP
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..heads.classifier import IncrementalClassifier
from .base import ClassLoss, SegmentorBase

__all__ = ["DeepLabV3"]


@META_ARCH_REGISTRY.register()
class DeepLabV3(SegmentorBase):
    """backbone feature (stride 16) -> ASPP (1x1, three atrous 3x3, image pooling; concatenated, projected)
    -> per-pixel :class:`IncrementalClassifier` -> logits, upsampled bilinearly to the image.

    As in :class:`MaskFormer`, raw outputs (:meth:`forward_outputs`), :meth:`losses` and :meth:`inference`
    are separate methods.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        aspp_channels: int,
        aspp_dilations: Sequence[int],
        aspp_dropout: float,
        norm: str,
        classes_per_step: List[int],
        ignore_value: int,
        loss_weight: float,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 0,
    ):
        """
        Args:
            backbone: returns a dict of feature maps containing ``in_feature``.
            in_feature: feature fed to ASPP.
            aspp_channels / aspp_dilations / aspp_dropout: ASPP width, atrous rates, dropout after projection.
            norm: norm of the ASPP convolutions.
            classes_per_step: class groups of the per-pixel classifier (class 0 of step 0 is the background).
            ignore_value: label ignored by the loss.
            loss_weight: weight of the cross-entropy.
            pixel_mean / pixel_std: input normalisation.
            size_divisibility: images are padded to a multiple of this (0 = backbone's own).
        """
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         size_divisibility=size_divisibility)
        self.in_feature = in_feature
        in_channels = backbone.output_shape()[in_feature].channels
        self.aspp = ASPP(in_channels, aspp_channels, list(aspp_dilations), norm=norm, activation=F.relu,
                         dropout=aspp_dropout)
        self.classifier = IncrementalClassifier(aspp_channels, classes_per_step)
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DEEPLAB
        return {
            "backbone": build_backbone(cfg),
            "in_feature": d.IN_FEATURE,
            "aspp_channels": d.ASPP_CHANNELS,
            "aspp_dilations": d.ASPP_DILATIONS,
            "aspp_dropout": d.ASPP_DROPOUT,
            "norm": d.NORM,
            "classes_per_step": list(cfg.MODEL.CLASSES_PER_STEP) or [cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES],
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": d.LOSS_WEIGHT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
        }

    def forward_outputs(self, images: torch.Tensor) -> Dict:
        """``pred_logits`` (N, K, H, W) at the image resolution, ``features`` (N, C, H/16, W/16) after ASPP and
        ``backbone_features``, the backbone's ``in_feature`` map (for a method's own heads, e.g. DuPL's CAMs)."""
        backbone_features = self.backbone(images)[self.in_feature]
        features = self.aspp(backbone_features)
        logits = self.classifier(features, dim=1)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"pred_logits": logits, "features": features, "backbone_features": backbone_features}

    def per_pixel_scores(self, outputs: Dict) -> torch.Tensor:
        """Softmax of the per-pixel logits."""
        return outputs["pred_logits"].float().softmax(1)

    def per_pixel_logits(self, outputs: Dict) -> torch.Tensor:
        """The raw logits (softmax and sigmoid have the same argmax)."""
        return outputs["pred_logits"]

    def pixel_features(self, outputs: Dict) -> torch.Tensor:
        """The backbone's ``in_feature`` map, the one ASPP reads."""
        return outputs["backbone_features"]

    @property
    def pixel_feature_channels(self) -> int:
        return self.backbone.output_shape()[self.in_feature].channels

    def start_new_classes(self, ids: Sequence[int], prior: float) -> None:
        """Zero weights and bias ``log(prior / (1 - prior))``: each new class's sigmoid is ``prior`` everywhere
        (RetinaNet's prior initialisation), and the softmax argmax stays the old one wherever an old logit exceeds
        that bias."""
        bias = math.log(prior / (1 - prior))
        with torch.no_grad():
            for c in ids:
                layer, row = self.classifier.logit_layer(c)
                layer.weight[row] = 0.0
                layer.bias[row] = bias

    @property
    def background_logits(self) -> Tuple[int, ...]:
        """The background class (id 0)."""
        return (0,)

    @property
    def distillation_background(self) -> int:
        return 0

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> torch.Tensor:
        """(N, H_pad, W_pad) int64 labels, padding = ignore."""
        sem = [x["sem_seg"].to(self.device) for x in batched_inputs]
        return ImageList.from_tensors(sem, self.size_divisibility, pad_value=self.ignore_value).tensor.long()

    def losses(self, outputs: Dict, targets: torch.Tensor, class_loss: Optional[ClassLoss] = None
               ) -> Dict[str, torch.Tensor]:
        """``loss_sem_seg = loss_weight * mean over non-ignored pixels of CE(logits(x), y(x))``; ``class_loss``
        replaces the cross-entropy (called like ``F.cross_entropy`` with ``ignore_index``)."""
        loss = (class_loss or F.cross_entropy)(outputs["pred_logits"].float(), targets, ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}

    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        results = []
        for logits, x, image_size in zip(outputs["pred_logits"], batched_inputs, images.image_sizes):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            results.append({"sem_seg": sem_seg_postprocess(logits.softmax(0), image_size, height, width)})
        return results
