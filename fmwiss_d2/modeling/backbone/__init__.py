"""Backbones: detectron2's ResNet (and its DeepLab variant) are used as they are; this adds a tiny CPU one and a
trainable ViT (timm, DINO's format)."""
import detectron2.projects.deeplab.resnet  # noqa: F401  (registers "build_resnet_deeplab_backbone")

from .tiny import TinyResNet, build_tiny_backbone
from .vit import ViTBackbone, build_vit_backbone

__all__ = ["TinyResNet", "build_tiny_backbone", "ViTBackbone", "build_vit_backbone"]
