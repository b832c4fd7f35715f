"""Backbones: detectron2's ResNet (and its DeepLab variant) are used as they are; this adds a tiny CPU one."""
import detectron2.projects.deeplab.resnet  # noqa: F401  (registers "build_resnet_deeplab_backbone")

from .tiny import TinyResNet, build_tiny_backbone

__all__ = ["TinyResNet", "build_tiny_backbone"]
