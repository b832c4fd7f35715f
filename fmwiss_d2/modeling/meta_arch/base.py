"""What every meta-architecture of this project shares: input normalisation and padding, and the contract a
method may rely on (the same calls on a mask-classification and a per-pixel model)."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.structures import ImageList


ClassLoss = Callable[..., torch.Tensor]


class SegmentorBase(nn.Module):
    """Holds the backbone, ``pixel_mean``/``pixel_std`` buffers and ``size_divisibility`` (the given one, or the
    backbone's when it is <= 0); turns detectron2's batched inputs into a normalised, padded
    :class:`ImageList` (:meth:`preprocess_images`); ``forward`` chains the stages a subclass defines.

    What a method may call, on either model family (nothing else; a method never branches on the family):

    * :meth:`features` -- the backbone's feature maps;
    * :meth:`forward_outputs` -- raw predictions; ``outputs["pred_logits"]`` holds the class logits with the
      class axis at :attr:`class_dim`;
    * :meth:`per_pixel_scores` -- per-pixel class probabilities ``(N, K, h, w)`` over the K real classes;
    * :meth:`per_pixel_logits` -- per-pixel class logits ``(N, K, h, w)`` for a per-class sigmoid (BCE), whose
      argmax is the model's semantic prediction;
    * :meth:`pixel_features` -- the per-pixel feature map of the outputs (``pixel_feature_channels`` wide) that a
      method's own dense head reads;
    * :meth:`start_new_classes` -- new classes' rows started low without changing the old classes' prediction;
    * :meth:`prepare_targets` and :meth:`losses`, with an injectable class loss (same call as
      ``F.cross_entropy``: class axis 1, keyword ``weight`` and/or ``ignore_index``);
    * :attr:`background_logits` -- the logits that mean "none of this step's foreground classes" (an
      unbiased loss lets them absorb old classes) and :attr:`distillation_background` -- the old model's logit
      that distillation compares with the new background plus the new classes;
    * :meth:`inference`.
    """

    class_dim: int = 1  # axis of the class logits in outputs["pred_logits"]

    def __init__(self, *, backbone: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 size_divisibility: int):
        super().__init__()
        self.backbone = backbone
        self.size_divisibility = size_divisibility if size_divisibility > 0 else backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The backbone's feature maps of a normalised, padded batch (e.g. for a method's own heads)."""
        return self.backbone(images)

    def per_pixel_scores(self, outputs: Dict) -> torch.Tensor:
        """Per-pixel class probabilities ``(N, K, h, w)`` (K real classes) at the outputs' resolution."""
        raise NotImplementedError

    def per_pixel_logits(self, outputs: Dict) -> torch.Tensor:
        """Per-pixel class logits ``(N, K, h, w)`` that a per-class sigmoid (BCE) trains; their argmax is the
        model's semantic prediction."""
        raise NotImplementedError

    def pixel_features(self, outputs: Dict) -> torch.Tensor:
        """The per-pixel feature map ``(N, pixel_feature_channels, h, w)`` computed by :meth:`forward_outputs`
        (for a method's own dense heads, e.g. FMWISS's teacher)."""
        raise NotImplementedError

    @property
    def pixel_feature_channels(self) -> int:
        raise NotImplementedError

    def start_new_classes(self, ids: Sequence[int], prior: float) -> None:
        """Re-initialises the classifier rows of the classes ``ids`` so that they start at a small probability
        ``prior`` (in the sense of the family's classifier) and the prediction over the other classes is kept."""
        raise NotImplementedError

    @property
    def background_logits(self) -> Tuple[int, ...]:
        raise NotImplementedError

    @property
    def distillation_background(self) -> int:
        raise NotImplementedError

    def losses(self, outputs: Dict, targets, class_loss: Optional[ClassLoss] = None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted losses. Inference: one result dict per image."""
        images = self.preprocess_images(batched_inputs)
        outputs = self.forward_outputs(images.tensor)
        if self.training:
            return self.losses(outputs, self.prepare_targets(batched_inputs, images))
        return self.inference(outputs, batched_inputs, images)


def class_probabilities(model, outputs: Dict, size: Tuple[int, int]) -> torch.Tensor:
    """``model.per_pixel_scores(outputs)`` resized (bilinear) to ``size`` and normalised over the classes: a
    distribution per pixel for every family (a Mask2Former's semantic scores sum over queries and need not sum to
    1). What an old model's outputs mean as soft targets or pseudo labels (FMWISS, ``OldModelSource``)."""
    s = torch.nn.functional.interpolate(model.per_pixel_scores(outputs), size=size, mode="bilinear",
                                        align_corners=False)
    return s / s.sum(1, keepdim=True).clamp_min(1e-6)
