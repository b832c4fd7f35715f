"""Pseudo-label sources: images + image-level labels (+ context) -> per-class soft maps, behind one interface.

A source is registered in ``PSEUDO_LABEL_SOURCE_REGISTRY`` and built as ``cls(cfg)``; it is called as
``source(images, image_labels, context)`` and returns :class:`PseudoLabels`. Offline sources (CLIP, the
foundation-model co-segmentation) are computed once per dataset and cached (:mod:`.cache`); online ones (the
previous step's model) run inside the training step.
"""
from .base import (  # noqa: F401
    PSEUDO_LABEL_SOURCE_REGISTRY, PseudoLabelContext, PseudoLabels, PseudoLabelSource, build_pseudo_label_source,
)
from . import sources  # noqa: F401  (registers "OldModelSource", "CLIPSource")
from . import coseg, localizer  # noqa: F401  (register "CoSegmentation", "Localizer")
from . import dupl  # noqa: F401  (registers "DuPL")
from .cache import PseudoLabelCache  # noqa: F401
