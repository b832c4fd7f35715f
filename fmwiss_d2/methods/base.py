"""The method interface and the fine-tuning baseline."""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.utils.registry import Registry

METHOD_REGISTRY = Registry("INCREMENTAL_METHOD")
METHOD_REGISTRY.__doc__ = "Incremental methods, built as cls(cfg, task, step); chosen by INCREMENTAL.METHOD."


JOINT = "Joint"  # INCREMENTAL.METHOD of the offline upper bound: every class at once, trained as Finetune


def build_method(cfg, task, step: int) -> "IncrementalMethod":
    if cfg.INCREMENTAL.METHOD == JOINT:
        return Finetune(cfg, None, 0)
    cls = METHOD_REGISTRY.get(cfg.INCREMENTAL.METHOD)
    if cls.needs_background and task is not None and task.background is None:
        raise ValueError(
            f"INCREMENTAL.METHOD '{cfg.INCREMENTAL.METHOD}' needs a background class (its losses and initialisation "
            f"shift old classes to it), but task '{task.name}' has none (background: null). Use Finetune, or define "
            "the task with a background class.")
    return cls(cfg, task, step)


def is_mask_classification(model) -> bool:
    """Mask2Former-style models carry a trailing "no object" logit in their classifier."""
    return getattr(model.classifier, "no_object", None) is not None


class IncrementalMethod:
    """Base method = fine-tuning: the step's data with the model's own losses; new classifiers start at random.

    Subclasses override :meth:`losses` (and set ``needs_old_model``) and :meth:`init_new_classes`.
    """

    needs_old_model = False
    needs_background = False  # True: the method cannot run on a task without a background class

    def __init__(self, cfg, task, step: int):
        self.task = task
        self.step = step
        self.old_ids = task.old_class_ids(step) if task is not None else []
        self.new_ids = task.new_class_ids(step) if task is not None and step > 0 else []

    def init_new_classes(self, model) -> None:
        """Called once when a step starts from the previous step's weights (not on resume)."""

    def losses(self, model, old_model, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        return model(batched_inputs)


@METHOD_REGISTRY.register()
class Finetune(IncrementalMethod):
    """The lower bound: no distillation, no special initialization."""
