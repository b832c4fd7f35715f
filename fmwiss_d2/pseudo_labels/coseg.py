"""FMWISS's pre-training based co-segmentation (Yu et al., CVPR 2023, arXiv 2302.14250, Sec. 3.2) as a source.

Two foundation models see each image; only its image-level labels say which classes to look for:

* **class-aware** (CLIP): for every labelled class a dense map ``P_c`` in [0, 1], the softmax of the MaskCLIP
  cosines over the image's labelled classes and the background prompts -- exactly :class:`CLIPSource`'s maps,
  which this source calls;
* **class-agnostic** (DINO): the last block's CLS attention, averaged over heads and scaled to max 1, is an
  objectness map ``O``; its patch descriptors ``f`` (keys, as LOST and TokenCut use them) say which patches
  belong together;
* **class-specific seed guidance**: per class, the ``NUM_SEEDS`` patches where ``P_c`` is highest are seeds;
  a random walk over the DINO affinity ``W_ij = max(cos(f_i, f_j), 0) ** AFFINITY_POWER`` (row-normalised,
  ``PROPAGATION_STEPS`` steps) started uniformly on them spreads them over the object they lie in, ``G_c``
  (scaled to max 1). A seed on the right object yields that object's mask even where CLIP's map bleeds onto
  a neighbour;
* **fusion** (:func:`fuse_class_maps`): ``M_c = ((1 - s) P_c + s G_c) * ((1 - a) + a O)``, scaled to max 1
  per class (``NORMALIZE``), background ``1 - max_c M_c``;
* optionally **object filling** (:func:`fill_objects`, ``OBJECT_FILL`` > 0): the regions where ``O`` reaches
  ``OBJECT_THRESHOLD`` are DINO's objects; each class's map is blended with its mean over the object a pixel
  lies in, so a class found on part of an object spreads over the whole of it and nothing outside the objects.

The choices the paper leaves open (which DINO descriptors, how seeds spread, how the maps are fused) and the
measured effect of each part are in ``docs/fmwiss.md``.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..utils.errors import UserError
from .base import PSEUDO_LABEL_SOURCE_REGISTRY, PseudoLabelContext, PseudoLabels, PseudoLabelSource
from .sources import CLIPSource, scale_to_max_one, scores_from_class_maps

__all__ = ["CoSegmentation", "dino_objectness", "patch_affinity", "seed_guidance", "fuse_class_maps",
           "fill_objects"]

FEATURE_KINDS = ("keys", "features")


def dino_objectness(attentions: torch.Tensor) -> torch.Tensor:
    """(N, heads, h, w) CLS attention -> (N, h, w) objectness: the head mean divided by its per-image max."""
    a = attentions.float().mean(1)
    return scale_to_max_one(a)


def patch_affinity(features: torch.Tensor, power: float) -> torch.Tensor:
    """(C, h, w) patch descriptors -> (h*w, h*w) affinity ``max(cos(f_i, f_j), 0) ** power``.

    Negative cosines are cut to 0 so that unrelated patches pass nothing on; the power sharpens the affinity
    towards the most similar patches."""
    f = F.normalize(features.float().flatten(1).t(), dim=1)
    return (f @ f.t()).clamp_min(0).pow(power)


def seed_guidance(class_map: torch.Tensor, affinity: torch.Tensor, num_seeds: int, steps: int = 1) -> torch.Tensor:
    """One class's seed-guided map on the patch grid, in [0, 1].

    ``class_map`` (h, w): the class's CLIP map on the grid; its ``num_seeds`` highest patches are the seeds.
    ``affinity`` (h*w, h*w): :func:`patch_affinity`. A walk starts uniformly on the seeds, ``g0 = 1_S / |S|``,
    and moves ``steps`` times along the row-normalised affinity ``T = D^-1 W`` (``g <- g T``); the result is
    divided by its max. With ``steps = 0`` the map is the seed indicator itself.
    """
    h, w = class_map.shape
    k = max(1, min(int(num_seeds), h * w))
    seeds = class_map.flatten().topk(k).indices
    g = torch.zeros(h * w, dtype=affinity.dtype, device=affinity.device)
    g[seeds] = 1.0 / k
    if steps > 0:
        t = affinity / affinity.sum(1, keepdim=True).clamp_min(1e-12)
        for _ in range(int(steps)):
            g = g @ t
    return (g / g.max().clamp_min(1e-12)).view(h, w)


def fuse_class_maps(clip_maps: torch.Tensor, guidance: Optional[torch.Tensor], objectness: Optional[torch.Tensor],
                    *, seed_weight: float, attention_weight: float, normalize: bool) -> torch.Tensor:
    """(C, H, W) class maps in [0, 1] of one image's labelled classes.

    ``M_c = ((1 - s) P_c + s G_c) * ((1 - a) + a O)`` with ``P`` = ``clip_maps``, ``G`` = ``guidance`` (term
    left out when None), ``O`` = ``objectness`` (H, W) (gate left out when None), ``s`` = ``seed_weight``,
    ``a`` = ``attention_weight``; with ``normalize`` each ``M_c`` is then divided by its max (the image label
    says the class is in the image, so its most likely pixel is taken as certain).
    """
    m = clip_maps.float()
    if guidance is not None:
        m = (1 - seed_weight) * m + seed_weight * guidance.float()
    if objectness is not None:
        m = m * ((1 - attention_weight) + attention_weight * objectness.float())[None]
    if normalize:
        m = scale_to_max_one(m)
    return m.clamp(0, 1)


def fill_objects(maps: torch.Tensor, objectness: torch.Tensor, *, threshold: float, weight: float) -> torch.Tensor:
    """(C, H, W) class maps -> ``(1 - weight) M_c + weight F_c``, where ``F_c`` is ``M_c``'s mean over the object
    a pixel lies in and 0 outside every object.

    Objects are the 8-connected regions of ``objectness >= threshold`` (H, W). Why: CLIP's maps light up only
    the most telling part of an object, and the seeds' walk stops at texture changes, while DINO's objectness
    outlines whole objects; averaging inside an object lets the object's majority class take all of it.
    """
    from scipy import ndimage

    if weight <= 0:
        return maps
    regions, count = ndimage.label((objectness >= threshold).cpu().numpy(), structure=[[1, 1, 1]] * 3)
    regions = torch.from_numpy(regions).to(maps.device).flatten().long()
    m = maps.float().flatten(1)
    size = torch.bincount(regions, minlength=count + 1).clamp_min(1).to(m)
    means = torch.zeros(m.shape[0], count + 1, dtype=m.dtype, device=m.device).index_add_(1, regions, m) / size
    means[:, 0] = 0  # outside every object
    filled = means[:, regions].view_as(maps)
    return ((1 - weight) * maps.float() + weight * filled).to(maps.dtype)


@PSEUDO_LABEL_SOURCE_REGISTRY.register()
class CoSegmentation(PseudoLabelSource):
    """FMWISS's co-segmentation of CLIP and DINO (module docstring); ``PSEUDO_LABELS.COSEG.*``."""

    @configurable
    def __init__(self, *, clip_source: CLIPSource, dino: Union[nn.Module, Callable[[], nn.Module], None] = None,
                 dino_key: Optional[dict] = None, use_dino: bool = True, use_seeds: bool = True, num_seeds: int = 4,
                 affinity_power: float = 4.0, propagation_steps: int = 1, features: str = "keys",
                 seed_weight: float = 0.5, attention_weight: float = 1.0, normalize: bool = True,
                 object_fill: float = 0.0, object_threshold: float = 0.3, threshold: float = 0.0):
        """
        Args:
            clip_source: the class-aware maps (its temperature and background prompts apply).
            dino: a :class:`DINOWrapper`, or a function building one on first use (None only with ``use_dino``
                False); kept outside the state dict, frozen.
            dino_key: what identifies the DINO (architecture, checkpoint) in the cache key.
            others: ``PSEUDO_LABELS.COSEG.*`` (see fmwiss_d2/config.py).
        """
        super().__init__()
        if use_seeds and not use_dino:
            raise UserError("PSEUDO_LABELS.COSEG.USE_SEEDS spreads seeds over DINO features: set "
                            "PSEUDO_LABELS.COSEG.USE_DINO True, or USE_SEEDS False")
        if use_dino and dino is None:
            raise UserError("the CoSegmentation source needs a DINO model (MODEL.DINO.*) when "
                            "PSEUDO_LABELS.COSEG.USE_DINO is True")
        if features not in FEATURE_KINDS:
            raise UserError(f"PSEUDO_LABELS.COSEG.FEATURES must be one of {FEATURE_KINDS}, not {features!r}")
        if num_seeds < 1:
            raise UserError(f"PSEUDO_LABELS.COSEG.NUM_SEEDS must be >= 1, not {num_seeds}")
        self.clip_source = clip_source
        self._dino = [dino] if dino is not None else []  # frozen, outside the state dict
        self.dino_key = dict(dino_key or {})
        self.use_dino, self.use_seeds = bool(use_dino), bool(use_seeds)
        self.num_seeds, self.affinity_power = int(num_seeds), float(affinity_power)
        self.propagation_steps, self.features = int(propagation_steps), features
        self.seed_weight, self.attention_weight = float(seed_weight), float(attention_weight)
        self.normalize, self.threshold = bool(normalize), float(threshold)
        if object_fill > 0 and not use_dino:
            raise UserError("PSEUDO_LABELS.COSEG.OBJECT_FILL fills DINO's objects: set PSEUDO_LABELS.COSEG.USE_DINO "
                            "True, or OBJECT_FILL 0.0")
        if not 0.0 <= object_fill <= 1.0:
            raise UserError(f"PSEUDO_LABELS.COSEG.OBJECT_FILL must be in [0, 1], not {object_fill}")
        if not 0.0 < object_threshold <= 1.0:
            raise UserError(f"PSEUDO_LABELS.COSEG.OBJECT_THRESHOLD must be in (0, 1] (objectness peaks at 1 per "
                            f"image), not {object_threshold}")
        self.object_fill, self.object_threshold = float(object_fill), float(object_threshold)

    @classmethod
    def from_config(cls, cfg):
        from ..modeling.foundation.dino import build_dino_from_cfg

        c = cfg.PSEUDO_LABELS.COSEG
        d = cfg.MODEL.DINO
        return {
            "clip_source": CLIPSource(cfg),
            "dino": lambda: build_dino_from_cfg(cfg),
            "dino_key": {"arch": d.ARCH, "checkpoint": d.CHECKPOINT, "patch_size": d.PATCH_SIZE,
                         "checkpoint_key": d.CHECKPOINT_KEY},
            "use_dino": c.USE_DINO, "use_seeds": c.USE_SEEDS, "num_seeds": c.NUM_SEEDS,
            "affinity_power": c.AFFINITY_POWER, "propagation_steps": c.PROPAGATION_STEPS, "features": c.FEATURES,
            "seed_weight": c.SEED_WEIGHT, "attention_weight": c.ATTENTION_WEIGHT, "normalize": c.NORMALIZE,
            "object_fill": c.OBJECT_FILL, "object_threshold": c.OBJECT_THRESHOLD, "threshold": c.THRESHOLD,
        }

    @property
    def dino(self) -> nn.Module:
        if not isinstance(self._dino[0], nn.Module):
            self._dino[0] = self._dino[0]()
        return self._dino[0].eval().requires_grad_(False)

    def cache_key(self) -> dict:
        key = {"source": "coseg", "clip": self.clip_source.cache_key(), "use_dino": self.use_dino,
               "normalize": self.normalize, "threshold": self.threshold}
        if self.use_dino:
            key.update(dino=self.dino_key, attention_weight=self.attention_weight)
        if self.object_fill > 0:
            key.update(object_fill=self.object_fill, object_threshold=self.object_threshold)
        if self.use_seeds:
            key.update(num_seeds=self.num_seeds, affinity_power=self.affinity_power, features=self.features,
                       propagation_steps=self.propagation_steps, seed_weight=self.seed_weight)
        return key

    @torch.no_grad()
    def forward(self, images, image_labels, context: PseudoLabelContext) -> PseudoLabels:
        n, _, h, w = images.shape
        clip_scores = self.clip_source(images, image_labels, context).scores
        objectness = descriptors = None
        if self.use_dino:
            out = self.dino(images.to(self.dino.pixel_mean.device))
            objectness = F.interpolate(dino_objectness(out["attentions"])[:, None], size=(h, w), mode="bilinear",
                                       align_corners=False)[:, 0].to(clip_scores)
            descriptors = out[self.features]
        maps = []
        for b, labels in enumerate(image_labels):
            ids = [int(i) for i in labels]
            p = clip_scores[b, ids]
            guidance = None
            if self.use_seeds and ids:
                grid = descriptors.shape[-2:]
                affinity = patch_affinity(descriptors[b], self.affinity_power)
                coarse = F.adaptive_avg_pool2d(p[None], grid)[0]
                g = torch.stack([seed_guidance(coarse[c], affinity, self.num_seeds, self.propagation_steps)
                                 for c in range(len(ids))])
                guidance = F.interpolate(g[None], size=(h, w), mode="bilinear", align_corners=False)[0].to(p)
            m = fuse_class_maps(p, guidance, None if objectness is None else objectness[b],
                                seed_weight=self.seed_weight, attention_weight=self.attention_weight,
                                normalize=self.normalize)
            if self.object_fill > 0:
                m = fill_objects(m, objectness[b], threshold=self.object_threshold, weight=self.object_fill)
                if self.normalize:
                    m = scale_to_max_one(m)
            maps.append(m)
        scores = scores_from_class_maps(maps, image_labels, len(context.class_names), context.background)
        return PseudoLabels(scores, scores.max(1).values >= self.threshold)
