"""Optimizer (parameter groups as in Mask2Former) and learning-rate schedule."""
from typing import Any, Dict, List

import torch
from torch import nn

from detectron2.modeling import Backbone
from detectron2.projects.deeplab.build_solver import build_lr_scheduler as build_poly_or_d2_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer", "build_lr_scheduler"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d,
          nn.LayerNorm, nn.LocalResponseNorm)


def lr_multipliers(model: nn.Module, backbone_multiplier: float) -> Dict[nn.Parameter, float]:
    """Learning-rate factor of every parameter, found by module identity (never by name, which any wrapper
    changes): x ``backbone_multiplier`` inside every detectron2 ``Backbone``, and x ``module.lr_multiplier``
    inside every module that sets that attribute (a method's own part may ask for its own rate)."""
    backbone = {p for m in model.modules() if isinstance(m, Backbone) for p in m.parameters()}  # nested: once
    factor: Dict[nn.Parameter, float] = {p: float(backbone_multiplier) for p in backbone}
    for module in model.modules():
        mult = getattr(module, "lr_multiplier", None)
        if mult is not None:
            for p in module.parameters():
                factor[p] = factor.get(p, 1.0) * float(mult)
    return factor


def param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """One group per parameter: lr x :func:`lr_multipliers`, weight decay ``WEIGHT_DECAY_NORM`` for norm layers
    and ``WEIGHT_DECAY_EMBED`` for embeddings."""
    s = cfg.SOLVER
    factor = lr_multipliers(model, s.BACKBONE_MULTIPLIER)
    groups, seen = [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in seen:
                continue
            seen.add(p)
            lr, wd = s.BASE_LR * factor.get(p, 1.0), s.WEIGHT_DECAY
            if isinstance(module, _NORMS):
                wd = s.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding) or "level_embed" in name:
                wd = s.WEIGHT_DECAY_EMBED
            groups.append({"params": [p], "lr": lr, "weight_decay": wd})
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` "SGD" or "ADAMW"; gradient clipping from ``SOLVER.CLIP_GRADIENTS`` (``full_model``
    clips the norm of all gradients together)."""
    groups = param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be SGD or ADAMW, got {cfg.SOLVER.OPTIMIZER}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        max_norm = clip.CLIP_VALUE

        class FullModelClipped(optim_cls):
            def step(self, closure=None):
                params = [p for g in self.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, max_norm)
                return super().step(closure=closure)

        FullModelClipped.__name__ = optim_cls.__name__ + "WithFullModelGradientClip"
        return FullModelClipped(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
    return maybe_add_gradient_clipping(cfg, optim_cls)(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)


def build_lr_scheduler(cfg, optimizer):
    """``WarmupPolyLR`` (``SOLVER.POLY_LR_POWER``) or any of detectron2's schedules."""
    return build_poly_or_d2_lr_scheduler(cfg, optimizer)
