"""FMWISS's plug-in teacher: an ASPP head on the student's backbone features, with a class output and a pixel
embedding output. It learns from the pseudo masks during the weak step (BCE + dense contrastive) and its
outputs, sharper than the pseudo masks after a few hundred iterations, become the student's soft labels."""
from typing import Dict, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ASPP


class PluginTeacher(nn.Module):
    """feature (N, C_in, h, w) -> ASPP (detectron2's, as DeepLabV3 uses) -> ``logits`` (N, K, H, W), upsampled
    to ``out_size``, and ``embeddings`` (N, D, h, w) through a 1x1-ReLU-1x1 projection (the contrastive space
    is kept apart from the class space, as in dense contrastive learning)."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256,
                 dilations: Sequence[int] = (6, 12, 18), embed_dim: int = 128, norm: str = "BN"):
        super().__init__()
        self.aspp = ASPP(in_channels, channels, list(dilations), norm=norm, activation=F.relu, dropout=0.0)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.projection = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(channels, embed_dim, 1))

    def forward(self, feature: torch.Tensor, out_size) -> Dict[str, torch.Tensor]:
        x = self.aspp(feature)
        logits = F.interpolate(self.classifier(x), size=tuple(out_size), mode="bilinear", align_corners=False)
        return {"logits": logits, "embeddings": self.projection(x)}
