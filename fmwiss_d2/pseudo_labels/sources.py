"""Built-in pseudo-label sources: the previous step's model and CLIP's dense (MaskCLIP) maps."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch.nn import functional as F

from ..modeling.meta_arch.base import class_probabilities
from .base import PSEUDO_LABEL_SOURCE_REGISTRY, PseudoLabelContext, PseudoLabels, PseudoLabelSource


def labelled_classes(image_labels: List[torch.Tensor], num_classes: int, background=None, device=None) -> torch.Tensor:
    """(N, K) bool: the classes each image is labelled with, plus the background (when not None). The one place
    where per-image label lists become a class mask (sources restrict their maps with it; image classifiers
    take it, as floats, for their multi-label targets)."""
    allowed = torch.zeros(len(image_labels), num_classes, dtype=torch.bool, device=device)
    for b, labels in enumerate(image_labels):
        allowed[b, labels.to(device).long()] = True
    if background is not None:
        allowed[:, background] = True
    return allowed


def scale_to_max_one(maps: torch.Tensor) -> torch.Tensor:
    """(C, H, W) maps, each divided by its own max (an all-zero map stays zero): the pseudo-label sources read a
    labelled class's best pixel as certain, so every class map is put on the same [0, 1] scale this way."""
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def scores_from_class_maps(maps: Sequence[torch.Tensor], image_labels: List[torch.Tensor], num_classes: int,
                           background) -> torch.Tensor:
    """(N, K, H, W) scores from each image's (C_b, H, W) maps of its labelled classes (in label order).

    Class ``image_labels[b][i]`` gets ``maps[b][i]``; the background (when the task has one) gets
    ``1 - max_i maps[b][i]`` (1 on an image without labels); every other class 0."""
    n, (h, w) = len(maps), maps[0].shape[-2:]
    scores = torch.zeros(n, num_classes, h, w, device=maps[0].device)
    for b, (m, labels) in enumerate(zip(maps, image_labels)):
        ids = [int(i) for i in labels]
        if ids:
            scores[b, ids] = m.to(scores)
        if background is not None:
            scores[b, background] = 1 - m.amax(0).to(scores) if ids else 1.0
    return scores


@PSEUDO_LABEL_SOURCE_REGISTRY.register()
class OldModelSource(PseudoLabelSource):
    """The previous step's model: its per-pixel class probabilities (``per_pixel_scores``), resized bilinearly
    to the images and normalised over its classes; valid where the top score reaches ``threshold``.

    It knows only the old classes (channels past them are 0) and ignores ``image_labels``: at step t the old
    classes have no labels at all. Used by MiB's mask-based pseudo labels (CoMFormer) and FMWISS.
    """

    def __init__(self, cfg=None, *, threshold: float | None = None):
        super().__init__()
        self.threshold = float(threshold if threshold is not None else cfg.PSEUDO_LABELS.OLD_MODEL.THRESHOLD)

    def cache_key(self) -> dict:
        return {"source": "old_model", "threshold": self.threshold}

    @torch.no_grad()
    def forward(self, images, image_labels, context: PseudoLabelContext) -> PseudoLabels:
        old = context.old_model
        if old is None:
            raise ValueError("the OldModelSource pseudo-label source needs the previous step's model (context.old_model)")
        outputs = context.old_outputs
        if outputs is None:
            outputs = old.forward_outputs((images.to(old.device) - old.pixel_mean) / old.pixel_std)
        s = class_probabilities(old, outputs, images.shape[-2:])
        k = len(context.class_names)
        if s.shape[1] < k:
            s = F.pad(s, (0, 0, 0, 0, 0, k - s.shape[1]))
        return PseudoLabels(s, s.max(1).values >= self.threshold)


@PSEUDO_LABEL_SOURCE_REGISTRY.register()
class CLIPSource(PseudoLabelSource):
    """CLIP's dense maps (MaskCLIP, :meth:`CLIPWrapper.dense_logits`), restricted to each image's labels.

    For image b with labelled classes L_b the prompts are L_b's names plus the background prompts
    (``MODEL.CLIP.BACKGROUND_NAMES``): ``p = softmax(cos / T)`` over them at every pixel; class l in L_b gets
    ``p_l``, the background class (if the task has one) the summed background prompts; classes outside L_b get
    0. A pixel is valid when its top score reaches ``threshold``.
    """

    def __init__(self, cfg=None, *, clip=None, background_names: Sequence[str] | None = None,
                 temperature: float | None = None, threshold: float | None = None):
        super().__init__()
        c = cfg.PSEUDO_LABELS.CLIP if cfg is not None else None
        self.temperature = float(temperature if temperature is not None else c.TEMPERATURE)
        self.threshold = float(threshold if threshold is not None else c.THRESHOLD)
        self.background_names = tuple(background_names if background_names is not None
                                      else cfg.MODEL.CLIP.BACKGROUND_NAMES)
        self._cfg = cfg
        self._clip = [clip] if clip is not None else []  # frozen, outside the state dict

    @property
    def clip(self):
        if not self._clip:
            from ..modeling.foundation.clip import build_clip_from_cfg

            self._clip.append(build_clip_from_cfg(self._cfg).eval().requires_grad_(False))
        return self._clip[0]

    def cache_key(self) -> dict:
        key = {"source": "clip", "temperature": self.temperature, "threshold": self.threshold,
               "background_names": list(self.background_names)}
        if self._cfg is not None:
            key.update(model=self._cfg.MODEL.CLIP.MODEL_NAME, checkpoint=self._cfg.MODEL.CLIP.CHECKPOINT,
                       templates=list(self._cfg.MODEL.CLIP.PROMPT_TEMPLATES))
        return key

    @torch.no_grad()
    def forward(self, images, image_labels, context: PseudoLabelContext) -> PseudoLabels:
        clip = self.clip
        n, _, h, w = images.shape
        k = len(context.class_names)
        emb = clip.dense_embeddings(images.to(clip.pixel_mean.device))
        scores = torch.zeros(n, k, h, w, device=emb.device)
        for b, labels in enumerate(image_labels):
            ids = [int(i) for i in labels]
            names = [context.class_names[i] for i in ids] + list(self.background_names)
            text = clip.text_embeddings(names).to(emb)
            cos = torch.einsum("dhw,kd->khw", emb[b], text)[None]
            p = F.interpolate(cos, size=(h, w), mode="bilinear", align_corners=False)[0].div(self.temperature).softmax(0)
            if ids:
                scores[b, ids] = p[: len(ids)]
            if context.background is not None:
                scores[b, context.background] = p[len(ids):].sum(0)
        return PseudoLabels(scores, scores.max(1).values >= self.threshold)
