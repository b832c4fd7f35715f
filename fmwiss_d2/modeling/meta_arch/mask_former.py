"""Mask-classification meta-architecture (Mask2Former design)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList

from ..criterion import build_criterion
from ..losses.mib import background_init
from .base import ClassLoss, SegmentorBase
from ..matcher import build_matcher
from ..pixel_decoder import build_pixel_decoder
from ..postprocessing import instance_inference, panoptic_inference, semantic_inference
from ..transformer_decoder import build_transformer_decoder

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(SegmentorBase):
    """backbone -> pixel decoder -> transformer decoder -> (class, mask) per query.

    The three stages a method may reuse are separate methods: :meth:`forward_outputs` (raw predictions),
    :meth:`losses` (criterion on prepared targets) and :meth:`inference` (post-processing); ``forward`` only
    chains them.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        thing_ids: Sequence[int] = (),
        test_topk_per_image: int = 100,
        sem_seg_postprocess_before_inference: bool = False,
    ):
        """
        Args:
            backbone: returns a dict of feature maps.
            pixel_decoder: features -> (mask_features, multi-scale features).
            transformer_decoder: (multi-scale features, mask_features) -> prediction dict.
            criterion: (outputs, targets) -> dict of unweighted losses, with a ``weight_dict`` attribute.
            pixel_mean / pixel_std: input normalisation.
            size_divisibility: images are padded to a multiple of this.
            semantic_on / panoptic_on / instance_on: which outputs inference produces.
            object_mask_threshold / overlap_threshold: panoptic post-processing thresholds.
            thing_ids: contiguous ids of thing classes (panoptic: the others are stuff; instance: kept classes).
            test_topk_per_image: instances kept per image.
            sem_seg_postprocess_before_inference: resize masks to the output size before combining them.
        """
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         size_divisibility=size_divisibility)
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.criterion = criterion
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.thing_ids = list(thing_ids)
        self.test_topk_per_image = test_topk_per_image
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        m = cfg.MODEL.MASK_FORMER
        thing_ids = []
        if cfg.DATASETS.TEST:
            meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
            thing_ids = list(getattr(meta, "thing_dataset_id_to_contiguous_id", {}).values())
        return {
            "backbone": backbone,
            "pixel_decoder": build_pixel_decoder(cfg, backbone.output_shape()),
            "transformer_decoder": build_transformer_decoder(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM),
            "criterion": build_criterion(cfg, build_matcher(cfg)),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": m.SIZE_DIVISIBILITY,
            "semantic_on": m.TEST.SEMANTIC_ON,
            "panoptic_on": m.TEST.PANOPTIC_ON,
            "instance_on": m.TEST.INSTANCE_ON,
            "object_mask_threshold": m.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": m.TEST.OVERLAP_THRESHOLD,
            "thing_ids": thing_ids,
            "test_topk_per_image": m.TEST.DETECTIONS_PER_IMAGE,
            "sem_seg_postprocess_before_inference": m.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        }

    @property
    def classifier(self):
        """The :class:`IncrementalClassifier` producing the class logits."""
        return self.transformer_decoder.class_embed

    class_dim = -1  # pred_logits: (N, Q, K+1)

    def per_pixel_scores(self, outputs: Dict) -> torch.Tensor:
        """Mask2Former's semantic inference ``S_k(x) = sum_q softmax(cls_q)_k * sigmoid(m_q(x))`` (no-object
        dropped), at the masks' resolution."""
        probs = F.softmax(outputs["pred_logits"].float(), dim=-1)[..., :-1]
        return torch.einsum("nqc,nqhw->nchw", probs, outputs["pred_masks"].float().sigmoid())

    def per_pixel_logits(self, outputs: Dict, eps: float = 1e-6) -> torch.Tensor:
        """``z_k = log(S_k + eps) - log(sum_{j != k} S_j + eps)`` from :meth:`per_pixel_scores` S, so that
        ``sigmoid(z_k) = S_k / sum_j S_j`` (up to eps): the semantic scores normalised over the classes, the
        argmax of the semantic inference. Why normalised: S_k sums over queries and exceeds 1 where two queries
        of one class overlap, so S itself is no probability a BCE can train; the others' sum is taken in place of
        ``1 - S_k / sum`` so that no difference of near-equal numbers enters the log."""
        s = self.per_pixel_scores(outputs)
        others = (s.sum(1, keepdim=True) - s).clamp_min(0.0)
        return torch.log(s + eps) - torch.log(others + eps)

    def pixel_features(self, outputs: Dict) -> torch.Tensor:
        """The pixel decoder's mask features (stride 4), the per-pixel map every query's mask is read from."""
        return outputs["mask_features"]

    @property
    def pixel_feature_channels(self) -> int:
        return self.pixel_decoder.mask_dim

    def start_new_classes(self, ids: Sequence[int], prior: float) -> None:
        """The new rows copy "no object" and take ``prior`` of its probability in every query
        (:func:`~fmwiss_d2.modeling.losses.mib.background_init` with share ``prior``): the softmax's normaliser is
        unchanged, so every query's old-class probabilities, and the semantic scores of the old classes, are
        exactly the old ones; a new class starts at ``prior`` x each query's no-object probability."""
        no_object, row = self.classifier.logit_layer(-1)
        weights, biases, bias = background_init(no_object.weight[row], no_object.bias[row], len(ids), share=prior)
        with torch.no_grad():
            for c, w, b in zip(ids, weights, biases):
                layer, r = self.classifier.logit_layer(c)
                layer.weight[r] = w
                layer.bias[r] = b
            no_object.bias[row] = bias

    @property
    def background_logits(self) -> Tuple[int, ...]:
        """The background class (id 0) and "no object" (the last logit): an unmatched query may be an old object
        that the step's labels call background (CoMFormer)."""
        return (0, self.classifier.num_classes)

    @property
    def distillation_background(self) -> int:
        """Old "no object" <-> new "no object" + new classes (CoMFormer)."""
        return -1

    def forward_outputs(self, images: torch.Tensor) -> Dict:
        """Raw predictions for a normalised, padded batch (N, 3, H, W): ``pred_logits`` (N, Q, K+1),
        ``pred_masks`` (N, Q, H/4, W/4), ``pred_embeddings``, ``aux_outputs`` and ``mask_features`` (N, mask_dim,
        H/4, W/4), the pixel decoder's output."""
        features = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder(features)
        return {**self.transformer_decoder(multi_scale, mask_features), "mask_features": mask_features}

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Per image ``labels`` (M,) and ``masks`` (M, H_pad, W_pad) from ``instances`` (gt_classes, gt_masks)."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            gt = x["instances"].to(self.device)
            masks = gt.gt_masks.tensor if isinstance(gt.gt_masks, BitMasks) else gt.gt_masks
            padded = torch.zeros((masks.shape[0], h_pad, w_pad), dtype=torch.float32, device=self.device)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": gt.gt_classes, "masks": padded})
        return targets

    def losses(self, outputs: Dict, targets: List[Dict], class_loss: Optional[ClassLoss] = None
               ) -> Dict[str, torch.Tensor]:
        """Weighted criterion terms; ``class_loss`` replaces the class cross-entropy (see the criterion)."""
        raw = self.criterion(outputs, targets, class_loss=class_loss)
        weights = self.criterion.weight_dict
        return {k: v * weights.get(k, weights.get(k.rsplit("_", 1)[0], 1.0)) for k, v in raw.items()}

    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        mask_cls = outputs["pred_logits"]
        mask_pred = F.interpolate(outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear",
                                  align_corners=False)
        results = []
        for cls_i, masks_i, x, image_size in zip(mask_cls, mask_pred, batched_inputs, images.image_sizes):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            out = {}
            resized = None
            if self.sem_seg_postprocess_before_inference or self.panoptic_on or self.instance_on:
                resized = sem_seg_postprocess(masks_i, image_size, height, width)
            if self.semantic_on:
                if self.sem_seg_postprocess_before_inference:
                    out["sem_seg"] = semantic_inference(cls_i, resized)
                else:
                    out["sem_seg"] = sem_seg_postprocess(semantic_inference(cls_i, masks_i), image_size, height,
                                                         width)
            if self.panoptic_on:
                out["panoptic_seg"] = panoptic_inference(
                    cls_i, resized, thing_ids=self.thing_ids, object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                )
            if self.instance_on:
                out["instances"] = instance_inference(
                    cls_i, resized, topk=self.test_topk_per_image,
                    thing_ids=self.thing_ids if self.panoptic_on else None,
                )
            results.append(out)
        return results
