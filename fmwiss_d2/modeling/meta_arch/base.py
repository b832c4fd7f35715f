"""What every meta-architecture of this project shares: input normalisation and padding."""
from typing import Dict, List, Sequence

import torch
from torch import nn

from detectron2.structures import ImageList


class SegmentorBase(nn.Module):
    """Holds the backbone, ``pixel_mean``/``pixel_std`` buffers and ``size_divisibility`` (the given one, or the
    backbone's when it is <= 0); turns detectron2's batched inputs into a normalised, padded
    :class:`ImageList` (:meth:`preprocess_images`); ``forward`` chains the stages a subclass defines
    (``forward_outputs``, ``prepare_targets``, ``losses``, ``inference``), which methods reuse one by one."""

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

    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted losses. Inference: one result dict per image."""
        images = self.preprocess_images(batched_inputs)
        outputs = self.forward_outputs(images.tensor)
        if self.training:
            return self.losses(outputs, self.prepare_targets(batched_inputs, images))
        return self.inference(outputs, batched_inputs, images)
