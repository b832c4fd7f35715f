"""Foundation models: CLIP (open_clip) and DINO (timm ViT) wrappers, and tiny ones pretrained on the synthetic world.

Import by full path (this package is not imported by ``fmwiss_d2.modeling``)::

    from fmwiss_d2.modeling.foundation import build_clip, build_dino, ensure_tiny_clip, ensure_tiny_dino

Public checkpoints load through the same code as the tiny ones: ``build_clip("ViT-B-16", "/path/to/
open_clip_pytorch_model.bin")``, ``build_dino("vit_base", "/path/to/dino_vitbase8_pretrain.pth", patch_size=8)``.
"""
from .checkpoint import CheckpointMismatchError  # noqa: F401
from .clip import CLIPWrapper, build_clip, build_clip_from_cfg  # noqa: F401
from .dino import DINOWrapper, build_dino, build_dino_from_cfg  # noqa: F401
from .pretrain_clip import CLIPPretrainConfig, ensure_tiny_clip  # noqa: F401
from .pretrain_dino import DINOPretrainConfig, ensure_tiny_dino  # noqa: F401
