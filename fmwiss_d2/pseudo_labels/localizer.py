"""A WILSON-style localizer as a pseudo-label source: class activation maps on the previous step's model.

WILSON (Cermelli et al., CVPR 2022) learns the new classes of a weakly supervised step from a localizer
trained on image-level labels over the old model's features; FMWISS compares against it. Here the localizer
is the simplest such head, a 1x1 convolution giving class activation maps (CAM, Zhou et al., CVPR 2016):

* :meth:`Localizer.prepare` computes the frozen old model's feature map (``PSEUDO_LABELS.LOCALIZER.FEATURE``)
  of every record once, then trains the head for ``ITERATIONS`` steps with :func:`multilabel_bce` on the
  global-average-pooled maps, against the records' image labels (classes never labelled are left out);
* :meth:`Localizer.forward` gives each labelled class its CAM, ``relu``-ed, resized to the image and divided
  by its max, and the background ``1 - max`` (:func:`scores_from_class_maps`).

The learned head enters :meth:`cache_key` (a hash of its weights), so a cache filled by another head is not
reused; training is seeded, so a rerun on the same records learns the same head and finds its cache.
"""
from __future__ import annotations

import hashlib
from typing import List, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from detectron2.config import configurable

from ..utils.errors import UserError
from .base import PSEUDO_LABEL_SOURCE_REGISTRY, PseudoLabelContext, PseudoLabels, PseudoLabelSource
from ..modeling.losses.dupl import multilabel_classification_loss
from .sources import labelled_classes, scale_to_max_one, scores_from_class_maps

__all__ = ["Localizer", "multilabel_bce", "cam_maps"]


def multilabel_bce(pooled_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE on image scores, over the classes in ``mask`` only.

    ``L = -1/(N |M|) sum_n sum_{k in M} [y_nk log s(z_nk) + (1 - y_nk) log(1 - s(z_nk))]`` with ``z``
    = ``pooled_logits`` (N, K), ``y`` = ``targets`` (N, K) in {0, 1}, ``M`` = the classes where ``mask`` (K,)
    is True (classes no image is labelled with carry no evidence either way).
    """
    return multilabel_classification_loss(pooled_logits[:, mask], targets[:, mask].float())


def cam_maps(logit_maps: torch.Tensor, size) -> torch.Tensor:
    """(C, h, w) class logit maps -> (C, H, W) CAMs in [0, 1]: ``relu``, bilinear resize, divided by the max."""
    m = F.interpolate(logit_maps.float().clamp_min(0)[None], size=tuple(size), mode="bilinear",
                      align_corners=False)[0]
    return scale_to_max_one(m)


@PSEUDO_LABEL_SOURCE_REGISTRY.register()
class Localizer(PseudoLabelSource):
    """CAM localizer on the old model's features, trained in :meth:`prepare` (module docstring)."""

    @configurable
    def __init__(self, *, iterations: int = 300, batch_size: int = 16, lr: float = 0.01, feature: str = "res4",
                 seed: int = 0, threshold: float = 0.0, read_image=None):
        super().__init__()
        self.iterations, self.batch_size, self.lr = int(iterations), int(batch_size), float(lr)
        self.feature, self.seed, self.threshold = feature, int(seed), float(threshold)
        self.read_image = read_image
        self.head: nn.Conv2d | None = None

    @classmethod
    def from_config(cls, cfg):
        c = cfg.PSEUDO_LABELS.LOCALIZER
        return {"iterations": c.ITERATIONS, "batch_size": c.BATCH_SIZE, "lr": c.LR, "feature": c.FEATURE,
                "seed": c.SEED, "threshold": c.THRESHOLD}

    def cache_key(self) -> dict:
        if self.head is None:
            raise UserError("the Localizer pseudo-label source is trained by prepare(records, context) before its "
                            "pseudo labels are cached or computed; call prepare first")
        digest = hashlib.sha1()
        for v in self.head.state_dict().values():
            digest.update(v.detach().cpu().numpy().tobytes())
        return {"source": "localizer", "feature": self.feature, "iterations": self.iterations, "lr": self.lr,
                "batch_size": self.batch_size, "seed": self.seed, "threshold": self.threshold,
                "head": digest.hexdigest()[:16]}

    def _features(self, old: nn.Module, images: torch.Tensor) -> torch.Tensor:
        feats = old.features((images.to(old.device) - old.pixel_mean) / old.pixel_std)
        if self.feature not in feats:
            raise UserError(f"PSEUDO_LABELS.LOCALIZER.FEATURE {self.feature!r} is not a feature of the old model; "
                            f"it has {sorted(feats)}")
        return feats[self.feature]

    @staticmethod
    def _old_model(context: PseudoLabelContext) -> nn.Module:
        if context.old_model is None:
            raise UserError("the Localizer pseudo-label source needs the previous step's model (context.old_model): "
                            "use it at an incremental step >= 1 whose previous step has been trained, with "
                            "INCREMENTAL.PREVIOUS_WEIGHTS naming that step's model_final.pth (default: "
                            "OUTPUT_DIR/step<k-1>/model_final.pth)")
        return context.old_model

    def prepare(self, records: Sequence[dict], context: PseudoLabelContext) -> None:
        from detectron2.data import detection_utils as utils

        old = self._old_model(context)
        read = self.read_image or (lambda fn: utils.read_image(fn, format="RGB"))
        k = len(context.class_names)
        targets = labelled_classes([torch.as_tensor(r.get("image_labels", []), dtype=torch.long) for r in records],
                                   k).float()
        mask = targets.sum(0) > 0
        if not mask.any():
            raise UserError("the Localizer learns from image-level labels, but none of the records has any "
                            "('image_labels' empty)")
        feats = []
        with torch.no_grad():
            for i in tqdm(range(len(records)), desc="localizer: old-model features", disable=None):
                img = torch.from_numpy(np.array(read(records[i]["file_name"]))).permute(2, 0, 1).float()[None]
                feats.append(self._features(old, img)[0].cpu())
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        head = nn.Conv2d(feats[0].shape[0], k, 1)
        opt = torch.optim.Adam(head.parameters(), lr=self.lr)
        for _ in tqdm(range(self.iterations), desc="localizer: training", disable=None):
            idx = torch.randint(len(records), (min(self.batch_size, len(records)),), generator=gen).tolist()
            pooled = torch.stack([head(feats[i][None])[0].mean((1, 2)) for i in idx])
            loss = multilabel_bce(pooled, targets[idx], mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.head = head.eval().requires_grad_(False).to(old.device)

    @torch.no_grad()
    def forward(self, images, image_labels: List[torch.Tensor], context: PseudoLabelContext) -> PseudoLabels:
        if self.head is None:
            self.cache_key()  # raises the "call prepare first" error
        logits = self.head(self._features(self._old_model(context), images))
        maps = [cam_maps(logits[b, [int(i) for i in labels]], images.shape[-2:])
                for b, labels in enumerate(image_labels)]
        scores = scores_from_class_maps(maps, image_labels, len(context.class_names), context.background)
        return PseudoLabels(scores, scores.max(1).values >= self.threshold)
