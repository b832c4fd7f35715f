"""The example of "Write your own method" (docs/methods.md): a method that owns a trainable head and a frozen module.

It adds an image-level classification loss to the model's own losses: the backbone's last feature map goes
through a frozen random 1x1 projection (standing in for a frozen foundation model), is average-pooled, and a
trainable linear head predicts which classes the image shows (multi-label BCE against ``image_labels``). With
pixel labels it also trains the model's own losses; with image-level labels only (``INPUT.SUPERVISION image``)
the classification loss is all it has.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from fmwiss_d2.methods import METHOD_REGISTRY, Method


@METHOD_REGISTRY.register()
class ImageLabelHeadExample(Method):
    @configurable
    def __init__(self, model, *, num_classes: int, head_lr_multiplier: float, **kwargs):
        super().__init__(model, **kwargs)
        shapes = model.backbone.output_shape()
        self.feature = max(shapes, key=lambda name: shapes[name].stride)  # the coarsest feature map
        channels = shapes[self.feature].channels
        self.head = nn.Linear(channels, num_classes)  # trainable: optimized, saved, restored on --resume
        self.head.lr_multiplier = head_lr_multiplier  # its own learning rate (x BASE_LR)
        self.channels = channels

    @classmethod
    def from_config(cls, cfg, model, *, task=None, step=0):
        return {**super().from_config(cfg, model, task=task, step=step), "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "head_lr_multiplier": 10.0}

    def prepare_training(self, cfg):
        generator = torch.Generator().manual_seed(0)
        projection = nn.Conv2d(self.channels, self.channels, 1)
        with torch.no_grad():
            projection.weight.copy_(torch.randn(projection.weight.shape, generator=generator) * 0.1)
        self.add_frozen("projection", projection.to(self.model.device))  # frozen: never saved or optimized

    def losses(self, batched_inputs):
        losses = self.model(batched_inputs) if "sem_seg" in batched_inputs[0] else {}
        images = self.model.preprocess_images(batched_inputs)
        features = self.frozen("projection")(self.model.features(images.tensor)[self.feature])
        logits = self.head(features.mean((2, 3)))
        targets = torch.zeros_like(logits)
        for b, x in enumerate(batched_inputs):
            targets[b, torch.as_tensor(x["image_labels"], dtype=torch.long)] = 1.0
        losses["loss_image_labels"] = F.binary_cross_entropy_with_logits(logits, targets)
        return losses
