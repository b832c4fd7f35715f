"""Models. Importing registers backbones, pixel decoders, transformer decoders, matchers, criteria and
meta-architectures; the deformable-attention op (``ops``) is only imported when a pixel decoder is built."""
from . import backbone, heads, losses, meta_arch, pixel_decoder, transformer_decoder  # noqa: F401
from .criterion import CRITERION_REGISTRY, SetCriterion, build_criterion  # noqa: F401
from .heads import IncrementalClassifier  # noqa: F401
from .matcher import MATCHER_REGISTRY, HungarianMatcher, build_matcher  # noqa: F401
from .pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder  # noqa: F401
from .transformer_decoder import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder  # noqa: F401
