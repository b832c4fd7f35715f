"""Pixel decoders: turn backbone features into per-pixel mask features + multi-scale features for the
transformer decoder. Selected by ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
from detectron2.utils.registry import Registry

from ...utils.errors import registry_get

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders. Called with ``(cfg, input_shape)`` where input_shape maps backbone feature names to ShapeSpec.
``forward(features) -> (mask_features, multi_scale_features)`` with multi-scale features ordered coarse to fine.
"""


def build_pixel_decoder(cfg, input_shape):
    """Builds the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    return registry_get(PIXEL_DECODER_REGISTRY, cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME,
                        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME")(cfg, input_shape)


from .msdeform_pixel_decoder import MSDeformAttnPixelDecoder  # noqa: E402

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder", "MSDeformAttnPixelDecoder"]
