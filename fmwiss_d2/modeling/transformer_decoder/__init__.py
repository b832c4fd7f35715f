"""Transformer decoders: learned queries attending to the pixel decoder's multi-scale features.
Selected by ``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
from detectron2.utils.registry import Registry

from ...utils.errors import registry_get

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders. Called with ``(cfg, in_channels)``;
``forward(multi_scale_features, mask_features) -> dict(pred_logits, pred_masks, aux_outputs, pred_embeddings)``.
"""


def build_transformer_decoder(cfg, in_channels: int):
    """Builds the decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    return registry_get(TRANSFORMER_DECODER_REGISTRY, cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME,
                        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME")(cfg, in_channels)


from .masked_attention_decoder import MultiScaleMaskedTransformerDecoder  # noqa: E402

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder", "MultiScaleMaskedTransformerDecoder"]
