"""The pseudo-label interface (see the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn

from detectron2.utils.registry import Registry

PSEUDO_LABEL_SOURCE_REGISTRY = Registry("PSEUDO_LABEL_SOURCE")
PSEUDO_LABEL_SOURCE_REGISTRY.__doc__ = "Pseudo-label sources, built as cls(cfg); called as (images, image_labels, context)."


@dataclass
class PseudoLabels:
    """Per-class soft maps of a batch, over the step's model classes.

    Convention:
    * ``scores`` (N, K, H, W) in [0, 1]: the source's belief that a pixel shows class k (channel = model class
      id, background at its id when the task has one). A class the source says nothing about (not in the
      image's labels, or not known to the source) has score 0.
    * ``valid`` (N, H, W) bool: False where the source is uncertain; such pixels carry no pseudo label
      (:meth:`hard` gives them ``ignore_label``, and consumers leave them out of their losses).
    """

    scores: torch.Tensor
    valid: torch.Tensor

    def __post_init__(self):
        if self.scores.dim() != 4 or self.valid.shape != (self.scores.shape[0], *self.scores.shape[2:]):
            raise ValueError(f"PseudoLabels: scores must be (N, K, H, W) and valid (N, H, W); got "
                             f"{tuple(self.scores.shape)} and {tuple(self.valid.shape)}")

    def hard(self, ignore_label: int = 255) -> torch.Tensor:
        """(N, H, W) int64: the most likely class where valid, ``ignore_label`` elsewhere."""
        labels = self.scores.argmax(1)
        return torch.where(self.valid, labels, torch.full_like(labels, ignore_label))


@dataclass
class PseudoLabelContext:
    """What a source may use besides the images and their labels.

    ``class_names``: the step's classes in model order (K names). ``background``: the background's model id,
    None for a task without one. ``old_model``: the previous step's frozen model. ``old_outputs``: its
    ``forward_outputs`` on this batch, when the caller already has them (saves a second forward).
    """

    class_names: Sequence[str]
    background: Optional[int] = 0
    old_model: Optional[nn.Module] = None
    old_outputs: Optional[dict] = field(default=None, repr=False)


class PseudoLabelSource(nn.Module):
    """Base class: ``forward(images, image_labels, context) -> PseudoLabels``.

    ``images``: (N, 3, H, W) float RGB in [0, 255], not normalised (each source normalises for its own model).
    ``image_labels``: one int64 tensor of model class ids per image (background excluded).
    """

    def cache_key(self) -> dict:
        """What determines this source's output besides the images and labels (enters the cache key)."""
        return {"source": type(self).__name__}

    def prepare(self, records: Sequence[dict], context: PseudoLabelContext) -> None:
        """Called once before a dataset's pseudo labels are computed (e.g. to train a localizer on the records'
        image-level labels), before a :class:`PseudoLabelCache` is keyed by :meth:`cache_key`, which must then
        reflect what it learned. Default: nothing."""

    def forward(self, images: torch.Tensor, image_labels: List[torch.Tensor], context: PseudoLabelContext
                ) -> PseudoLabels:
        raise NotImplementedError


def build_pseudo_label_source(cfg, name: str, config_key: str = "the pseudo-label source") -> PseudoLabelSource:
    from ..utils.errors import registry_get

    return registry_get(PSEUDO_LABEL_SOURCE_REGISTRY, name, config_key)(cfg)
