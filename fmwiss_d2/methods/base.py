"""The method interface: a training regime as a registered ``nn.Module`` that owns what it trains.

A method holds
* the model being trained, ``self.model`` (any meta-architecture of this project);
* its own trainable parts, as ordinary submodules: they are in the optimizer (through the method's
  ``parameters()``), wrapped by DDP, saved in checkpoints under ``"method"`` and restored on ``--resume``;
* its frozen parts (the previous step's model, CLIP, DINO), added with :meth:`Method.add_frozen`: they are kept
  out of ``state_dict()``, ``parameters()`` and DDP, follow the method to its device and stay in eval mode.

The trainer trains the method; ``forward`` returns the loss dict in training mode and the method's
predictions (by default the model's) in eval mode. A method reads the iteration and the run's length from one
place, :attr:`Method.iteration` and :attr:`Method.max_iter` (schedules such as DuPL's threshold decay).
A method runs with or without an incremental task: ``task`` is None for an ordinary run.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry

from ..utils.errors import UserError, registry_get

METHOD_REGISTRY = Registry("METHOD")
METHOD_REGISTRY.__doc__ = """
Methods (training regimes), built as ``cls(cfg, model, task=task, step=step)``; chosen by ``METHOD.NAME``.
"""


class MethodConfigError(UserError, ValueError):
    """A method cannot run with this config, task or model; the message says which key to change."""


def build_method(cfg, model: nn.Module, task=None, step: int = 0) -> "Method":
    """The method named by ``cfg.METHOD.NAME`` around ``model`` for ``step`` of ``task`` (None: no task)."""
    name = cfg.METHOD.NAME
    cls = registry_get(METHOD_REGISTRY, name, "METHOD.NAME")
    if cls.needs_background and task is not None and task.background is None:
        raise MethodConfigError(
            f"METHOD.NAME '{name}' needs a background class (its losses and initialisation shift old classes "
            f"to it), but task '{task.name}' has none (background: null). Use Finetune, or define the task with "
            "a background class.")
    return cls(cfg, model, task=task, step=step)


def cosine_schedule(start: float, end: float, begin_iter: int, end_iter: int, iteration: int) -> float:
    """``start`` before ``begin_iter``, ``end`` after ``end_iter``, and in between the half-cosine
    ``end + (start - end) * (1 + cos(pi * (it - begin) / (end_iter - begin))) / 2``."""
    if iteration <= begin_iter:
        return float(start)
    if iteration >= end_iter:
        return float(end)
    t = (iteration - begin_iter) / float(end_iter - begin_iter)
    return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t)))


class Method(nn.Module):
    """Base method: train ``model`` with its own losses on the run's data (see module docstring).

    Subclasses override :meth:`losses`, and :meth:`start_step` for what happens once when an incremental
    step starts from the previous step's weights. Class attributes state what the method needs:
    ``needs_old_model`` (the engine attaches the previous step's frozen model as ``self.old_model``) and
    ``needs_background`` (refused on a task without a background class).
    """

    needs_old_model = False
    needs_background = False

    @configurable
    def __init__(self, model: nn.Module, *, task=None, step: int = 0, max_iter: int = 0):
        """
        Args:
            model: the model trained (its ``state_dict`` is the checkpoint's ``"model"``).
            task: the incremental task, or None for an ordinary run.
            step: the step of ``task`` this run trains (0 without a task).
            max_iter: the run's length in iterations (for schedules).
        """
        super().__init__()
        self.model = model
        self.task = task
        self.step = int(step)
        self.max_iter = int(max_iter)
        self.old_ids: List[int] = task.old_class_ids(step) if task is not None else []
        self.new_ids: List[int] = task.new_class_ids(step) if task is not None and step > 0 else []
        self._frozen: Dict[str, nn.Module] = {}

    @classmethod
    def from_config(cls, cfg, model, *, task=None, step: int = 0):
        return {"model": model, "task": task, "step": step, "max_iter": cfg.SOLVER.MAX_ITER}

    # ------------------------------------------------------------------------------------- frozen parts
    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        """Keeps ``module`` frozen beside the method: no gradients, eval mode, not saved, not optimized."""
        module.eval().requires_grad_(False)
        self._frozen[name] = module
        return module

    def frozen(self, name: str) -> nn.Module | None:
        return self._frozen.get(name)

    @property
    def old_model(self) -> nn.Module | None:
        """The previous step's model (frozen), when the engine attached one."""
        return self._frozen.get("old_model")

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen.values():
            m.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for m in self._frozen.values():
            m._apply(fn, *args, **kwargs)
        return self

    # --------------------------------------------------------------------------------- own trainable state
    def own_state_dict(self) -> Dict[str, torch.Tensor]:
        """The method's trainable parts (everything in ``state_dict()`` but the model's): the checkpoint's
        ``"method"`` entry."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def load_own_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        result = self.load_state_dict(dict(state), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("model.")]
        if missing or result.unexpected_keys:
            raise MethodConfigError(
                f"the checkpoint's method state does not match {type(self).__name__}: missing "
                f"{missing[:5]}, unexpected {result.unexpected_keys[:5]} (was it written by another METHOD.NAME?)")

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def iteration(self) -> int:
        """The current training iteration (detectron2's event storage); 0 outside training."""
        try:
            return int(get_event_storage().iter)
        except AssertionError:  # no storage: not inside a training loop
            return 0

    # ------------------------------------------------------------------------------------------- hooks
    def prepare_training(self, cfg) -> None:
        """Builds what only training needs (frozen models such as CLIP: :meth:`add_frozen`); evaluation never
        calls it, so ``--eval-only`` stays cheap."""

    def start_step(self) -> None:
        """Called once when an incremental step starts from the previous step's weights (not on resume)."""

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        return self.model(batched_inputs)

    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        return self.model(batched_inputs)

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)


@METHOD_REGISTRY.register()
class Supervised(Method):
    """Ordinary training with the model's own losses (what a run without a method does)."""


@METHOD_REGISTRY.register()
class Finetune(Method):
    """The incremental lower bound: each step trained on its own labels, no distillation, new classifiers
    at random (the same training as :class:`Supervised`, named as in the papers)."""
