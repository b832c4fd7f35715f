"""Extensible classifier shared by the mask-classification and per-pixel model families."""
import math
from typing import List

import torch
from torch import nn
from torch.nn import functional as F


class IncrementalClassifier(nn.Module):
    """Linear classifier made of one group of outputs per incremental step.

    The logits are the concatenation ``[group_0(x), group_1(x), ..., group_T(x)]`` (+ ``[no_object(x)]`` when
    ``no_object=True``, always the last logit). :meth:`expand` appends a new group, so the logits of the old
    classes stay exactly what they were. Works on any layout through ``dim``: ``dim=-1`` for query
    embeddings ``(N, Q, C)``, ``dim=1`` for feature maps ``(N, C, H, W)`` (a 1x1 convolution).
    """

    def __init__(self, in_dim: int, classes_per_step: List[int], *, no_object: bool = False):
        """
        Args:
            in_dim: input feature width.
            classes_per_step: number of classes learned at each step (e.g. ``[16, 1, 1]``).
            no_object: append one extra "no object" logit after all class logits (Mask2Former).
        """
        super().__init__()
        assert len(classes_per_step) > 0 and all(int(c) > 0 for c in classes_per_step), classes_per_step
        self.in_dim = in_dim
        self.classes_per_step = [int(c) for c in classes_per_step]
        self.cls = nn.ModuleList([nn.Linear(in_dim, c) for c in self.classes_per_step])
        self.no_object = nn.Linear(in_dim, 1) if no_object else None

    @property
    def num_classes(self) -> int:
        """Number of real classes (without the no-object logit)."""
        return sum(self.classes_per_step)

    @property
    def num_outputs(self) -> int:
        return self.num_classes + (1 if self.no_object is not None else 0)

    def logit_layer(self, index: int):
        """``(layer, row)``: the linear layer and its output row that produce logit ``index`` (negative indices
        count from the end, as in the logits), so a method can re-initialise one class without knowing the
        layout (e.g. MiB's background initialisation)."""
        index = index % self.num_outputs
        if index == self.num_classes:
            return self.no_object, 0
        for layer in self.cls:
            if index < layer.out_features:
                return layer, index
            index -= layer.out_features
        raise AssertionError("unreachable")

    def expand(self, num_new: int) -> nn.Linear:
        """Appends a group of ``num_new`` classes; returns the new layer (strategies may re-initialise it)."""
        ref = self.cls[0].weight
        layer = nn.Linear(self.in_dim, int(num_new)).to(device=ref.device, dtype=ref.dtype)
        self.cls.append(layer)
        self.classes_per_step.append(int(num_new))
        return layer

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        x = x.movedim(dim, -1)
        heads = list(self.cls) + ([self.no_object] if self.no_object is not None else [])
        out = torch.cat([h(x) for h in heads], dim=-1)
        return out.movedim(-1, dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Grow to the number of groups stored in the checkpoint (e.g. resuming a later incremental step).
        i = len(self.cls)
        while prefix + f"cls.{i}.weight" in state_dict:
            self.expand(state_dict[prefix + f"cls.{i}.weight"].shape[0])
            i += 1
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class TextClassifier(nn.Module):
    """Open-vocabulary classifier: cosine similarity between projected query features and fixed text embeddings
    of the class names, scaled by a learned temperature (ZegFormer, PADing Sec. 3.1):

        logit_k(x) = exp(s) * <W x / |W x|, t_k>,   k = 1..K,    logit_{K+1}(x) = exp(s) * <W x / |W x|, t_void>

    ``t_k`` (``text_embeddings``, L2-normalised, e.g. CLIP's of the class names) is a persistent buffer filled by the
    method that owns the class names (a checkpoint then carries them: evaluation needs no CLIP); ``t_void`` (the
    "no object" embedding) and ``s`` (log inverse temperature, CLIP's parametrisation) are learned. Why cosine with
    text: a class without any training example (zero-shot) still gets a classifier, its name's embedding.
    The same interface as :class:`IncrementalClassifier` (``num_classes``, ``num_outputs``, ``forward(x, dim)``)."""

    def __init__(self, in_dim: int, num_classes: int, embed_dim: int, *, temperature: float = 0.07,
                 learn_temperature: bool = True):
        """
        Args:
            in_dim: query feature width. num_classes: K. embed_dim: width of the text embeddings.
            temperature: initial softmax temperature (CLIP's 0.07). learn_temperature: learn it.
        """
        super().__init__()
        self.in_dim = in_dim
        self.classes_per_step = [int(num_classes)]
        self.proj = nn.Linear(in_dim, embed_dim)
        self.register_buffer("text_embeddings", torch.zeros(num_classes, embed_dim))
        self.no_object_embedding = nn.Parameter(torch.randn(embed_dim) / embed_dim ** 0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    @property
    def num_classes(self) -> int:
        return self.classes_per_step[0]

    @property
    def num_outputs(self) -> int:
        return self.num_classes + 1

    def set_text_embeddings(self, embeddings: torch.Tensor) -> None:
        """Copies (K, D) class-name embeddings in (normalised here)."""
        if tuple(embeddings.shape) != tuple(self.text_embeddings.shape):
            raise ValueError(f"text embeddings of shape {tuple(embeddings.shape)}; this classifier has "
                             f"{tuple(self.text_embeddings.shape)} (classes, MODEL.MASK_FORMER.TEXT_CLASSIFIER.EMBED_DIM)")
        with torch.no_grad():
            self.text_embeddings.copy_(F.normalize(embeddings.float(), dim=-1))

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        x = F.normalize(self.proj(x.movedim(dim, -1)), dim=-1)
        weights = torch.cat([self.text_embeddings, F.normalize(self.no_object_embedding, dim=0)[None]])
        out = self.logit_scale.exp() * x @ weights.t()
        return out.movedim(-1, dim)
