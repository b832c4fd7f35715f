"""A ViT (timm, DINO's checkpoint format) as a detectron2 backbone: its final patch tokens as one feature map.

For per-pixel models over a ViT, e.g. DuPL's students (the paper uses a ViT-B/16; on the synthetic world the
tiny DINO of ``MODEL.DINO`` is the analogue). The architecture and weights come from ``MODEL.DINO.{ARCH,
PATCH_SIZE, CHECKPOINT, CHECKPOINT_KEY}`` (a local DINO- or DeiT-format file; ``"auto:shapes"`` pretrains the
tiny one); unlike the frozen DINO of pseudo-label sources, this one is trained.
"""
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["ViTBackbone", "build_vit_backbone"]


class ViTBackbone(Backbone):
    """``forward(x)`` -> ``{"vit": (N, C, H/p, W/p)}`` for an input already normalised by the model (set
    ``MODEL.PIXEL_MEAN/STD`` to the ViT's statistics, ImageNet's x 255 for DINO and DeiT)."""

    def __init__(self, dino: nn.Module):
        super().__init__()
        self.dino = dino.train()
        self.dino.vit.requires_grad_(True)
        self._channels = dino.vit.embed_dim
        self._stride = int(dino.patch_size[0])

    def forward(self, x):
        return {"vit": self.dino.patch_features(x)}

    @property
    def size_divisibility(self) -> int:
        return self._stride

    def output_shape(self):
        return {"vit": ShapeSpec(channels=self._channels, stride=self._stride)}


@BACKBONE_REGISTRY.register()
def build_vit_backbone(cfg, input_shape: ShapeSpec) -> ViTBackbone:
    """``MODEL.BACKBONE.NAME: build_vit_backbone``; the feature is named ``"vit"`` (``MODEL.DEEPLAB.IN_FEATURE``)."""
    from ..foundation.dino import build_dino_from_cfg

    return ViTBackbone(build_dino_from_cfg(cfg, device="cpu"))
