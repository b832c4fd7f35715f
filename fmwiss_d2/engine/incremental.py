"""One incremental step as an ordinary detectron2 training.

``configure_step(cfg)`` turns ``INCREMENTAL.{TASK,SETTING,STEP,METHOD}`` into the usual keys (datasets,
classifier groups, output folder, previous weights, step learning rate); :class:`IncrementalTrainer` adds the
frozen previous-step model and the method's losses; :class:`IncrementalCheckpointer` stamps every checkpoint
with its task, step and classes and refuses one from another task or step.
"""
from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from ..data.datasets.tasks import IncrementalTask, TaskStep, register_incremental_task, resolve_task
from ..methods import JOINT, build_method
from .trainer import Trainer

logger = logging.getLogger("detectron2")  # the logger detectron2's training sets up


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not belong to the task/step being run."""


def joint_task(task: IncrementalTask) -> IncrementalTask:
    """The offline upper bound of ``task``: all its classes in one step (registered as ``{name}-joint``)."""
    name = f"{task.name}-joint"
    first, last = task.steps[0], task.steps[-1]
    joint = IncrementalTask(name, (TaskStep(tuple(task.class_order), first.train, last.val),), task.settings,
                            task.aliases, task.background)
    return register_incremental_task(name, joint)


def configure_step(cfg, eval_only: bool = False):
    """Fills the step-specific keys from ``INCREMENTAL.*`` (no-op when ``INCREMENTAL.TASK`` is empty).

    For training, steps >= 1 start from ``INCREMENTAL.PREVIOUS_WEIGHTS``; for evaluation, an empty
    ``MODEL.WEIGHTS`` means the step's own final model."""
    inc = cfg.INCREMENTAL
    if not inc.TASK:
        return cfg
    task = resolve_task(inc.TASK)
    if inc.SETTING not in task.settings:
        raise ValueError(f"INCREMENTAL.SETTING '{inc.SETTING}' is not run for task '{task.name}'; "
                         f"choose one of {list(task.settings)}")
    step = inc.STEP
    task._check_step(step)
    root = cfg.OUTPUT_DIR
    if inc.METHOD == JOINT:
        train_task, train_step, folder = joint_task(task), 0, "joint"
        last = task.num_steps - 1
        test = [task.dataset_name(inc.SETTING, last, s) for s, _ in task.steps[last].val]
    else:
        train_task, train_step, folder = task, step, f"step{step}"
        test = [task.dataset_name(inc.SETTING, step, s) for s, _ in task.steps[step].val]
    groups = [len(s.classes) for s in train_task.steps[: train_step + 1]]
    cfg.DATASETS.TRAIN = (train_task.dataset_name(inc.SETTING, train_step, "train"),)
    cfg.DATASETS.TEST = tuple(test)
    cfg.MODEL.CLASSES_PER_STEP = groups
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = sum(groups)
    cfg.OUTPUT_DIR = os.path.join(root, folder)
    if eval_only:
        cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        return cfg
    if inc.EPOCHS > 0:  # MiB trains each step for a number of epochs of that step's (filtered) data
        from detectron2.data import DatasetCatalog

        n = len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))
        cfg.SOLVER.MAX_ITER = max(1, math.ceil(inc.EPOCHS * n / cfg.SOLVER.IMS_PER_BATCH))
    if train_step > 0:
        if inc.STEP_BASE_LR > 0:
            cfg.SOLVER.BASE_LR = inc.STEP_BASE_LR
        if inc.STEP_MAX_ITER > 0 and inc.EPOCHS <= 0:
            cfg.SOLVER.MAX_ITER = inc.STEP_MAX_ITER
        if not inc.PREVIOUS_WEIGHTS:
            inc.PREVIOUS_WEIGHTS = os.path.join(root, f"step{step - 1}", "model_final.pth")
        cfg.MODEL.WEIGHTS = inc.PREVIOUS_WEIGHTS
    return cfg


def trained_step(cfg) -> int:
    """The step this run trains: INCREMENTAL.STEP, or 0 for the one-step joint upper bound."""
    return 0 if cfg.INCREMENTAL.METHOD == JOINT else cfg.INCREMENTAL.STEP


def step_identity(cfg) -> dict:
    """What a checkpoint of this run is stamped with."""
    task = resolve_task(cfg.INCREMENTAL.TASK)
    if cfg.INCREMENTAL.METHOD == JOINT:
        return {"task": f"{task.name}-joint", "step": 0, "classes": task.class_order}
    return {"task": task.name, "step": cfg.INCREMENTAL.STEP, "classes": task.seen_classes(cfg.INCREMENTAL.STEP)}


class IncrementalCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that stamps checkpoints with ``identity`` and checks what it loads.

    ``allowed_steps``: the steps whose checkpoints may be loaded (the previous step's final model to start
    a step, the step's own checkpoints to resume it). A checkpoint without a stamp (e.g. pretrained backbone
    weights) is accepted only at step 0.
    """

    def __init__(self, model, save_dir="", *, identity: dict, allowed_steps, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.identity = identity
        self.allowed_steps = set(allowed_steps)
        self.loaded_step = None
        self._path = None

    def save(self, name, **kwargs):
        kwargs.setdefault("incremental", self.identity)
        super().save(name, **kwargs)

    def load(self, path, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        stamp = checkpoint.get("incremental")
        want = self.identity
        where = f"Checkpoint '{self._path}'"
        if stamp is None:
            if want["step"] != 0:
                raise CheckpointMismatchError(
                    f"{where} was not written by an incremental step, but step {want['step']} of task "
                    f"'{want['task']}' must start from the final model of step {want['step'] - 1} "
                    "(set INCREMENTAL.PREVIOUS_WEIGHTS, or run the previous step first)."
                )
        else:
            if stamp["task"] != want["task"]:
                raise CheckpointMismatchError(
                    f"{where} belongs to task '{stamp['task']}' (step {stamp['step']}), not to task "
                    f"'{want['task']}'. Use another OUTPUT_DIR or point MODEL.WEIGHTS / "
                    "INCREMENTAL.PREVIOUS_WEIGHTS to this task's checkpoints."
                )
            if stamp["step"] not in self.allowed_steps:
                raise CheckpointMismatchError(
                    f"{where} is from step {stamp['step']} of task '{want['task']}'; step {want['step']} can "
                    f"load only step(s) {sorted(self.allowed_steps)}."
                )
            if list(stamp["classes"]) != list(want["classes"][: len(stamp["classes"])]):
                raise CheckpointMismatchError(
                    f"{where} was trained on classes {stamp['classes']}, which are not the first classes of "
                    f"this task's order {want['classes']}."
                )
        result = super()._load_model(checkpoint)
        self.loaded_step = None if stamp is None else stamp["step"]
        return result


class IncrementalSegmentor(nn.Module):
    """Training-time pairing of the current model with the method and the frozen previous-step model.

    Only ``model`` is a submodule: the old model is kept out of the state dict, the optimizer and DDP, and
    checkpoints hold the plain current model (loadable by ``train_net.py --eval-only``).
    """

    def __init__(self, model: nn.Module, method, old_model: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.method = method
        self._old = [old_model.eval().requires_grad_(False)] if old_model is not None else []

    @property
    def old_model(self):
        return self._old[0] if self._old else None

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._old:
            m.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for m in self._old:
            m._apply(fn, *args, **kwargs)
        return self

    def forward(self, batched_inputs):
        if not self.training:
            return self.model(batched_inputs)
        return self.method.losses(self.model, self.old_model, batched_inputs)


class IncrementalTrainer(Trainer):
    """The project's Trainer for one step of a task (see module docstring)."""

    @classmethod
    def allowed_steps(cls, cfg):
        step = trained_step(cfg)
        return {step, step - 1} if step > 0 else {0}

    @classmethod
    def build_train_model(cls, cfg):
        model = cls.build_model(cfg)
        task = resolve_task(cfg.INCREMENTAL.TASK)
        step = trained_step(cfg)
        method = build_method(cfg, task, step)
        old = cls.build_old_model(cfg) if (step > 0 and method.needs_old_model) else None
        return IncrementalSegmentor(model, method, old)

    @classmethod
    def build_old_model(cls, cfg):
        """The previous step's final model, frozen (built with the previous steps' classifier groups)."""
        prev = cfg.clone()
        prev.defrost()
        prev.MODEL.CLASSES_PER_STEP = list(cfg.MODEL.CLASSES_PER_STEP[:-1])
        prev.MODEL.SEM_SEG_HEAD.NUM_CLASSES = sum(prev.MODEL.CLASSES_PER_STEP)
        prev.freeze()
        old = cls.build_model(prev)
        identity = step_identity(cfg)
        ck = IncrementalCheckpointer(old, identity=identity, allowed_steps={cfg.INCREMENTAL.STEP - 1})
        ck.load(cfg.INCREMENTAL.PREVIOUS_WEIGHTS)
        return old

    def build_checkpointer(self, cfg, model):
        inner = model.module if hasattr(model, "module") else model
        inner = inner.model if isinstance(inner, IncrementalSegmentor) else inner
        import weakref

        return IncrementalCheckpointer(inner, cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
                                       identity=step_identity(cfg), allowed_steps=self.allowed_steps(cfg))

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        step = trained_step(self.cfg)
        if step > 0 and self.checkpointer.loaded_step == step - 1:  # a fresh start of this step
            wrapper = self._trainer.model.module if hasattr(self._trainer.model, "module") else self._trainer.model
            wrapper.method.init_new_classes(wrapper.model)
            logger.info("Step %d starts from step %d's model; new classifiers initialised by %s", step, step - 1,
                        type(wrapper.method).__name__)

    @classmethod
    def load_for_eval(cls, cfg, model, path: str):
        """Loads ``path`` into ``model`` for --eval-only, checking it is this step's checkpoint."""
        step = trained_step(cfg)
        IncrementalCheckpointer(model, identity=step_identity(cfg), allowed_steps={step}).load(path)
