"""Meta-architectures, one file each (registered in detectron2's META_ARCH_REGISTRY)."""
from .deeplab import DeepLabV3
from .mask_former import MaskFormer

__all__ = ["MaskFormer", "DeepLabV3"]
