"""A trained DuPL as a pseudo-label source: its segmentation head (student 1, the checkpoint's ``"model"``) labels
any split, restricted to each image's labelled classes plus the background."""
from __future__ import annotations

import os

import torch

from ..utils.errors import UserError
from .base import PSEUDO_LABEL_SOURCE_REGISTRY, PseudoLabelContext, PseudoLabels, PseudoLabelSource
from .sources import labelled_classes


@PSEUDO_LABEL_SOURCE_REGISTRY.register()
class DuPL(PseudoLabelSource):
    """``PSEUDO_LABELS.DUPL.{CONFIG_FILE, CHECKPOINT}``: the config a DuPL run was trained with and its checkpoint.
    For image b with labels L_b: ``p = softmax(seg logits)`` kept on L_b and the background (if the task has
    one), renormalised over them; valid where the top score reaches ``PSEUDO_LABELS.DUPL.THRESHOLD``. The model
    is built and loaded on first use (a config that never calls the source never reads the checkpoint)."""

    def __init__(self, cfg=None, *, model=None, threshold: float | None = None):
        super().__init__()
        c = cfg.PSEUDO_LABELS.DUPL if cfg is not None else None
        self.threshold = float(threshold if threshold is not None else c.THRESHOLD)
        self.config_file = c.CONFIG_FILE if c is not None else ""
        self.checkpoint = c.CHECKPOINT if c is not None else ""
        self.device = cfg.MODEL.DEVICE if cfg is not None else "cpu"
        self._model = [model] if model is not None else []  # frozen, outside the state dict

    @property
    def model(self):
        if not self._model:
            self._model.append(self._load())
        return self._model[0]

    def _load(self):
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        from ..config import add_fmwiss_config
        from ..utils.checkpoint_files import check_state_dict, load_checkpoint_file

        for key, path in (("CONFIG_FILE", self.config_file), ("CHECKPOINT", self.checkpoint)):
            if not path or not os.path.isfile(path):
                raise UserError(f"the DuPL pseudo-label source needs PSEUDO_LABELS.DUPL.{key}: "
                                f"{path or 'not set'!r} is not a file (train one with configs/shapes/dupl.yaml; its "
                                "OUTPUT_DIR holds config.yaml and model_final.pth)")
        cfg = get_cfg()
        add_fmwiss_config(cfg)
        cfg.merge_from_file(self.config_file)
        cfg.MODEL.DEVICE = self.device if self.device == "cpu" or torch.cuda.is_available() else "cpu"
        model = build_model(cfg)
        state = load_checkpoint_file(self.checkpoint, weights_only=False)
        state = state.get("model", state)
        check_state_dict(model.state_dict(), state, path=self.checkpoint, architecture=type(model).__name__,
                         note=f"built from PSEUDO_LABELS.DUPL.CONFIG_FILE {self.config_file!r}")
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def cache_key(self) -> dict:
        key = {"source": "dupl", "threshold": self.threshold, "config_file": self.config_file,
               "checkpoint": self.checkpoint}
        if self.checkpoint and os.path.isfile(self.checkpoint):
            st = os.stat(self.checkpoint)
            key["checkpoint_stat"] = [st.st_size, st.st_mtime_ns]
        return key

    @torch.no_grad()
    def forward(self, images, image_labels, context: PseudoLabelContext) -> PseudoLabels:
        model = self.model
        k = len(context.class_names)
        x = (images.to(model.device).float() - model.pixel_mean) / model.pixel_std
        p = model.per_pixel_scores(model.forward_outputs(x))
        if p.shape[1] != k:
            raise UserError(f"the DuPL checkpoint {self.checkpoint!r} predicts {p.shape[1]} classes, but this run has "
                            f"{k}; use a DuPL trained on the same classes")
        p = p * labelled_classes(image_labels, k, context.background, p.device)[:, :, None, None]
        p = p / p.sum(1, keepdim=True).clamp_min(1e-6)
        return PseudoLabels(p, p.max(1).values >= self.threshold)
